"""Capture addon: a tap on routed flows. Forwards every byte unchanged and unbuffered.

Per chunk the tap does one append (time, bytes) and a length check; everything else happens on the
pipeline thread after the exchange is handed over. The `response` and `error` hooks only enqueue,
so the client's last byte is never delayed by capture or export.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from functools import partial

from mitmproxy import ctx, exceptions, http

from addon.model import Exchange
from addon.pipeline import Pipeline
from proxy.routes import Route

log = logging.getLogger(__name__)

KEY = "neatlogs.exchange"
WAITING = "neatlogs.waiting_first_byte"
DEFAULT_MAX_CAPTURE_BYTES = 16 * 1024 * 1024

# Routed requests → their route, for the JSON error answers mitmproxy's own failures get (see
# proxy/server.py: install_json_errors). Keyed by the request object mitmproxy's HTTP/1 server layer
# shares with the flow; weak, so nothing outlives its connection.
ROUTE_OF: weakref.WeakKeyDictionary[http.Request, Route] = weakref.WeakKeyDictionary()


def route_of(request: http.Request | None) -> Route | None:
    if request is None:
        return None
    try:
        return ROUTE_OF.get(request)
    except TypeError:  # pragma: no cover - unhashable stand-in
        return None


class Tap:
    """`flow.response.stream` / `flow.request.stream` callable: copy up to `limit` bytes, pass all.

    `total` counts every byte that went through. With `drop_on_overflow` the copy is released as soon
    as the limit is passed (a cut JSON request body is useless to the parsers, so why hold it).
    """

    __slots__ = ("chunks", "drop_on_overflow", "first", "limit", "size", "total", "truncated")

    def __init__(self, chunks: list[tuple[int, bytes]], limit: int, drop_on_overflow: bool = False,
                 first: Callable[[], None] | None = None) -> None:
        self.chunks = chunks
        self.first = first  # called once, at the first bytes
        self.limit = limit
        self.size = 0
        self.total = 0
        self.truncated = False
        self.drop_on_overflow = drop_on_overflow

    def __call__(self, data: bytes) -> bytes:
        if data:
            if self.first is not None:
                first, self.first = self.first, None
                first()
            self.total += len(data)
            if not self.truncated and self.size + len(data) <= self.limit:
                self.chunks.append((time.time_ns(), data))
                self.size += len(data)
            elif not self.truncated:
                self.truncated = True
                if self.drop_on_overflow:
                    self.chunks.clear()
                    self.size = 0
                else:  # keep an exact prefix of `limit` bytes
                    room = self.limit - self.size
                    if room > 0:
                        self.chunks.append((time.time_ns(), data[:room]))
                        self.size += room
        return data


class Capture:
    """Every hook is guarded: a capture failure is logged and counted, and the traffic goes on."""

    def __init__(self, pipeline: Pipeline, stats: dict[str, int] | None = None) -> None:
        self.pipeline = pipeline
        self.stats = stats if stats is not None else {}
        self.inflight = 0  # routed flows not finished yet (graceful shutdown waits for them)
        self.limit = DEFAULT_MAX_CAPTURE_BYTES

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("neatlogs_max_capture_bytes", int, DEFAULT_MAX_CAPTURE_BYTES,
                          "Bytes of each request/response body kept for capture (traffic is never cut).")

    def configure(self, updated: set[str]) -> None:
        if "neatlogs_max_capture_bytes" in updated:
            if ctx.options.neatlogs_max_capture_bytes < 0:
                raise exceptions.OptionsError("neatlogs_max_capture_bytes must be >= 0")
            self.limit = ctx.options.neatlogs_max_capture_bytes  # read per request: keep it an attribute

    def _failed(self, what: str) -> None:
        self.stats["capture_errors"] = self.stats.get("capture_errors", 0) + 1
        log.exception("capture %s failed (traffic not affected)", what)

    # ---- hooks ----

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get("neatlogs.route")
        if route is None:
            return
        try:
            self._start(flow, route)
        except Exception:
            self._failed("setup")

    def _start(self, flow: http.HTTPFlow, route: Route) -> None:
        req = flow.request
        ROUTE_OF[req] = route
        path, _, query = req.path.partition("?")
        if route.base_path and path.startswith(route.base_path):
            path = path[len(route.base_path):] or "/"
        ex = Exchange(
            flow_id=flow.id, route=route.name, upstream=route.origin, method=req.method, path=path,
            query=query, request_headers={}, request_body=None, request_body_truncated=False,
            start_ns=time.time_ns(), raw_request_fields=flow.metadata.get("neatlogs.request_fields"),
        )
        flow.metadata[KEY] = ex
        self.inflight += 1
        flow.metadata[WAITING] = True
        self.pipeline.traffic.started()  # the pipeline holds its work until this has its first byte
        limit = self.limit
        length = req.headers.get("content-length", "").strip()
        declared = int(length) if length.isdigit() else None
        if declared == 0 or (declared is None and not req.headers.get("transfer-encoding")):
            return  # no body (or mitmproxy rejects the framing before we get here)
        # Stream every request body: mitmproxy sends the head upstream as soon as it has it and forwards
        # each chunk as it arrives, instead of buffering the body and running the `request` hook first
        # (that hook now runs after the body went out, off the critical path). Memory stays flat for
        # big uploads. A body already known to exceed the capture limit is not copied at all (the
        # parsers can't use a cut JSON document); one of unknown length is copied until it passes it.
        over = declared is not None and declared > limit
        tap = Tap([], 0 if over else limit, drop_on_overflow=True)
        flow.request.stream = tap
        flow.metadata["neatlogs.request_tap"] = tap

    def request(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(KEY)
        if ex is None:
            return
        try:
            tap: Tap | None = flow.metadata.get("neatlogs.request_tap")
            if tap is not None:
                ex.request_body = b"".join(c for _, c in tap.chunks)
                ex.request_body_truncated = tap.truncated
                tap.chunks.clear()
            else:
                ex.request_body = flow.request.raw_content
        except Exception:
            self._failed("of the request body")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(KEY)
        if ex is None or flow.response is None:
            return
        try:
            tap = Tap(ex.chunks, self.limit, first=partial(self._answered, flow))
            flow.response.stream = tap
            flow.metadata["neatlogs.response_tap"] = tap
        except Exception:
            self._failed("of the response")

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, flow.error.msg if flow.error else "unknown error")

    def _answered(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop(WAITING, False):
            self.pipeline.traffic.answered()

    def _finish(self, flow: http.HTTPFlow, error: str | None) -> None:
        ex: Exchange | None = flow.metadata.pop(KEY, None)
        if ex is None:
            return
        self._answered(flow)
        self.inflight -= 1
        try:
            self._complete(flow, ex, error)
        except Exception:
            self._failed("at the end of the exchange")
            return
        self.pipeline.submit_exchange(ex)

    def _complete(self, flow: http.HTTPFlow, ex: Exchange, error: str | None) -> None:
        ex.end_ns = time.time_ns()
        if flow.response is not None:
            ex.status = flow.response.status_code
            ex.raw_response_fields = flow.response.headers.fields
            tap: Tap | None = flow.metadata.get("neatlogs.response_tap")
            ex.response_truncated = bool(tap and tap.truncated)
            if tap is None and flow.response.raw_content:  # answered without streaming (e.g. by an addon)
                ex.chunks.append((ex.end_ns, flow.response.raw_content))
        if ex.request_body is None and error is None and flow.request.raw_content is not None:
            ex.request_body = flow.request.raw_content
        if ex.request_body is None and error is not None:
            rtap: Tap | None = flow.metadata.get("neatlogs.request_tap")
            if rtap is not None:  # the request never completed: keep what was captured of it
                ex.request_body = b"".join(c for _, c in rtap.chunks)
                ex.request_body_truncated = rtap.truncated
        if error is not None:
            ex.error = error
            ex.cancelled = "client" in error.lower()
            counter = "client_cancelled" if ex.cancelled else "upstream_errors"
            self.stats[counter] = self.stats.get(counter, 0) + 1
            route = flow.metadata.get("neatlogs.route")
            if ex.cancelled:
                log.info("client went away during %s %s (route %r): %s", ex.method, ex.path, ex.route, error)
            else:
                log.warning("route %r (%s): %s %s failed: %s", ex.route, route.url if route else ex.upstream,
                            ex.method, ex.path, error)
