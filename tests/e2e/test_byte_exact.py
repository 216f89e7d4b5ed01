"""The client receives exactly what the upstream sent: same status, same headers (minus hop-by-hop), same bytes.

A raw-socket upstream replays a corpus of responses (streamed, non-streamed, gzip/br/zstd, HTTP errors,
malformed bodies, odd framings). Each is fetched directly and through the real proxy with httpx
without any content decoding (`iter_raw`), and the two must match. The upstream also records the
request bodies it received, which must be identical too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard

from tests.fakes.util import RawServer, wait_until

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate",
              "proxy-authorization", "proxy-connection"}


@dataclass
class Canned:
    status: str  # status line tail, e.g. "200 OK"
    headers: list[tuple[str, str]]
    parts: list[bytes]  # body pieces, written with a small pause between them
    framing: str = "length"  # length | chunked | close
    pause: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


def sse(*events: object, garbage: bytes = b"") -> list[bytes]:
    out = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    if garbage:
        out.insert(1, garbage)
    return [*out, b"data: [DONE]\n\n"]


def chunk_event(text: str, finish: str | None = None) -> dict[str, object]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def gzip_stream(parts: list[bytes]) -> list[bytes]:
    comp = zlib.compressobj(wbits=31)
    out = [comp.compress(p) + comp.flush(zlib.Z_SYNC_FLUSH) for p in parts]
    out.append(comp.flush())
    return out


COMPLETION = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "héllo ✓"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
SSE_BODY = sse(chunk_event("Hel"), chunk_event("lo"), chunk_event("", "stop"))
BIG = os.urandom(3 * 1024 * 1024)  # over the 1 MiB capture limit the proxy runs with here

CORPUS: dict[str, Canned] = {
    "sse-chunked": Canned("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")],
                          SSE_BODY, "chunked", pause=0.01),
    "sse-close-framed": Canned("200 OK", [("Content-Type", "text/event-stream")], SSE_BODY, "close"),
    "sse-gzip-chunked": Canned("200 OK", [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")],
                               gzip_stream(SSE_BODY), "chunked", pause=0.01),
    "sse-garbage-lines": Canned("200 OK", [("Content-Type", "text/event-stream")],
                                sse(chunk_event("a"), garbage=b"::::\nnot a field\n\xff\xfe\ndata: {broken\n\n"),
                                "chunked"),
    "json": Canned("200 OK", [("Content-Type", "application/json"), ("X-Request-Id", "req_1")], [COMPLETION]),
    "json-gzip": Canned("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                        [gzip.compress(COMPLETION)]),
    "json-br": Canned("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "br")],
                      [brotli.compress(COMPLETION)]),
    "json-zstd": Canned("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "zstd")],
                        [zstandard.ZstdCompressor().compress(COMPLETION)]),
    "gzip-corrupt": Canned("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                           [b"\x1f\x8b\x08\x00garbage-not-deflate" * 10]),
    "zstd-corrupt-stream": Canned("200 OK", [("Content-Type", "text/event-stream"), ("Content-Encoding", "zstd")],
                                  [b"\x28\xb5\x2f\xfd garbage", b"more garbage"], "chunked"),
    "http-429": Canned("429 Too Many Requests", [("Content-Type", "application/json"), ("Retry-After", "7")],
                       [b'{"error":{"type":"rate_limit_error","message":"slow down"}}']),
    "http-500-html": Canned("500 Internal Server Error", [("Content-Type", "text/html")],
                            [b"<html><body>oops</body></html>"]),
    "http-401-empty": Canned("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="x"')], [b""]),
    "malformed-json": Canned("200 OK", [("Content-Type", "application/json")], [b'{"choices": [ {"index": 0,']),
    "invalid-utf8": Canned("200 OK", [("Content-Type", "application/json; charset=utf-8")],
                           [b'{"text": "\xc3\x28\xa0\xa1\xff"}']),
    "binary-octets": Canned("200 OK", [("Content-Type", "application/octet-stream")], [os.urandom(70_000)]),
    "big-over-capture-limit": Canned("200 OK", [("Content-Type", "application/json")],
                                     [BIG[i:i + 65536] for i in range(0, len(BIG), 65536)], "chunked"),
    "empty-200": Canned("200 OK", [("Content-Type", "application/json")], [b""]),
    "no-content-204": Canned("204 No Content", [("X-Empty", "yes")], [], "none"),
    "odd-headers": Canned("200 OK", [("Content-Type", "application/json"), ("Set-Cookie", "a=1; Path=/"),
                                     ("Set-Cookie", "b=2; Path=/"), ("X-Mixed-CASE", "Value With  Spaces"),
                                     ("X-Dup", "one"), ("X-Dup", "two"), ("X-Empty-Value", "")], [b"{}"]),
}


class Replay(RawServer):
    """Raw HTTP/1.1 upstream: the request path picks the canned response; request bodies are recorded."""

    def __init__(self, corpus: dict[str, Canned] | None = None) -> None:
        self.corpus = CORPUS if corpus is None else corpus
        self.bodies: list[tuple[str, bytes]] = []
        self.heads: list[tuple[str, list[tuple[str, str]]]] = []  # (path, headers as sent) per request
        super().__init__(backlog=64)

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            line = f.readline().decode()
            if not line:
                return
            path = line.split()[1]
            headers: dict[str, str] = {}
            raw_headers: list[tuple[str, str]] = []
            while (h := f.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
                raw_headers.append((k.strip(), v.strip()))
            self.heads.append((path, raw_headers))
            body = f.read(int(headers.get("content-length", "0")))
            self.bodies.append((path, body))
            c = self.corpus[next(seg for seg in path.split("?")[0].split("/") if seg in self.corpus)]
            head = [f"HTTP/1.1 {c.status}".encode()]
            head += [f"{k}: {v}".encode() for k, v in c.headers]
            body_len = sum(len(p) for p in c.parts)
            if c.framing == "length":
                head.append(f"Content-Length: {body_len}".encode())
            elif c.framing == "chunked":
                head.append(b"Transfer-Encoding: chunked")
            head.append(b"Connection: close")
            conn.sendall(b"\r\n".join(head) + b"\r\n\r\n")
            for p in c.parts:
                if c.pause:
                    time.sleep(c.pause)
                if c.framing == "chunked":
                    if p:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(p), p))
                else:
                    conn.sendall(p)
            if c.extra.get("cut"):  # a chunk announced but never completed, then the connection drops
                conn.sendall(b"100\r\n" + c.extra["cut"].encode())
            elif c.framing == "chunked":
                conn.sendall(b"0\r\n\r\n")



@pytest.fixture(scope="module")
def replay():  # type: ignore[no-untyped-def]
    r = Replay()
    yield r
    r.close()


@pytest.fixture
def proxy(replay: Replay, proxy_process):  # type: ignore[no-untyped-def]
    return proxy_process(routes={"up": replay.url}, args=["--idle-timeout", "0.5"],
                         env={"NEATLOGS_PROXY_MAX_CAPTURE_BYTES": str(1024 * 1024)})


def fetch(url: str, body: bytes) -> tuple[int, list[tuple[str, str]], str, int]:
    with httpx.Client(timeout=20) as c, c.stream("POST", url, content=body, headers={
            "content-type": "application/json", "accept-encoding": "gzip, br, zstd", "x-session-id": "ses_bytes"}) as r:
        h = hashlib.sha256()
        n = 0
        for chunk in r.iter_raw():
            h.update(chunk)
            n += len(chunk)
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in r.headers.raw]
        return r.status_code, [(k, v) for k, v in headers if k not in HOP_BY_HOP], h.hexdigest(), n


REQUEST = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "bytes ✓"}]}).encode()


def test_every_response_reaches_the_client_byte_exact(replay: Replay, proxy, tmp_path: Path) -> None:
    mismatches = []
    for name in CORPUS:
        direct = fetch(f"{replay.url}/v1/{name}", REQUEST)
        proxied = fetch(f"{proxy.url}/up/v1/{name}", REQUEST)
        if direct != proxied:
            mismatches.append((name, direct, proxied))
    assert not mismatches, "\n".join(f"{n}:\n  direct  {d}\n  proxied {p}" for n, d, p in mismatches)
    # The upstream received the same request bytes both ways.
    by_path: dict[str, set[bytes]] = {}
    for path, body in replay.bodies:
        by_path.setdefault(path.rsplit("/", 1)[-1], set()).add(body)
    assert all(bodies == {REQUEST} for bodies in by_path.values())
    # Every exchange was recorded, none broke the proxy.
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200

    def recorded() -> int:
        db = sqlite3.connect(f"file:{proxy.data_dir / 'traces.db'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM spans WHERE name LIKE 'opencode.llm.%'").fetchone()[0]
        finally:
            db.close()

    wait_until(lambda: recorded() == len(CORPUS), timeout=20, message="one LLM span per exchange")


def test_routes_rewrite_host_and_path_and_strip_only_our_headers(replay: Replay, proxy_process) -> None:
    """A route with a base path (like OpenRouter's /api): the upstream gets the route's host in `Host`,
    the base path + the rest of the path + the query, every header the client sent except ours."""
    proxy = proxy_process(routes={"base": replay.url + "/api"}, args=["--idle-timeout", "0.5"])
    before = len(replay.heads)
    with httpx.Client(timeout=20) as c:
        r = c.post(f"{proxy.url}/base/v1/json?beta=true&key=k%20x", content=b"{}", headers={
            "content-type": "application/json", "x-session-id": "ses_route", "x-neatlogs-agent": "build",
            "X-Custom-Header": "kept", "authorization": "Bearer sk-upstream"})
    assert r.status_code == 200
    (path, headers), = replay.heads[before:]
    assert path == "/api/v1/json?beta=true&key=k%20x"
    host = [v for k, v in headers if k.lower() == "host"]
    assert host == [f"127.0.0.1:{replay.port}"]
    names = [k.lower() for k, _ in headers]
    assert not [n for n in names if n.startswith("x-neatlogs-")]
    assert {"x-session-id", "x-custom-header", "authorization", "content-type"} <= set(names)
    assert ("X-Custom-Header", "kept") in headers  # name case and value as sent


@pytest.mark.parametrize("body", [
    b"\x00\x01\x02\xff binary request \xc3\x28",
    b"",
    json.dumps({"messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode(),  # streamed upstream
], ids=["binary", "empty", "3mb-json"])
def test_request_bodies_reach_the_upstream_byte_exact(body: bytes, replay: Replay, proxy) -> None:
    before = len(replay.bodies)
    status, _, _, _ = fetch(f"{proxy.url}/up/v1/json", body)
    assert status == 200
    assert replay.bodies[before:] == [("/v1/json", body)]
