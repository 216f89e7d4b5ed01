"""Small helpers shared by the fakes and the tests: polling instead of fixed sleeps, free ports."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Self


def wait_until[T](fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str | None = None) -> T:
    """Poll ``fn`` until it returns something truthy and return that value.

    Tests must never sleep a fixed time; they wait for state under a deadline. Exceptions raised by
    ``fn`` count as "not yet" (the last one is chained into the AssertionError raised on timeout).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last_exc = None
        except Exception as exc:  # retried until the deadline, chained into the error then
            last_exc = exc
        if time.monotonic() >= deadline:
            what = message or getattr(fn, "__name__", repr(fn))
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}") from last_exc
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that was free a moment ago (for processes that need ``--port N``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_http_body(rfile: IO[bytes], headers: Mapping[str, str]) -> bytes:
    """Read a request body framed by Content-Length or chunked transfer encoding (for the fakes)."""
    if headers.get("Transfer-Encoding", "").lower() != "chunked":
        return rfile.read(int(headers.get("Content-Length") or 0))
    parts = []
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: the default 5 drops SYNs under many concurrent streams


class TrackedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler of a :class:`LoopbackServer`; registers its connection so ``stop()`` can cut
    streams that are still open (a fake that goes down must look down to the proxy at once)."""

    protocol_version = "HTTP/1.1"
    owner: Any

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.owner._lock:
                self.owner._conns.discard(self.connection)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 for the fakes: ephemeral port (kept across stop/start, so a
    fake can go down and come back on the same port), background thread, context manager."""

    thread_name = "fake-server"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._port = 0
        self.tls: ssl.SSLContext | None = None  # set before start() to serve HTTPS

    def handler_class(self) -> type[TrackedHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        handler = type("Handler", (self.handler_class(),), {"owner": self})
        self._server = _Server(("127.0.0.1", self._port), handler)
        self._port = self._server.server_address[1]
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port, f"{type(self).__name__} not started"
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


class RawServer:
    """A raw-socket HTTP/1.1 server on 127.0.0.1, one thread per connection, for tests that must see
    or send bytes exactly (no HTTP library in between). Subclasses implement `_handle(conn)`."""

    def __init__(self, backlog: int = 64) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
