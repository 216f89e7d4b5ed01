"""Capture addon: a tap on routed flows. Forwards every byte unchanged and unbuffered.

Per chunk the tap does one append (time, bytes) and a length check; everything else happens on the
pipeline thread after the exchange is handed over. The `response` and `error` hooks only enqueue,
so the client's last byte is never delayed by capture or export.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx, http

from addon.headers import redact_query, safe_headers
from addon.model import Exchange
from addon.pipeline import Pipeline
from proxy.routes import Route

log = logging.getLogger(__name__)

KEY = "neatlogs.exchange"


class Tap:
    """`flow.response.stream` / `flow.request.stream` callable: copy up to `limit` bytes, pass all."""

    __slots__ = ("chunks", "limit", "size", "truncated")

    def __init__(self, chunks: list[tuple[int, bytes]], limit: int) -> None:
        self.chunks = chunks
        self.limit = limit
        self.size = 0
        self.truncated = False

    def __call__(self, data: bytes) -> bytes:
        if data:
            if self.size < self.limit:
                self.chunks.append((time.time_ns(), data))
                self.size += len(data)
            else:
                self.truncated = True
        return data


class Capture:
    def __init__(self, pipeline: Pipeline, stats: dict[str, int] | None = None) -> None:
        self.pipeline = pipeline
        self.stats = stats if stats is not None else {}
        self.inflight = 0  # routed flows not finished yet (graceful shutdown waits for them)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("neatlogs_max_capture_bytes", int, 16 * 1024 * 1024,
                          "Bytes of each request/response body kept for capture (traffic is never cut).")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        route: Route | None = flow.metadata.get("neatlogs.route")
        if route is None:
            return
        try:
            self._start(flow, route)
        except Exception:
            self.stats["capture_errors"] = self.stats.get("capture_errors", 0) + 1
            log.exception("capture setup failed (traffic not affected)")

    def _start(self, flow: http.HTTPFlow, route: Route) -> None:
        req = flow.request
        hints: dict[str, str] = flow.metadata.get("neatlogs.hints", {})
        path, _, query = req.path.partition("?")
        if route.base_path and path.startswith(route.base_path):
            path = path[len(route.base_path):] or "/"
        ex = Exchange(
            flow_id=flow.id, route=route.name, upstream=route.origin, method=req.method, path=path,
            query=redact_query(query), request_headers=safe_headers(req.headers.items()),
            request_body=None, request_body_truncated=False, start_ns=time.time_ns(),
            session_id=hints.get("x-session-id") or hints.get("x-session-affinity")
            or hints.get("x-neatlogs-session-id"),
            parent_session_id=hints.get("x-parent-session-id"), agent=hints.get("x-neatlogs-agent"),
            neatlogs_api_key=hints.get("x-neatlogs-api-key"),
        )
        flow.metadata[KEY] = ex
        self.inflight += 1
        limit = ctx.options.neatlogs_max_capture_bytes
        length = req.headers.get("content-length")
        big = length is None and "chunked" in req.headers.get("transfer-encoding", "").lower()
        if big or (length is not None and length.isdigit() and int(length) > limit):
            # Large uploads stream through; we keep the first `limit` bytes only.
            tap = Tap([], limit)
            flow.request.stream = tap
            flow.metadata["neatlogs.request_tap"] = tap

    def request(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(KEY)
        if ex is None:
            return
        tap: Tap | None = flow.metadata.get("neatlogs.request_tap")
        if tap is not None:
            ex.request_body = b"".join(c for _, c in tap.chunks)
            ex.request_body_truncated = tap.truncated
        else:
            ex.request_body = flow.request.raw_content

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ex: Exchange | None = flow.metadata.get(KEY)
        if ex is None or flow.response is None:
            return
        tap = Tap(ex.chunks, ctx.options.neatlogs_max_capture_bytes)
        flow.response.stream = tap
        flow.metadata["neatlogs.response_tap"] = tap

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, flow.error.msg if flow.error else "unknown error")

    def _finish(self, flow: http.HTTPFlow, error: str | None) -> None:
        ex: Exchange | None = flow.metadata.pop(KEY, None)
        if ex is None:
            return
        self.inflight -= 1
        ex.end_ns = time.time_ns()
        if flow.response is not None:
            ex.status = flow.response.status_code
            ex.response_headers = safe_headers(flow.response.headers.items())
            tap: Tap | None = flow.metadata.get("neatlogs.response_tap")
            ex.response_truncated = bool(tap and tap.truncated)
        if ex.request_body is None and flow.request.raw_content is not None and error is None:
            ex.request_body = flow.request.raw_content
        if error is not None:
            ex.error = error
            ex.cancelled = "client" in error.lower()
        self.pipeline.submit_exchange(ex)
