"""proxy.tuning and proxy.fastpath on real connections: mitmproxy in reverse mode stock, tuned exactly as
the proxy runs it (HookCache, inline hooks, every behaviour-preserving trim), and tuned with the fast
HTTP/1 layer; the same exchanges through each over 127.0.0.1: keep-alive requests with JSON and SSE
answers, a chunked request body, HEAD, pipelined requests, an unreachable upstream and a stream the
upstream cuts. Each side runs in a fresh interpreter, so the stock side is really stock (the trims
patch mitmproxy's classes for the whole process). Every side gets the proxy's JSON error answers.

All must call the same hooks in the same order and hand the client the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from proxy import tuning
from proxy.errors import install_json_errors
from proxy.fastpath import FastPath

REPO = Path(__file__).resolve().parents[2]

SSE = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"))


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readexactly(2)
    return body


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1: /sse streams three chunked events, /cut stops in the middle of one, HEAD gets
    a head, anything else a small JSON body."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                chunked |= line.lower() == b"transfer-encoding: chunked"
            body = await read_chunked(reader) if chunked else await reader.readexactly(length) if length else b""
            request_line = head.split(b"\r\n", 1)[0]
            if b" /sse " in request_line or b" /cut " in request_line:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                await writer.drain()
                if b" /cut " in request_line:
                    writer.write(SSE[:20])
                    await writer.drain()
                    writer.close()
                    return
                writer.write(SSE + b"0\r\n\r\n")
            elif request_line.startswith(b"HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n")
            else:
                reply = b'{"echo": %d}' % len(body)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(reply), reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class HookLog:
    """Notes every flow and connection hook, streams SSE answers, taps request bodies, and points
    `/down` at a port nobody listens on."""

    def running(self) -> None:
        self.started.set()

    def _note(self, hook: str, flow: Any) -> None:
        self.log.append(f"{hook} {flow.request.method} {flow.request.path}")

    def __init__(self, unreachable: int) -> None:
        self.log: list[str] = []
        self.started = asyncio.Event()
        self.unreachable = unreachable

    def requestheaders(self, flow: Any) -> None:
        self._note("requestheaders", flow)
        flow.request.stream = lambda data: data
        if flow.request.path == "/down":
            flow.request.port = self.unreachable

    def request(self, flow: Any) -> None:
        self._note("request", flow)

    def responseheaders(self, flow: Any) -> None:
        self._note("responseheaders", flow)
        if "event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = True

    def response(self, flow: Any) -> None:
        self._note("response", flow)

    def error(self, flow: Any) -> None:
        self._note("error", flow)

    def server_connected(self, data: Any) -> None:
        self.log.append("server_connected")

    def client_connected(self, client: Any) -> None:
        self.log.append("client_connected")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if head_request:
        return head
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                break
        return head + body
    length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return head + await reader.readexactly(length)


KEEP_ALIVE = (
    b"POST /v1/chat HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{\"a\": \"b\"}\n",
    b"POST /sse HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
    b"POST /v1/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
    b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
)
PIPELINED = b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\n"


async def until_closed(raw: bytes, port: int) -> bytes:
    """Send `raw` on a new connection; everything the proxy answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def through_proxy(side: str, unreachable: int) -> tuple[list[str], list[bytes], bool]:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    port = free_port()
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    install_json_errors()
    addons: list[Any] = []
    if side in ("tuned", "fast"):  # what proxy.server.serve installs
        tuning.use_hook_cache(master)
        tuning.tune_mitmproxy()
    if side == "fast":
        addons.append(FastPath())
    hooks = HookLog(unreachable)
    master.addons.add(core.Core(), proxyserver.Proxyserver(), *addons, next_layer.NextLayer(), tlsconfig.TlsConfig(),
                      hooks)
    master.options.update(mode=[f"reverse:http://127.0.0.1:{up_port}"], listen_host="127.0.0.1", listen_port=port,
                          connection_strategy="lazy")
    run = asyncio.create_task(master.run())
    try:
        await asyncio.wait_for(hooks.started.wait(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for raw in KEEP_ALIVE:
            writer.write(raw)
            answers.append(await asyncio.wait_for(read_response(reader, raw.startswith(b"HEAD")), 10))
        writer.write(PIPELINED)
        for _ in range(2):
            answers.append(await asyncio.wait_for(read_response(reader), 10))
        handlers = master.addons.get("proxyserver").connections.values()
        wrapped = all(isinstance(h.layer, tuning.InlineHooks) for h in handlers) and bool(handlers)
        layers = [type(x).__name__ for h in handlers for x in h.layer.context.layers]
        if side == "fast":
            assert "FastHttp1" in layers and "HttpLayer" not in layers, layers
        else:
            assert "HttpLayer" in layers and "FastHttp1" not in layers, layers
        writer.close()
        hooks.log.append("-- /down")
        answers.append(await until_closed(b"GET /down HTTP/1.1\r\nhost: x\r\n\r\n", port))
        hooks.log.append("-- /cut")
        answers.append(await until_closed(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n", port))
        return hooks.log, answers, wrapped
    finally:
        master.shutdown()
        await asyncio.wait_for(run, 10)
        up.close()


def run_side(side: str, unreachable: int) -> tuple[list[str], list[bytes], bool]:
    out = subprocess.run([sys.executable, "-m", "tests.unit.test_inline_hooks_live", side, str(unreachable)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["log"], [base64.b64decode(b) for b in got["bytes"]], got["wrapped"]


def test_tuned_mitmproxy_and_the_fast_path_call_the_same_hooks_and_send_the_same_bytes_as_stock() -> None:
    unreachable = free_port()  # (the same on every side: it is in the error answer)
    stock_log, stock_bytes, stock_wrapped = run_side("stock", unreachable)
    assert stock_log[0] == "client_connected"
    assert [x for x in stock_log if x.endswith("/sse")] == [
        "requestheaders POST /sse", "request POST /sse", "responseheaders POST /sse", "response POST /sse"]
    assert stock_log[stock_log.index("-- /cut"):] == ["-- /cut", "client_connected", "requestheaders GET /cut",
                                                      "request GET /cut", "server_connected",
                                                      "responseheaders GET /cut", "error GET /cut"]
    assert stock_bytes[0].endswith(b'{"echo": 11}') and stock_bytes[1].endswith(SSE + b"0\r\n\r\n")
    assert stock_bytes[3].endswith(b'{"echo": 7}')  # the chunked upload, whole
    assert b"502 Bad Gateway" in stock_bytes[-2] and b'"error"' in stock_bytes[-2]
    assert b"data: one" in stock_bytes[-1] and not stock_bytes[-1].endswith(b"0\r\n\r\n")  # passed on, then cut
    for side in ("tuned", "fast"):
        log, answers, wrapped = run_side(side, unreachable)
        assert not stock_wrapped and wrapped  # only a HookCache master gets inline hooks
        assert log == stock_log, side
        assert answers == stock_bytes, side


if __name__ == "__main__":
    log, answers, wrapped = asyncio.run(through_proxy(sys.argv[1], int(sys.argv[2])))
    print(json.dumps({"log": log, "bytes": [base64.b64encode(a).decode() for a in answers], "wrapped": wrapped}))
