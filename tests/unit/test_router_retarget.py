"""addon.router.retarget: the short path for HTTP/1 requests gives what mitmproxy's setters give."""

from __future__ import annotations

import pytest
from mitmproxy import http

from addon.router import retarget
from proxy.routes import build_routes

ROUTES = build_routes(["plain=http://127.0.0.1:9999", "tls=https://api.example.com",
                       "base=https://openrouter.ai/api", "port=https://llm.internal:8443/v2/"], True)


def a_request(path: bytes, version: bytes = b"HTTP/1.1", authority: bytes = b"",
              host: bytes = b"127.0.0.1:9") -> http.Request:
    headers = http.Headers([(b"Host", host), (b"content-type", b"application/json"), (b"X-A", b"1")])
    return http.Request("127.0.0.1", 9, b"POST", b"http", authority, path, version, headers, b"{}", None, 0.0, None)


def with_setters(req: http.Request, route, tail: str) -> http.Request:  # type: ignore[no-untyped-def]
    req.scheme, req.host, req.port = route.scheme, route.host, route.port
    req.path = route.base_path + tail
    req.host_header = route.host_header
    return req


def state(req: http.Request) -> tuple:  # type: ignore[type-arg]
    return (req.scheme, req.host, req.port, req.path, req.authority, req.headers.fields, req.url)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("tail", ["/v1/chat/completions", "/v1/x?alt=sse&key=a%20b", "/", "/v1/ünï?q=✓"])
@pytest.mark.parametrize("kind", ["http1", "http1-absolute-form", "http2"])
def test_retarget_equals_the_setters(route: str, tail: str, kind: str) -> None:
    version = b"HTTP/2.0" if kind == "http2" else b"HTTP/1.1"
    authority = b"127.0.0.1:9" if kind != "http1" else b""
    raw = f"/{route}{tail}".encode()
    fast, slow = a_request(raw, version, authority), a_request(raw, version, authority)
    retarget(fast, ROUTES[route], tail)
    with_setters(slow, ROUTES[route], tail)
    assert state(fast) == state(slow)
