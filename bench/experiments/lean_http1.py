"""EXPERIMENT, not product code: neatlogs-proxy with a lean HTTP/1 layer in place of mitmproxy's HttpLayer.

    .venv/bin/python bench/latency.py --proxy-script bench/experiments/lean_http1.py --no-write

Why it exists: on the benchmark machine mitmproxy's HTTP layer alone (bare, tuned as ours) adds
~0.8-0.9 ms to an SSE stream's first byte, most of the 1 ms target. This measures what a routed-traffic
path shorter than that layer would give, with everything else unchanged: the same `proxy.cli`, the
same addons (router, capture, pipeline, local store), the same hooks on real `HTTPFlow`s, under
mitmproxy's own connection handling. It replaces only the layer between the client connection and the
upstream connection, for reverse-mode plain-HTTP clients.

It handles exactly what the benchmark sends and nothing more. A product version would also need:
- upstream TLS (every real provider);
- chunked and `Expect: 100-continue` request bodies, and HTTP/1.0 and `Connection: close` clients;
- close-delimited, HEAD, 1xx, 204 and 304 responses;
- the `error` hook and JSON 502 answers for upstream failures, and clients leaving mid-stream;
- pipelined requests, upstream keep-alive races, timeouts and body-size limits.

Until then it must never be the default.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from mitmproxy import http
from mitmproxy.addons import next_layer as next_layer_addon
from mitmproxy.connection import Server
from mitmproxy.net.http.http1 import (
    assemble_request_head,
    assemble_response_head,
    read_request_head,
    read_response_head,
)
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)

Gen = layer.CommandGenerator[None]


def body_tap(stream: Any, data: bytes) -> bytes:
    """What mitmproxy does with `message.stream`: a callable sees (and may change) every chunk."""
    return stream(data) if callable(stream) else data


class LeanHttp1(layer.Layer):
    """One client connection: parse each request, run the hooks, relay the answer chunk by chunk."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.client_buf = b""
        self.server_buf = b""
        self.flow: http.HTTPFlow | None = None
        self.servers: dict[tuple[str, int], Server] = {}
        self.busy = False  # a request is in flight (one at a time, as HTTP/1.1 without pipelining)
        self.response_state = "idle"  # idle | head | length | chunked
        self.left = 0

    def _handle_event(self, event: events.Event) -> Gen:
        if isinstance(event, events.DataReceived):
            if event.connection is self.context.client:
                self.client_buf += event.data
                yield from self.on_client_data()
            else:
                self.server_buf += event.data
                yield from self.on_server_data()
        elif isinstance(event, events.ConnectionClosed):
            if event.connection is self.context.client:
                for server in self.servers.values():
                    if server.connected:
                        yield commands.CloseConnection(server)
                yield commands.CloseConnection(self.context.client)
            else:
                self.servers = {a: s for a, s in self.servers.items() if s is not event.connection}
                yield commands.CloseConnection(event.connection)

    def on_client_data(self) -> Gen:
        if self.busy:
            return
        end = self.client_buf.find(b"\r\n\r\n")
        if end < 0:
            return
        request = read_request_head(self.client_buf[:end].split(b"\r\n"))
        length = int(request.headers.get("content-length", "0") or 0)
        if len(self.client_buf) < end + 4 + length:
            return
        body = self.client_buf[end + 4:end + 4 + length]
        self.client_buf = self.client_buf[end + 4 + length:]
        request.timestamp_start = time.time()
        flow = http.HTTPFlow(self.context.client, self.context.server)
        flow.request = request
        flow.live = True
        self.flow = flow
        self.busy = True
        yield HttpRequestHeadersHook(flow)
        if flow.response is not None or flow.metadata.get("neatlogs.internal") or "neatlogs.refuse" in flow.metadata:
            flow.request.content = body
            yield HttpRequestHook(flow)
            yield from self.answer_locally(flow)
            return
        address = (request.host, request.port)
        server = self.servers.get(address)
        if server is None or not server.connected:
            server = self.servers[address] = Server(address=address)
            error = yield commands.OpenConnection(server)
            if error:
                flow.response = http.Response.make(502, f"upstream unreachable: {error}".encode())
                yield from self.answer_locally(flow)
                return
        self.response_state = "head"
        yield commands.SendData(server, assemble_request_head(request) + body_tap(request.stream, body))
        request.timestamp_end = time.time()
        yield HttpRequestHook(flow)

    def answer_locally(self, flow: http.HTTPFlow) -> Gen:
        response = flow.response or http.Response.make(500, b"no answer")
        flow.response = response
        yield commands.SendData(self.context.client, assemble_response_head(response) + (response.raw_content or b""))
        yield HttpResponseHook(flow)
        yield from self.next_request()

    def on_server_data(self) -> Gen:
        flow = self.flow
        while flow is not None:
            if self.response_state == "head":
                end = self.server_buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                response = read_response_head(self.server_buf[:end].split(b"\r\n"))
                self.server_buf = self.server_buf[end + 4:]
                flow.response = response
                yield HttpResponseHeadersHook(flow)
                yield commands.SendData(self.context.client, assemble_response_head(response))
                if "chunked" in response.headers.get("transfer-encoding", "").lower():
                    self.response_state = "chunked"
                else:
                    self.response_state = "length"
                    self.left = int(response.headers.get("content-length", "0") or 0)
            elif self.response_state == "length":
                assert flow.response is not None
                if self.server_buf:
                    data = self.server_buf[:self.left]
                    self.server_buf = self.server_buf[len(data):]
                    self.left -= len(data)
                    yield commands.SendData(self.context.client, body_tap(flow.response.stream, data))
                if self.left:
                    return
                yield from self.finish_response(flow)
            elif self.response_state == "chunked":
                out, done = self.take_chunks(flow)
                if out:
                    yield commands.SendData(self.context.client, out)
                if not done:
                    return
                yield from self.finish_response(flow)
            else:
                return

    def take_chunks(self, flow: http.HTTPFlow) -> tuple[bytes, bool]:
        """Every complete chunk in the buffer, through the tap and re-framed; whether the last one came."""
        assert flow.response is not None
        out: list[bytes] = []
        buf = self.server_buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(buf[:line_end].split(b";", 1)[0], 16)
            if len(buf) < line_end + 2 + size + 2:
                break
            chunk = buf[line_end + 2:line_end + 2 + size]
            buf = buf[line_end + 4 + size:]
            if size == 0:
                self.server_buf = buf
                out.append(b"0\r\n\r\n")
                return b"".join(out), True
            chunk = body_tap(flow.response.stream, chunk)
            out.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.server_buf = buf
        return b"".join(out), False

    def finish_response(self, flow: http.HTTPFlow) -> Gen:
        assert flow.response is not None
        body_tap(flow.response.stream, b"")
        flow.response.timestamp_end = time.time()
        self.response_state = "idle"
        yield HttpResponseHook(flow)
        yield from self.next_request()

    def next_request(self) -> Gen:
        self.busy = False
        self.flow = None
        if self.client_buf:
            yield from self.on_client_data()


def install() -> None:
    """Choose LeanHttp1 for every plain-HTTP reverse-mode client connection, mitmproxy's layers otherwise."""
    stock = next_layer_addon.NextLayer.next_layer

    def next_layer(self: next_layer_addon.NextLayer, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is None and getattr(nextlayer.context.client.proxy_mode, "scheme", None) == "http":
            nextlayer.layer = LeanHttp1(nextlayer.context)
            return
        stock(self, nextlayer)

    next_layer_addon.NextLayer.next_layer = next_layer  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from proxy.cli import main

    sys.exit(main(sys.argv[1:]))
