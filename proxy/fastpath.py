"""The fast HTTP/1 path: routed traffic in one mitmproxy layer instead of its whole HTTP stack.

Why: on the benchmark machine mitmproxy's `HttpLayer` alone (no addons) adds ~0.85 ms to an SSE
stream's first byte, most of the 1 ms budget. Each client connection there runs an `Http1Server`, an
`HttpStream` per request and an `HttpClient`/`Http1Client` per upstream, which talk through events
and commands routed by `HttpLayer`; a byte from the upstream crosses all of them. `FastHttp1` does
the same work for one plain-HTTP/1.1 client connection in reverse mode in one layer, with the same
hooks on real `HTTPFlow`s, in the same order, and mitmproxy's own parsers (`read_request_head`,
`expected_http_body_size`, `validate_headers`, h11's body readers).

What it does not know it hands to mitmproxy. Before a request's hooks run (nothing has been said
to anyone yet), a request that is not plain HTTP/1.1 (`CONNECT`, absolute-form targets, `Upgrade`,
`Expect`, HTTP/1.0, HTTP/2 prior knowledge, a head mitmproxy cannot parse or refuses as smuggling)
makes the rest of the connection go through a stock `HttpLayer`, replaying the bytes received: that
request gets exactly mitmproxy's behaviour, errors included. So do connections mitmproxy options it
does not implement would change (`body_size_limit`, `stream_large_bodies`, ...): `choose_layer`
never picks it for them.

Upstream connections are stacks of their own: `Upstream` at the bottom opens the connection and
turns its plaintext into commands this layer catches; for HTTPS, mitmproxy's `ServerTLSLayer` sits
above it, so `tlsconfig`, certificate verification and `--upstream-ca` work as on the stock path.
Idle upstream connections are kept per (host, port, TLS) for the next request of the same client
connection, as `HttpLayer` keeps them.

Differences from the stock path, all deliberate:
- a streamed answer's last bytes reach the client before the `response` hook runs, not after it;
- interim 1xx answers (103 Early Hints) are passed on and the final answer awaited (mitmproxy
  takes the 1xx for the answer and drops the connection when the real one comes);
- no `Log` command per request ("Streaming response from ...").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import h11
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import ctx, http
from mitmproxy import flow as mflow
from mitmproxy.addons.next_layer import stack_match
from mitmproxy.connection import Connection, ConnectionState, Server
from mitmproxy.net.http import http1, url
from mitmproxy.net.http.validate import validate_headers
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import modes, tls
from mitmproxy.proxy.layers.http import (
    HttpErrorHook,
    HttpLayer,
    HTTPMode,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
    validate_request,
)
from mitmproxy.proxy.layers.http._events import ErrorCode
from mitmproxy.proxy.layers.http._http1 import make_body_reader
from mitmproxy.proxy.mode_specs import ReverseMode

from proxy.errors import error_answer

Gen = layer.CommandGenerator[None]

# Options that change what mitmproxy's HTTP layer does in ways this one does not implement: with any
# of them set, connections take the stock path.
STOCK_ONLY_OPTIONS = ("body_size_limit", "stream_large_bodies", "store_streamed_bodies", "proxy_debug",
                      "ignore_hosts", "allow_hosts")


def is_http_decision(nextlayer: layer.NextLayer) -> bool:
    """Whether mitmproxy is about to choose the HTTP layer of a plain-HTTP reverse-proxy connection."""
    context = nextlayer.context
    spec = context.client.proxy_mode
    return (isinstance(spec, ReverseMode) and spec.scheme == "http" and context.client.transport_protocol == "tcp"
            and stack_match(context, [modes.ReverseProxy]))


def fast_path_fits(nextlayer: layer.NextLayer) -> bool:
    """At that decision: whether `FastHttp1` can serve the connection (else mitmproxy's layers do)."""
    if any(getattr(nextlayer.context.options, name, None) for name in STOCK_ONLY_OPTIONS):
        return False
    return not starts_like_tls_record(nextlayer.data_client())  # TLS: mitmproxy's ClientTLSLayer, HttpLayer


class FastPath:
    """Addon: put `FastHttp1` in place of mitmproxy's HTTP layer (option `neatlogs_fast_http1`).

    Must come before mitmproxy's `NextLayer` addon, which leaves a layer another addon chose alone.
    Counts, in `stats`, client connections by the layer that serves them (`http_connections_fast`,
    `http_connections_mitmproxy`) and connections handed over mid-way (`http_handovers`).
    """

    def __init__(self, stats: dict[str, int] | None = None) -> None:
        self.enabled = True
        self.stats = stats if stats is not None else {}

    def load(self, loader: Any) -> None:
        loader.add_option("neatlogs_fast_http1", bool, True,
                          "Serve plain HTTP/1.1 clients with the proxy's lean HTTP layer (mitmproxy's otherwise).")

    def configure(self, updated: set[str]) -> None:
        if "neatlogs_fast_http1" in updated:
            self.enabled = bool(ctx.options.neatlogs_fast_http1)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None or not is_http_decision(nextlayer):
            return
        if self.enabled and fast_path_fits(nextlayer):
            nextlayer.layer = FastHttp1(nextlayer.context, self.stats)
            key = "http_connections_fast"
        else:
            key = "http_connections_mitmproxy"
        self.stats[key] = self.stats.get(key, 0) + 1


# ---- one upstream connection ---------------------------------------------------------------------

@dataclass
class Opened(commands.Command):
    upstream: Upstream
    error: str | None


@dataclass
class Received(commands.Command):
    upstream: Upstream
    data: bytes


@dataclass
class Closed(commands.Command):
    upstream: Upstream


@dataclass
class Send(events.Event):
    data: bytes


@dataclass
class Close(events.Event):
    pass


class Upstream(layer.Layer):
    """The bottom of one upstream connection's stack: opens the connection, then turns its plaintext
    traffic into commands for `FastHttp1` (and `Send`/`Close` events from it into connection commands).
    Under `ServerTLSLayer` for HTTPS, which encrypts what passes between the two."""

    def __init__(self, context: Any, key: tuple[str, int, bool]) -> None:
        super().__init__(context)
        self.server: Server = context.server
        self.key = key
        self.tls = key[2]
        self.top: layer.Layer = self  # what events for this connection go to (its ServerTLSLayer for HTTPS)
        self.buf = ReceiveBuffer()
        self.open = False

    def __repr__(self) -> str:
        return f"Upstream({self.key[0]}:{self.key[1]}{' tls' if self.tls else ''})"

    def _handle_event(self, event: events.Event) -> Gen:
        if isinstance(event, events.Start):
            err = yield commands.OpenConnection(self.server)
            yield Opened(self, err)
        elif isinstance(event, events.DataReceived):
            yield Received(self, event.data)
        elif isinstance(event, events.ConnectionClosed):
            yield Closed(self)
        elif isinstance(event, Send):
            yield commands.SendData(self.server, event.data)
        elif isinstance(event, Close):
            yield commands.CloseConnection(self.server)


# ---- the client connection -----------------------------------------------------------------------

# client side
HEAD, BODY, WAIT, CLOSED = "head", "body", "wait", "closed"
# server side
IDLE, CONNECTING, ANSWER_HEAD, ANSWER_BODY, DONE, ERRORED = "idle", "connecting", "answer-head", "answer-body", \
    "done", "errored"


def is_chunked(message: http.Message) -> bool:
    return "chunked" in message.headers.get("transfer-encoding", "").lower()


def frame(data: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


def whole_body(content: bytes, chunked: bool, terminate: bool = True) -> bytes:
    """A body sent in one piece, framed as its message's headers say."""
    if not chunked:
        return content
    return (frame(content, True) if content else b"") + (b"0\r\n\r\n" if terminate else b"")


def ends_connection(request: http.Request, response: http.Response, bad_framing: bool) -> bool:
    """Whether the connection ends with this exchange: either side said `Connection: close` (or is
    HTTP/1.0 without keep-alive), or the answer is delimited by the connection's end. `bad_framing` is
    the answer when an addon left framing headers that no longer parse."""
    try:
        until_eof = http1.expected_http_body_size(request, response) == -1
    except ValueError:
        until_eof = bad_framing
    return (until_eof or http1.connection_close(request.http_version, request.headers)
            or http1.connection_close(response.http_version, response.headers))


def tapped(stream: Any, data: bytes) -> bytes:
    """What mitmproxy does with `message.stream`: a callable sees (and may change) every chunk."""
    if not callable(stream):
        return data
    out = stream(data)
    return out if isinstance(out, bytes) else b"".join(out)


class FastHttp1(layer.Layer):
    """One plain-HTTP/1.1 client connection in reverse mode: one request at a time, each with the
    `requestheaders`, `request`, `responseheaders`, `response` (or `error`) hooks, bodies streamed
    chunk by chunk whenever an addon set `.stream` (mitmproxy's semantics)."""

    def __init__(self, context: Any, stats: dict[str, int] | None = None) -> None:
        super().__init__(context)
        self.stats = stats if stats is not None else {}
        self.buf = ReceiveBuffer()
        self.client_state = HEAD
        self.server_state = IDLE
        self.flow: http.HTTPFlow | None = None
        self.up: Upstream | None = None
        self.request_reader: Any = None
        self.request_streamed = False
        self.request_chunked = False
        self.request_body = bytearray()
        self.response_reader: Any = None
        self.response_chunked = False
        self.response_streamed = False
        self.response_body = bytearray()
        self.answer_started = False  # the client got a response head (an error can no longer be answered)
        self.idle: dict[tuple[str, int, bool], Upstream] = {}
        self.upstreams: dict[Connection, Upstream] = {}
        self.sources: dict[commands.Command, Upstream] = {}
        self.stock: HttpLayer | None = None

    def __repr__(self) -> str:
        return f"FastHttp1(client: {self.client_state}, server: {self.server_state})"

    @property
    def answer_pending(self) -> bool:
        """The exchange's upstream side has neither finished nor failed."""
        return self.server_state not in (DONE, ERRORED)

    # ---- events ----

    def _handle_event(self, event: events.Event) -> Gen:
        if isinstance(event, events.ConnectionEvent):
            conn = event.connection
            if conn is self.context.client and self.stock is None:
                if isinstance(event, events.DataReceived):
                    self.buf += event.data
                    yield from self.on_client_data()
                elif isinstance(event, events.ConnectionClosed):
                    yield from self.on_client_closed()
                return
            up = self.upstreams.get(conn)
            if up is not None:
                if isinstance(event, events.DataReceived) and not up.tls and up.open:
                    yield from self.on_upstream_data(up, event.data)  # plain HTTP: no layer in between
                else:
                    yield from self.to_upstream(up, event)
                return
        elif isinstance(event, events.CommandCompleted):
            up = self.sources.pop(event.command, None)
            if up is not None:
                yield from self.to_upstream(up, event)
                return
        elif isinstance(event, events.Start):
            return
        if self.stock is not None:
            yield from self.stock.handle_event(event)

    def to_upstream(self, up: Upstream, event: events.Event) -> Gen:
        for command in up.top.handle_event(event):
            if isinstance(command, Received):
                yield from self.on_upstream_data(up, command.data)
            elif isinstance(command, Opened):
                yield from self.on_upstream_opened(up, command.error)
            elif isinstance(command, Closed):
                yield from self.on_upstream_closed(up)
            else:
                if command.blocking or isinstance(command, commands.RequestWakeup):
                    self.sources[command] = up
                yield command

    # ---- the client's side ----

    def on_client_data(self) -> Gen:
        if self.client_state == HEAD:
            yield from self.read_request_head()
        elif self.client_state == BODY:
            yield from self.read_request_body()
        # WAIT: a pipelined request stays buffered until this exchange is done.

    def read_request_head(self) -> Gen:
        while True:
            lines = self.buf.maybe_extract_lines()
            if lines is None:
                return
            if lines:
                break  # (an empty list is a stray blank line before the request: skipped)
        head = [bytes(x) for x in lines]
        try:
            request = http1.read_request_head(head)
            size = http1.expected_http_body_size(request)
        except ValueError:
            yield from self.hand_over(head)  # mitmproxy answers 400 and runs the hooks it runs
            return
        if self.needs_stock(request):
            yield from self.hand_over(head)
            return
        yield from self.start_exchange(request, size)

    def needs_stock(self, request: http.Request) -> bool:
        data = request.data
        if data.http_version != b"HTTP/1.1" or data.method == b"CONNECT" or data.authority or data.host:
            return True
        headers = request.headers
        if "upgrade" in headers or "expect" in headers:
            return True
        problem = validate_request(HTTPMode.transparent, request, self.context.options.validate_inbound_headers)
        return problem is not None

    def hand_over(self, head: list[bytes]) -> Gen:
        """The rest of this connection goes through mitmproxy's own HTTP layer, from this request on."""
        raw = b"\r\n".join(head) + b"\r\n\r\n" + bytes(self.buf)
        self.stats["http_handovers"] = self.stats.get("http_handovers", 0) + 1
        self.buf = ReceiveBuffer()
        yield from self.close_idle()
        self.stock = HttpLayer(self.context, HTTPMode.transparent)
        yield from self.stock.handle_event(events.Start())
        yield from self.stock.handle_event(events.DataReceived(self.context.client, raw))

    def start_exchange(self, request: http.Request, size: int | None) -> Gen:
        flow = http.HTTPFlow(self.context.client, self.context.server)
        flow.request = request
        flow.live = True
        self.flow = flow
        # As mitmproxy's transparent mode under a reverse proxy: the destination is the mode's target,
        # and the Host header names it (the router then points the request at its route).
        server = self.context.server
        assert server.address
        scheme = "https" if server.tls else "http"
        request.data.host, request.data.port = server.address
        request.data.scheme = scheme.encode()
        if not self.context.options.keep_host_header:
            request.host_header = url.hostport(scheme, *server.address)
        self.request_streamed = False
        self.request_chunked = is_chunked(request)
        self.request_body = bytearray()
        self.response_streamed = False
        self.answer_started = False
        self.client_state = BODY if size != 0 else WAIT
        self.server_state = IDLE
        yield HttpRequestHeadersHook(flow)
        if (yield from self.killed(True)):
            return
        if size == 0:
            yield from self.request_complete()
            return
        self.request_reader = make_body_reader(size)
        if flow.request.stream:
            self.request_streamed = True
            yield from self.connect()
        if self.client_state == BODY:
            yield from self.read_request_body()

    def read_request_body(self) -> Gen:
        flow = self.flow
        assert flow is not None
        reader = self.request_reader
        while self.client_state == BODY and not (self.request_streamed and self.server_state == CONNECTING):
            try:
                h11_event = reader(self.buf)
            except h11.ProtocolError as exc:
                yield commands.CloseConnection(self.context.client)
                yield from self.client_failed(f"HTTP/1 protocol error: {exc}")
                return
            if h11_event is None:
                return
            if isinstance(h11_event, h11.Data):
                data = bytes(h11_event.data)
                if not self.request_streamed:
                    self.request_body += data
                    continue
                data = tapped(flow.request.stream, data)
                if data and self.up is not None and self.answer_pending:
                    yield from self.send_upstream(self.up, frame(data, self.request_chunked))
            elif isinstance(h11_event, h11.EndOfMessage):
                if h11_event.headers:
                    yield commands.CloseConnection(self.context.client)
                    yield from self.client_failed("HTTP/1 protocol error: request trailers are not supported")
                    return
                yield from self.request_complete()
                return

    def request_complete(self) -> Gen:
        flow = self.flow
        assert flow is not None
        request = flow.request
        request.timestamp_end = time.time()
        self.client_state = WAIT
        self.request_reader = None
        if self.request_streamed:
            tail = tapped(request.stream, b"")
            if tail and self.up is not None and self.answer_pending:
                yield from self.send_upstream(self.up, frame(tail, self.request_chunked))
            yield HttpRequestHook(flow)
            if self.request_chunked and self.up is not None and self.answer_pending:
                yield from self.send_upstream(self.up, b"0\r\n\r\n")
            if self.server_state == DONE:
                yield from self.exchange_done()
            return
        request.data.content = bytes(self.request_body)
        self.request_body = bytearray()
        yield HttpRequestHook(flow)
        if (yield from self.killed(True)):
            return
        if flow.response is not None:  # answered by an addon (the proxy's own endpoints, refusals)
            flow.response.timestamp_start = time.time()
            yield HttpResponseHeadersHook(flow)
            if (yield from self.killed(True)):
                return
            yield from self.send_whole_response()
            return
        yield from self.connect()

    def on_client_closed(self) -> Gen:
        if self.client_state == CLOSED:  # we closed it first
            yield from self.close_idle()
            return
        if self.client_state == BODY and self.request_reader is not None:
            try:
                self.request_reader.read_eof()
            except h11.ProtocolError as exc:
                yield commands.CloseConnection(self.context.client)
                yield from self.client_failed(f"HTTP/1 protocol error: {exc}")
                return
        if self.client_state == WAIT and self.flow is not None:
            if self.context.client.state is not ConnectionState.CLOSED:
                yield commands.CloseConnection(self.context.client)
            yield from self.client_failed("Client disconnected.")
            return
        self.client_state = CLOSED
        yield commands.CloseConnection(self.context.client)
        yield from self.close_idle()

    def client_failed(self, message: str) -> Gen:
        """The client broke off its exchange (left, or sent a malformed body): as mitmproxy, close the
        upstream connection if the request already went there, and report the flow as failed."""
        flow = self.flow
        self.client_state = CLOSED
        if flow is None:
            return
        up = self.up
        if up is not None and self.answer_pending:
            yield from self.close_upstream(up)
        if self.answer_pending:
            self.server_state = ERRORED
            flow.error = mflow.Error(message)
            yield HttpErrorHook(flow)
        flow.live = False
        yield from self.close_idle()

    # ---- the upstream's side ----

    def connect(self) -> Gen:
        flow = self.flow
        assert flow is not None
        request = flow.request
        key = (request.host, request.port, request.scheme == "https")
        up = self.idle.pop(key, None)
        self.server_state = CONNECTING
        if up is not None and up.server.connected:
            self.up = up
            yield from self.upstream_ready()
            return
        context = self.context.fork()
        context.server = Server(address=(request.host, request.port))
        up = Upstream(context, key)  # (appends itself to context.layers: fine, below the TLS layer below)
        if up.tls:
            context.server.sni = request.host
            context.server.alpn_offers = (b"http/1.1",)  # this layer speaks HTTP/1.1 only
            context.layers.remove(up)
            top = tls.ServerTLSLayer(context)
            context.layers.append(up)
            top.child_layer = up
            up.top = top
        self.up = up
        self.upstreams[up.server] = up
        yield from self.to_upstream(up, events.Start())

    def on_upstream_opened(self, up: Upstream, error: str | None) -> Gen:
        if error:
            self.upstreams.pop(up.server, None)
            if up is self.up and self.server_state == CONNECTING:
                yield from self.upstream_failed(error, ErrorCode.CONNECT_FAILED)
            return
        up.open = True
        if up is self.up and self.server_state == CONNECTING:
            yield from self.upstream_ready()
        else:  # nobody waits for it any more
            yield from self.close_upstream(up)

    def upstream_ready(self) -> Gen:
        flow = self.flow
        up = self.up
        assert flow is not None and up is not None
        flow.server_conn = up.server
        self.server_state = ANSWER_HEAD
        request = flow.request
        if self.request_streamed:
            yield from self.send_upstream(up, http1.assemble_request_head(request))
            if self.client_state == BODY:
                yield from self.read_request_body()
            return
        body = whole_body(request.raw_content or b"", is_chunked(request))  # (headers as the addons left them)
        yield from self.send_upstream(up, http1.assemble_request_head(request) + body)

    def on_upstream_data(self, up: Upstream, data: bytes) -> Gen:
        if up is not self.up or self.server_state not in (ANSWER_HEAD, ANSWER_BODY):
            yield commands.Log(f"Unexpected data from server: {data[:200]!r}")
            yield from self.close_upstream(up)
            return
        up.buf += data
        if self.server_state == ANSWER_HEAD:
            yield from self.read_response_head(up)
        if self.server_state == ANSWER_BODY:
            yield from self.read_response_body(up)

    def read_response_head(self, up: Upstream) -> Gen:
        flow = self.flow
        assert flow is not None
        while True:
            lines = up.buf.maybe_extract_lines()
            if lines is None:
                return
            if not lines:
                continue
            try:
                response = http1.read_response_head([bytes(x) for x in lines])
                size = http1.expected_http_body_size(flow.request, response)
            except ValueError as exc:
                yield from self.close_upstream(up)
                yield from self.upstream_failed(f"Cannot parse HTTP response: {exc}", ErrorCode.GENERIC_SERVER_ERROR)
                return
            if response.status_code == 101:
                yield from self.close_upstream(up)
                yield from self.upstream_failed("the upstream switched protocols without being asked to",
                                                ErrorCode.GENERIC_SERVER_ERROR)
                return
            if response.status_code >= 200:
                break
            # An interim answer (103 Early Hints...): passed on as it came; the final one follows.
            yield commands.SendData(self.context.client, http1.assemble_response_head(response))
        flow.response = response
        if self.context.options.validate_inbound_headers:
            try:
                validate_headers(response)
            except ValueError as exc:
                yield from self.close_upstream(up)
                yield from self.upstream_failed(
                    f"Received {exc} from server, refusing to prevent request smuggling attacks. "
                    "Disable the validate_inbound_headers option to skip this security check.",
                    ErrorCode.RESPONSE_VALIDATION_FAILED)
                return
        self.response_reader = make_body_reader(size)
        self.response_chunked = is_chunked(response)
        self.response_body = bytearray()
        self.server_state = ANSWER_BODY
        yield HttpResponseHeadersHook(flow)
        if (yield from self.killed(True)):
            return
        if flow.response.stream and size != 0:
            self.response_streamed = True
            self.answer_started = True
            yield commands.SendData(self.context.client, http1.assemble_response_head(flow.response))
        if size == 0:
            yield from self.response_complete(up)

    def read_response_body(self, up: Upstream) -> Gen:
        flow = self.flow
        assert flow is not None and flow.response is not None
        reader = self.response_reader
        while self.server_state == ANSWER_BODY:
            try:
                h11_event = reader(up.buf)
            except h11.ProtocolError as exc:
                yield from self.close_upstream(up)
                yield from self.upstream_failed(f"HTTP/1 protocol error: {exc}", ErrorCode.GENERIC_SERVER_ERROR)
                return
            if h11_event is None:
                return
            if isinstance(h11_event, h11.Data):
                data = bytes(h11_event.data)
                if not self.response_streamed:
                    self.response_body += data
                    continue
                data = tapped(flow.response.stream, data)
                if data:
                    yield commands.SendData(self.context.client, frame(data, self.response_chunked))
            else:
                yield from self.response_complete(up)

    def on_upstream_closed(self, up: Upstream) -> Gen:
        self.upstreams.pop(up.server, None)
        if self.idle.get(up.key) is up:
            del self.idle[up.key]
        if up.server.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(up.server)
        if up is not self.up:
            return
        if self.server_state == ANSWER_HEAD:
            leftover = bytes(up.buf)
            message = f"unexpected server response: {leftover!r}" if leftover else "server closed connection"
            yield from self.upstream_failed(message, ErrorCode.GENERIC_SERVER_ERROR)
        elif self.server_state == ANSWER_BODY:
            try:
                h11_event = self.response_reader.read_eof()
            except h11.ProtocolError as exc:
                yield from self.upstream_failed(f"HTTP/1 protocol error: {exc}", ErrorCode.GENERIC_SERVER_ERROR)
                return
            if isinstance(h11_event, h11.EndOfMessage):  # an answer delimited by the connection's end
                yield from self.response_complete(up)

    def upstream_failed(self, message: str, code: ErrorCode) -> Gen:
        """The exchange cannot complete upstream: the `error` hook, then a JSON error answer if the client
        got nothing yet (a cut if it did), and the client connection closes, as on mitmproxy's path."""
        flow = self.flow
        assert flow is not None
        if not self.answer_pending:
            return
        self.server_state = ERRORED
        flow.error = mflow.Error(message)
        yield HttpErrorHook(flow)
        flow.live = False
        if self.client_state != CLOSED and self.context.client.state & ConnectionState.CAN_WRITE:
            answer = None if self.answer_started else error_answer(code, message, flow.request)
            if answer is not None:
                yield commands.SendData(self.context.client, answer)
            yield commands.CloseConnection(self.context.client)
        self.client_state = CLOSED

    def response_complete(self, up: Upstream) -> Gen:
        flow = self.flow
        assert flow is not None and flow.response is not None
        response = flow.response
        self.server_state = DONE
        self.response_reader = None
        if self.response_streamed:
            tail = tapped(response.stream, b"")
            end = frame(tail, self.response_chunked) if tail else b""
            if self.response_chunked and flow.request.data.method != b"HEAD":
                end += b"0\r\n\r\n"
            if end:
                yield commands.SendData(self.context.client, end)  # the client's last byte: before any hook
        else:
            response.data.content = bytes(self.response_body)
            self.response_body = bytearray()
        if not self.keep_upstream(up):
            yield from self.close_upstream(up)
        if self.response_streamed:
            response.timestamp_end = time.time()
            yield HttpResponseHook(flow)
        else:
            yield from self.send_whole_response()
            return
        if self.client_state == WAIT:
            yield from self.exchange_done()

    def keep_upstream(self, up: Upstream) -> bool:
        """Keep the connection for this client's next request, unless either side said it ends here
        (or the request is still being sent: the answer came first)."""
        flow = self.flow
        assert flow is not None and flow.response is not None
        if (ends_connection(flow.request, flow.response, bad_framing=True)
                or not up.server.connected or self.client_state != WAIT or up.key in self.idle):
            return False
        self.idle[up.key] = up
        return True

    def send_whole_response(self) -> Gen:
        """A response held whole (answered by an addon, or not streamed): the `response` hook, then the bytes."""
        flow = self.flow
        assert flow is not None and flow.response is not None
        response = flow.response
        response.timestamp_end = time.time()
        self.server_state = DONE
        yield HttpResponseHook(flow)
        if (yield from self.killed(False)):
            return
        body = whole_body(response.raw_content or b"", is_chunked(response), flow.request.data.method != b"HEAD")
        self.answer_started = True
        yield commands.SendData(self.context.client, http1.assemble_response_head(response) + body)
        if self.client_state == WAIT:
            yield from self.exchange_done()

    def exchange_done(self) -> Gen:
        flow = self.flow
        assert flow is not None and flow.response is not None
        flow.live = False
        self.flow = None
        self.up = None
        self.server_state = IDLE
        if ends_connection(flow.request, flow.response, bad_framing=False):  # (after the hooks, as mitmproxy)
            self.client_state = CLOSED
            yield commands.CloseConnection(self.context.client)
            yield from self.close_idle()
            return
        self.client_state = HEAD
        if self.buf:
            yield from self.read_request_head()

    # ---- helpers ----

    def killed(self, emit_error_hook: bool) -> layer.CommandGenerator[bool]:
        """An addon killed the flow (`flow.kill()`): as mitmproxy, the client connection is dropped."""
        flow = self.flow
        if flow is None or not (flow.error and flow.error.msg == mflow.Error.KILLED_MESSAGE):
            return False
        if emit_error_hook:
            yield HttpErrorHook(flow)
        flow.live = False
        if self.up is not None and self.answer_pending:
            yield from self.close_upstream(self.up)
        self.client_state = CLOSED
        self.server_state = ERRORED
        yield commands.CloseConnection(self.context.client)
        return True

    def send_upstream(self, up: Upstream, data: bytes) -> Gen:
        if up.tls:
            yield from self.to_upstream(up, Send(data))
        else:
            yield commands.SendData(up.server, data)

    def close_idle(self) -> Gen:
        for up in list(self.idle.values()):
            yield from self.close_upstream(up)

    def close_upstream(self, up: Upstream) -> Gen:
        if self.idle.get(up.key) is up:
            del self.idle[up.key]
        if up.server.state & ConnectionState.CAN_WRITE:
            if up.tls:
                yield from self.to_upstream(up, Close())
            else:
                yield commands.CloseConnection(up.server)
