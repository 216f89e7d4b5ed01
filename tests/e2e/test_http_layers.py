"""The two HTTP layers a client connection can get, on the live proxy: connection reuse, and what the fast
layer hands to mitmproxy's.

A raw-socket upstream records every connection and request it gets; clients are raw sockets too, so
each byte on both sides is the test's own. Every other e2e suite also runs against both layers
(`http_layer` in tests/conftest.py); these cases are the ones where the layer is the subject.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from tests.conftest import http_connections
from tests.fakes.util import RawServer

OK = b'{"ok": true}'


def read_head(f: Any) -> tuple[bytes, dict[str, str]]:
    first = f.readline()
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return first, headers


def read_message(f: Any) -> tuple[bytes, dict[str, str], bytes]:
    first, headers = read_head(f)
    return first, headers, read_body(f, headers)


def read_body(f: Any, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(f.readline().strip(), 16):
            body += f.read(size + 2)[:-2]
        f.readline()
        return body
    return f.read(int(headers.get("content-length", "0")))


class Scripted(RawServer):
    """Keep-alive HTTP/1.1 upstream: answers by path, and notes (connection number, request line,
    headers, body) for every request. `/early` answers 413 and hangs up before reading the body."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[int, bytes, dict[str, str], bytes]] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            number = self.connections
        f = conn.makefile("rb")
        try:
            while True:
                line, headers = read_head(f)
                if not line:
                    return
                path = line.split()[1].decode()
                if path == "/early":  # refuses the upload from its head, without reading it
                    with self.lock:
                        self.requests.append((number, line, headers, b""))
                    conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    # A lingering close, as real servers do: closing with the upload unread would make the
                    # kernel reset the connection, and a reset may discard the 413 before anyone reads it.
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(10)
                    while conn.recv(65536):
                        pass
                    return
                body = read_body(f, headers)
                with self.lock:
                    self.requests.append((number, line, headers, body))
                if path == "/garbage":
                    conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                if path == "/hints":
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
                close = path == "/close"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                             % (len(OK), b"connection: close\r\n" if close else b"", OK))
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()


@pytest.fixture
def upstream() -> Any:
    server = Scripted()
    yield server
    server.close()


def ask(f: Any, sock: socket.socket, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    sock.sendall(raw)
    return read_message(f)


def connect(proxy: Any) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return sock, sock.makefile("rb")


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET /up%s HTTP/1.1\r\nHost: proxy\r\n%s\r\n" % (path.encode(), extra)


def test_keep_alive_reuses_the_upstream_connection_until_an_answer_closes_it(upstream: Scripted, proxy_process,
                                                                            http_layer: str) -> None:
    proxy = proxy_process(routes={"up": upstream.url})
    sock, f = connect(proxy)
    with sock:
        for _ in range(3):
            assert ask(f, sock, get("/ok")) == (b"HTTP/1.1 200 OK\r\n", {"content-type": "application/json",
                                                                         "content-length": str(len(OK))}, OK)
        line, headers, _ = ask(f, sock, get("/close"))
        assert line == b"HTTP/1.1 200 OK\r\n" and headers["connection"] == "close"
        assert f.read() == b""  # the proxy closed the client connection too, as the answer said
    sock, f = connect(proxy)
    with sock:
        assert ask(f, sock, get("/ok"))[2] == OK
    assert [(n, line.split()[1]) for n, line, _, _ in upstream.requests] == [
        (1, b"/ok"), (1, b"/ok"), (1, b"/ok"), (1, b"/close"), (2, b"/ok")]
    assert all(h["host"] == f"127.0.0.1:{upstream.port}" for _, _, h, _ in upstream.requests)
    assert http_connections(proxy).get("handovers", 0) == 0


def test_requests_outside_plain_http11_are_answered_by_mitmproxys_layer(upstream: Scripted, proxy_process,
                                                                       http_layer: str) -> None:
    """Expect: 100-continue, HTTP/1.0 and Upgrade requests get mitmproxy's own handling on both layers: the
    fast one hands the connection over (counted), before any hook ran, and the answers are the same."""
    proxy = proxy_process(routes={"up": upstream.url})
    sock, f = connect(proxy)
    with sock:
        assert ask(f, sock, get("/ok"))[2] == OK  # (fast layer, if that is the one under test)
        sock.sendall(b"POST /up/expect HTTP/1.1\r\nHost: proxy\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert read_head(f)[0] == b"HTTP/1.1 100 Continue\r\n"
        sock.sendall(b"body")
        assert read_message(f)[2] == OK
        assert ask(f, sock, get("/ok"))[2] == OK  # the same connection carries on
    sock, f = connect(proxy)
    with sock:
        line, _, body = ask(f, sock, b"GET /up/ok HTTP/1.0\r\nHost: proxy\r\n\r\n")
        assert body == OK and line.startswith(b"HTTP/1.")
    sock, f = connect(proxy)
    with sock:
        upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        assert ask(f, sock, get("/ws", upgrade))[2] == OK
    seen = {line.split()[1]: (headers, body) for _, line, headers, body in upstream.requests}
    assert seen[b"/expect"] == ({"host": f"127.0.0.1:{upstream.port}", "content-length": "4"}, b"body")
    assert seen[b"/ws"][0]["upgrade"] == "websocket"
    assert http_connections(proxy).get("handovers", 0) == (3 if http_layer == "fast" else 0)


def test_an_upstream_answering_garbage_gets_a_json_502_naming_the_route(upstream: Scripted, proxy_process) -> None:
    proxy = proxy_process(routes={"up": upstream.url})
    sock, f = connect(proxy)
    with sock:
        line, headers, body = ask(f, sock, get("/garbage"))
    assert line == b"HTTP/1.1 502 Bad Gateway\r\n" and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["route"] == "up" and "cannot parse HTTP response" in error["message"], error


@pytest.mark.parametrize("http_layer", ["fast"])  # mitmproxy's layer takes the 103 for the answer
def test_interim_answers_pass_through_and_the_final_one_follows(upstream: Scripted, proxy_process,
                                                                http_layer: str) -> None:
    proxy = proxy_process(routes={"up": upstream.url})
    sock, f = connect(proxy)
    with sock:
        sock.sendall(get("/hints"))
        assert read_head(f) == (b"HTTP/1.1 103 Early Hints\r\n", {"link": "</style.css>; rel=preload"})
        assert read_message(f)[::2] == (b"HTTP/1.1 200 OK\r\n", OK)
        assert ask(f, sock, get("/ok"))[2] == OK
    assert [n for n, *_ in upstream.requests] == [1, 1]


def test_an_answer_before_the_upload_ends_reaches_the_client_and_nothing_breaks(upstream: Scripted,
                                                                               proxy_process) -> None:
    """The upstream refuses an upload from its head and hangs up while the client still sends: the client
    gets the 413, the rest of its body goes nowhere (not to a closed upstream), and the proxy carries on."""
    proxy = proxy_process(routes={"up": upstream.url})
    sock, f = connect(proxy)
    with sock:
        size = 4 * 1024 * 1024
        sock.sendall(b"POST /up/early HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % size + b"x" * 65536)
        line, _, body = read_message(f)
        assert line == b"HTTP/1.1 413 Payload Too Large\r\n" and body == b""
        sent = 65536
        try:
            while sent < size:
                sock.sendall(b"x" * 65536)
                sent += 65536
        except OSError:
            pass  # the proxy may hang up on the rest: either way is fine, as long as nothing breaks
    sock, f = connect(proxy)
    with sock:
        assert ask(f, sock, get("/ok"))[2] == OK
    assert proxy.running
    assert "Traceback" not in proxy.logs() and "crashed" not in proxy.logs(), proxy.logs()
