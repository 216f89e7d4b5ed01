"""proxy.tuning on real connections: mitmproxy in reverse mode, stock and tuned exactly as the proxy runs
it (HookCache, inline hooks, every behaviour-preserving trim), the same keep-alive exchanges through
each over 127.0.0.1. Each side runs in a fresh interpreter, so the stock side is really stock (the
trims patch mitmproxy's classes for the whole process).

Both must call the same hooks in the same order and hand the client the same bytes.
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

REPO = Path(__file__).resolve().parents[2]

SSE = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"))


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1: /sse streams three chunked events, anything else gets a small JSON body."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if b" /sse " in head.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                await writer.drain()
                writer.write(SSE + b"0\r\n\r\n")
            else:
                reply = b'{"echo": %d}' % len(body)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(reply), reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class HookLog:
    """Notes every flow and connection hook, streams SSE answers, and taps request bodies."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.started = asyncio.Event()

    def running(self) -> None:
        self.started.set()

    def _note(self, hook: str, flow: Any) -> None:
        self.log.append(f"{hook} {flow.request.method} {flow.request.path}")

    def requestheaders(self, flow: Any) -> None:
        self._note("requestheaders", flow)
        flow.request.stream = lambda data: data

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


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
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


async def through_proxy(tuned: bool) -> tuple[list[str], list[bytes], bool]:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    port = free_port()
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    if tuned:  # what proxy.server.serve installs
        tuning.use_hook_cache(master)
        tuning.tune_mitmproxy()
    hooks = HookLog()
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(), hooks)
    master.options.update(mode=[f"reverse:http://127.0.0.1:{up_port}"], listen_host="127.0.0.1", listen_port=port,
                          connection_strategy="lazy")
    run = asyncio.create_task(master.run())
    try:
        await asyncio.wait_for(hooks.started.wait(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for raw in (b"POST /v1/chat HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{\"a\": \"b\"}\n",
                    b"POST /sse HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
                    b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"):
            writer.write(raw)
            answers.append(await asyncio.wait_for(read_response(reader), 10))
        handlers = master.addons.get("proxyserver").connections.values()
        wrapped = all(isinstance(h.layer, tuning.InlineHooks) for h in handlers) and bool(handlers)
        writer.close()
        return hooks.log, answers, wrapped
    finally:
        master.shutdown()
        await asyncio.wait_for(run, 10)
        up.close()


def run_side(side: str) -> tuple[list[str], list[bytes], bool]:
    out = subprocess.run([sys.executable, "-m", "tests.unit.test_inline_hooks_live", side], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["log"], [base64.b64decode(b) for b in got["bytes"]], got["wrapped"]


def test_tuned_mitmproxy_calls_the_same_hooks_and_sends_the_same_bytes_as_stock() -> None:
    stock_log, stock_bytes, stock_wrapped = run_side("stock")
    tuned_log, tuned_bytes, tuned_wrapped = run_side("tuned")
    assert not stock_wrapped and tuned_wrapped  # only a HookCache master gets inline hooks
    assert tuned_log == stock_log
    assert stock_log[0] == "client_connected"
    assert [x for x in stock_log if x.endswith("/sse")] == [
        "requestheaders POST /sse", "request POST /sse", "responseheaders POST /sse", "response POST /sse"]
    assert tuned_bytes == stock_bytes
    assert tuned_bytes[0].endswith(b'{"echo": 11}') and tuned_bytes[1].endswith(SSE + b"0\r\n\r\n")


if __name__ == "__main__":
    log, answers, wrapped = asyncio.run(through_proxy(tuned=sys.argv[1] == "tuned"))
    print(json.dumps({"log": log, "bytes": [base64.b64encode(a).decode() for a in answers], "wrapped": wrapped}))
