"""Small helpers shared by the fakes and the tests: polling instead of fixed sleeps, free ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from typing import IO


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
