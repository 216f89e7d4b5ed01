"""A fake OTLP/HTTP trace collector (the Neatlogs ingest endpoint) for end-to-end tests.

It decodes every ``POST /v1/traces`` protobuf body into flat :class:`FlatSpan` records so tests can
assert on names, ids, parents and attributes without touching protobuf, and it can misbehave on
demand (error statuses with Retry-After, slowness, flapping, refusing connections and coming back on
the same port) to test the proxy's retry and spooling.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .util import LoopbackServer, TrackedHandler, read_http_body, wait_until


def any_value(v: AnyValue) -> Any:
    """Decode an OTLP AnyValue into the plain Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class FlatEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class FlatSpan:
    """One exported span, flattened; ids are lower-case hex ("" for no parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind value
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    scope_name: str
    scope_version: str = ""
    events: list[FlatEvent] = field(default_factory=list)
    request_index: int = -1  # which collector request carried it

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attributes.get(key, default)


def assert_one_wire_tool_span(spans: dict[str, FlatSpan], root: FlatSpan, call_id: str, before: FlatSpan,
                              after: FlatSpan, output_contains: str) -> None:
    """The one `read` tool run of a session without the plugin, rebuilt from the wire: under the root,
    with the provider's call id and the tool's output, between the LLM call that asked for it and the
    one that got its result."""
    tools = [s for s in spans.values() if s.name.startswith("opencode.tool.")]
    assert len(tools) == 1
    tool = tools[0]
    assert tool.name == "opencode.tool.read" and tool.parent_span_id == root.span_id
    assert tool.attributes["neatlogs.tool.source"] == "wire"
    assert tool.attributes["neatlogs.tool.call_id"] == call_id
    assert output_contains in tool.attributes["neatlogs.tool.output"]
    assert before.end_ns <= tool.start_ns <= tool.end_ns <= after.start_ns


@dataclass
class CollectorRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes  # as received (possibly gzip)
    t_ns: int
    status: int  # what we answered
    spans: list[FlatSpan] = field(default_factory=list)
    error: str | None = None  # decode error, if any

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def flatten(req: ExportTraceServiceRequest, request_index: int = -1) -> list[FlatSpan]:
    out = []
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    FlatSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status_code=s.status.code,
                        status_message=s.status.message,
                        attributes=attrs(s.attributes),
                        resource_attributes=res,
                        scope_name=ss.scope.name,
                        scope_version=ss.scope.version,
                        events=[FlatEvent(e.name, e.time_unix_nano, attrs(e.attributes)) for e in s.events],
                        request_index=request_index,
                    )
                )
    return out


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: until cleared
    retry_after: str | None
    body: bytes


class FakeCollector(LoopbackServer):
    """Start it, point the proxy's ``NEATLOGS_ENDPOINT`` at ``url``, then assert on ``spans()``."""

    thread_name = "fake-collector"

    def __init__(self) -> None:
        super().__init__()
        self._requests: list[CollectorRequest] = []
        self._faults: list[_Fault] = []
        self._flap: list[int] = []
        self._flap_i = 0
        self.delay = 0.0  # seconds to wait before answering each request

    # lifecycle -----------------------------------------------------------------------------------
    def handler_class(self) -> type[TrackedHandler]:
        return _Handler

    def down(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self.start()

    @property
    def url(self) -> str:
        """The endpoint base (what ``NEATLOGS_ENDPOINT`` gets); traces go to ``url + '/v1/traces'``."""
        return f"http://127.0.0.1:{self.port}"

    # fault knobs ---------------------------------------------------------------------------------
    def fail_next(
        self,
        status: int = 503,
        count: int | None = 1,
        retry_after: float | str | None = None,
        body: bytes = b"",
    ) -> None:
        """Answer the next ``count`` requests (``None``: all, until :meth:`clear_faults`) with ``status``."""
        ra = None if retry_after is None else str(retry_after)
        with self._lock:
            self._faults.append(_Fault(status, count, ra, body or b'{"error":"fake collector fault"}'))

    def flap(self, statuses: list[int]) -> None:
        """Cycle through ``statuses`` (e.g. ``[503, 200]``) request by request until cleared."""
        with self._lock:
            self._flap = list(statuses)
            self._flap_i = 0

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._flap = []
        self.delay = 0.0

    def _next_status(self) -> tuple[int, str | None, bytes]:
        with self._lock:
            while self._faults:
                f = self._faults[0]
                if f.remaining is not None and f.remaining <= 0:
                    self._faults.pop(0)
                    continue
                if f.remaining is not None:
                    f.remaining -= 1
                return f.status, f.retry_after, f.body
            if self._flap:
                status = self._flap[self._flap_i % len(self._flap)]
                self._flap_i += 1
                return status, None, b'{"error":"fake collector flapping"}'
        return 200, None, b""

    # records -------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[CollectorRequest]:
        with self._lock:
            return list(self._requests)

    def spans(self, include_rejected: bool = False) -> list[FlatSpan]:
        """All spans in arrival order, from accepted (2xx) requests unless ``include_rejected``."""
        return [s for r in self.requests if include_rejected or r.accepted for s in r.spans]

    def spans_by_name(self, prefix: str) -> list[FlatSpan]:
        return [s for s in self.spans() if s.name.startswith(prefix)]

    def latest_by_span_id(self) -> dict[str, FlatSpan]:
        """Collapse re-exports: the same span_id exported again is an upsert; keep the last one."""
        out: dict[str, FlatSpan] = {}
        for s in self.spans():
            out[s.span_id] = s
        return out

    def wait_for[T](self, predicate: Callable[[FakeCollector], T], timeout: float = 15.0, message: str = "") -> T:
        """Poll ``predicate(self)`` until truthy; return its value (AssertionError on timeout)."""
        return wait_until(lambda: predicate(self), timeout, message=message or "collector predicate")

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()


def _decode(body: bytes, headers: dict[str, str]) -> ExportTraceServiceRequest:
    enc = headers.get("content-encoding", "").lower()
    if enc == "gzip":
        body = gzip.decompress(body)
    elif enc == "deflate":
        body = zlib.decompress(body)
    if "protobuf" not in headers.get("content-type", ""):
        raise ValueError(f"unexpected content-type {headers.get('content-type')!r}")
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(body)
    return msg


class _Handler(TrackedHandler):
    @property
    def collector(self) -> FakeCollector:
        return self.owner

    def do_POST(self) -> None:
        c = self.collector
        t_ns = time.time_ns()
        body = read_http_body(self.rfile, self.headers)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if c.delay:
            time.sleep(c.delay)
        rec = CollectorRequest("POST", self.path, headers, body, t_ns, 200)
        path = self.path.split("?", 1)[0]
        status, retry_after, err_body = c._next_status()
        if path != "/v1/traces":
            status, err_body = 404, b'{"error":"not found"}'
        else:
            # Decode even when faulting, so tests can see what a rejected export carried.
            try:
                rec.spans = flatten(_decode(body, headers))
            except Exception as exc:  # a malformed export is a test failure to surface, not a crash
                rec.error = repr(exc)
                if status == 200:
                    status, err_body = 400, repr(exc).encode()
        rec.status = status
        with c._lock:
            for s in rec.spans:
                s.request_index = len(c._requests)
            c._requests.append(rec)
        if status == 200:
            out = ExportTraceServiceResponse().SerializeToString()
            ctype = "application/x-protobuf"
        else:
            out, ctype = err_body, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
