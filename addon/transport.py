"""OTLP/HTTP transport: one POST, classified into ok / retry (with a delay hint) / fatal.

Retry policy (which statuses, Retry-After) lives here; backoff timing and queueing live in the
exporter; encoding lives in `addon.otlp`.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

from proxy import __version__

RETRYABLE = {408, 429, 500, 502, 503, 504}
USER_AGENT = f"neatlogs-opencode-proxy/{__version__}"


@dataclass(slots=True)
class Outcome:
    ok: bool
    retry: bool = False
    retry_after: float | None = None
    status: int | None = None
    message: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds, or an HTTP date; None when absent or unreadable. Capped to 5 minutes."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        secs = when - (now or time.time())
    return min(max(secs, 0.0), 300.0)


class OTLPTransport:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.client = httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT})

    def send(self, body: bytes, api_key: str, timeout: float | None = None) -> Outcome:
        headers = {"Content-Type": "application/x-protobuf", "x-api-key": api_key}
        try:
            if timeout is None:
                r = self.client.post(self.url, content=body, headers=headers)
            else:
                r = self.client.post(self.url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return Outcome(False, retry=True, message=f"{type(exc).__name__}: {exc}")
        if 200 <= r.status_code < 300:
            return Outcome(True, status=r.status_code)
        msg = r.text[:300].strip()
        if r.status_code in RETRYABLE or r.status_code >= 500:
            return Outcome(False, retry=True, retry_after=parse_retry_after(r.headers.get("retry-after")),
                           status=r.status_code, message=msg)
        return Outcome(False, status=r.status_code, message=msg)

    def close(self) -> None:
        self.client.close()
