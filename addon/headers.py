"""Header hygiene shared by capture and routing: which headers are secrets, which are ours."""

from __future__ import annotations

import re
from collections.abc import Iterable

from addon.model import Exchange

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
    "set-cookie", "x-neatlogs-api-key", "x-neatlogs-gateway-token", "openai-organization",
    "x-goog-user-project",
})
OUR_PREFIX = "x-neatlogs-"
OUR_PREFIX_B = OUR_PREFIX.encode()
HINT_HEADERS = ("x-session-id", "x-session-affinity", "x-parent-session-id")
_SECRET_NAME = re.compile(r"(?i)auth|api-?key|token|secret|passw|cookie|credential|signature")
_SECRET_QUERY = re.compile(r"(?i)\b(key|api_key|apikey|token|access_token)=([^&]*)")


def safe_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased headers without credentials: what capture may keep."""
    out = {}
    for k, v in items:
        name = k.lower()
        if name not in SECRET_HEADERS and not _SECRET_NAME.search(name):
            out[name] = v
    return out


def redact_query(query: str) -> str:
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=[REDACTED]", query)


def decode_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """mitmproxy's raw header fields as text pairs (done on the pipeline thread, not the event loop)."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fields]


def hints(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Correlation headers: opencode's session headers and everything the plugin adds (x-neatlogs-*)."""
    return {k.lower(): v for k, v in items if k.lower().startswith(OUR_PREFIX) or k.lower() in HINT_HEADERS}


def unpack(ex: Exchange) -> None:
    """Fill an exchange's header record and correlation hints from the raw fields the tap kept, and mask
    credentials in its query (`?key=`)."""
    ex.query = redact_query(ex.query)
    if ex.raw_request_fields is not None:
        items = decode_fields(ex.raw_request_fields)
        ex.request_headers = safe_headers(items)
        h = hints(items)
        ex.session_id = h.get("x-session-id") or h.get("x-session-affinity") or h.get("x-neatlogs-session-id")
        ex.parent_session_id = h.get("x-parent-session-id")
        ex.agent = h.get("x-neatlogs-agent")
        ex.neatlogs_api_key = h.get("x-neatlogs-api-key")
        ex.raw_request_fields = None
    if ex.raw_response_fields is not None:
        ex.response_headers = safe_headers(decode_fields(ex.raw_response_fields))
        ex.raw_response_fields = None
