"""Header hygiene shared by capture and routing: which headers are secrets, which are ours."""

from __future__ import annotations

import re
from collections.abc import Iterable

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
    "set-cookie", "x-neatlogs-api-key", "x-neatlogs-gateway-token", "openai-organization",
    "x-goog-user-project",
})
OUR_PREFIX = "x-neatlogs-"
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
