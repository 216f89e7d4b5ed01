"""JSON error answers: what the proxy says when it cannot complete an exchange itself.

Our clients are LLM SDKs that display `{"error": {"type", "message"}}`, never an HTML page.
"""

from __future__ import annotations

import json
import re

from mitmproxy import http, version
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError

from addon.capture import route_of

# ---- JSON error answers -------------------------------------------------------------------------
# When mitmproxy itself cannot complete an exchange (upstream unreachable, upstream answered garbage,
# malformed request from the client) its HTTP/1 server layer writes an HTML page built by
# `_http1.make_error_response(status, message)`, after the `error` hook, and no hook can replace it.
# Our clients are LLM SDKs that display `{"error": {"type", "message"}}`, so we install two small
# patches at bootstrap:
#   1. `_http1.make_error_response` renders that JSON shape instead of HTML (every caller: malformed
#      request heads, protocol errors);
#   2. `Http1Server.send` handles `ResponseProtocolError` itself for routed requests, exactly like the
#      original (same status, then close), but with the route's name and URL in the answer. The
#      route is looked up from the request object the server layer shares with the flow
#      (`addon.capture.ROUTE_OF`, filled in the `requestheaders` hook).
# Both are idempotent and only change the bytes of the error answer, never when one is sent.

ERROR_TYPES = {
    ErrorCode.CONNECT_FAILED: "upstream_unreachable",
    ErrorCode.GENERIC_SERVER_ERROR: "upstream_error",
    ErrorCode.RESPONSE_VALIDATION_FAILED: "invalid_upstream_response",
    ErrorCode.RESPONSE_TOO_LARGE: "upstream_response_too_large",
    ErrorCode.REQUEST_TOO_LARGE: "request_too_large",
    ErrorCode.GENERIC_CLIENT_ERROR: "invalid_request",
    ErrorCode.REQUEST_VALIDATION_FAILED: "invalid_request",
    ErrorCode.DESTINATION_UNKNOWN: "invalid_request",
}
_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


def _plain(message: str) -> str:
    """`[Errno 111] Connection refused` → `connection refused`."""
    text = _ERRNO.sub("", message.strip()) or "unknown error"
    return text[0].lower() + text[1:] if text[:2] != text[:2].upper() else text


def json_error_bytes(status: int, message: str, etype: str | None = None, route=None) -> bytes:  # type: ignore[no-untyped-def]
    """A complete HTTP/1 error answer (head + JSON body), closing the connection."""
    if etype is None:
        etype = "invalid_request" if status < 500 else "upstream_error"
    error: dict[str, object] = {"type": etype, "message": message}
    if route is not None:
        hint = ""
        if etype == "upstream_unreachable":
            hint = (" (does the upstream use a private CA? trust it with --upstream-ca / NEATLOGS_PROXY_UPSTREAM_CA)"
                    if "certificate" in message.lower() else " (is the upstream running and the route URL right?)")
        error["message"] = f"route {route.name!r} ({route.url}): {_plain(message)}{hint}"
        error["route"] = route.name
    resp = http.Response.make(status, json.dumps({"error": error}).encode(),
                              {"Server": f"neatlogs-proxy (mitmproxy {version.VERSION})", "Connection": "close",
                               "Content-Type": "application/json"})
    return http1.assemble_response(resp)


def error_answer(code: ErrorCode, message: str, request: http.Request | None) -> bytes | None:
    """What a client gets when its exchange fails before any answer began; None: the connection is
    only closed. The same bytes on both HTTP paths (mitmproxy's, patched below, and proxy.fastpath)."""
    status = code.http_status_code()
    if status is None:
        return None
    route = route_of(request)
    if route is None:
        return json_error_bytes(status, message)
    return json_error_bytes(status, message, ERROR_TYPES.get(code), route)


def install_json_errors() -> None:
    if getattr(_http1, "_neatlogs_json_errors", False):
        return
    original_send = _http1.Http1Server.send

    def make_error_response(status_code: int, message: str = "") -> bytes:
        return json_error_bytes(status_code, message)

    def send(self, event):  # type: ignore[no-untyped-def]
        if isinstance(event, ResponseProtocolError) and self.response is None and route_of(self.request):
            # Same as the original branch, with the route in the body.
            if not (self.conn.state & ConnectionState.CAN_WRITE):
                return
            body = error_answer(event.code, event.message, self.request)
            if body is not None:
                yield commands.SendData(self.conn, body)
            yield commands.CloseConnection(self.conn)
            return
        yield from original_send(self, event)

    _http1.make_error_response = make_error_response
    _http1.Http1Server.send = send  # type: ignore[method-assign]
    _http1._neatlogs_json_errors = True  # type: ignore[attr-defined]
