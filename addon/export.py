"""Queueing: spans go to the local store and the durable spool at once; a thread drains the spool.

The pipeline thread calls `submit` (two SQLite writes, no network). The exporter thread batches
spool rows per destination key, keeps only the newest version of a re-exported span, POSTs, and
acknowledges on 2xx. Retryable failures back off exponentially with jitter, honouring Retry-After;
refusals (401, other 4xx) are logged once per episode and the rows kept in the dead-letter table.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time

from addon import otlp
from addon.spans import Span
from addon.spool import Row, Spool
from addon.store import LocalStore
from addon.transport import OTLPTransport, Outcome

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_value(v: object) -> object:
    """What OTLP, SQLite and the spool's JSON can all carry: int64, finite doubles, valid UTF-8."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if -INT64 <= v < INT64 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        if v.isascii():  # no copy; only non-ASCII text can hold a lone surrogate
            return v
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a "\udcff" JSON escape
            return _SURROGATE.sub("\ufffd", v)
        return v
    if isinstance(v, list):
        return [_clean_value(x) for x in v]
    return v


def sanitize(spans: list[Span]) -> list[Span]:
    """Make sure one odd value (absurd number, broken text) can never poison a whole export batch."""
    for s in spans:
        for k, v in list(s.attributes.items()):
            c = _clean_value(v)
            if c is not v:
                s.attributes[k] = c  # type: ignore[assignment]
        for field in ("name", "status_message"):
            val = getattr(s, field)
            c = _clean_value(val)
            if c is not val:
                setattr(s, field, c)
    return spans


class Exporter:
    def __init__(self, store: LocalStore, spool: Spool | None, transport: OTLPTransport | None,
                 workflow_name: str, default_key: str | None, stats: dict[str, int] | None = None) -> None:
        self.store = store
        self.spool = spool
        self.transport = transport
        self.workflow = workflow_name
        self.default_key = default_key
        self.stats = stats if stats is not None else {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0
        self._refused: set[tuple[str | None, int | None]] = set()
        self._thread = threading.Thread(target=self._run, name="neatlogs-exporter", daemon=True)

    # ---- producer side (pipeline thread) ----

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, spans: list[Span], dest_key: str | None) -> None:
        """Never raises: a failure here is logged and counted, the caller (capture) carries on."""
        try:
            sanitize(spans)
        except Exception as exc:  # pragma: no cover - defensive
            log.warning("span sanitizing failed: %s", exc)
        try:
            self.store.upsert(spans)
        except Exception as exc:  # the local copy is best effort; the spool is what must not fail
            self.stats["store_errors"] = self.stats.get("store_errors", 0) + 1
            log.warning("local store write failed: %s", exc)
        key = dest_key or self.default_key
        if self.spool is None or self.transport is None or key is None:
            return
        try:
            self.spool.put(spans, dest_key)
        except Exception as exc:
            self.stats["spool_errors"] = self.stats.get("spool_errors", 0) + 1
            self.stats["spans_lost"] = self.stats.get("spans_lost", 0) + len(spans)
            log.error("spool write failed, %d spans will not be exported: %s", len(spans), exc)
            return
        if self.spool.dropped:
            self.stats["spool_dropped"] = self.spool.dropped
        self._wake.set()

    # ---- consumer side ----

    def start(self) -> None:
        if self.spool is not None and self.transport is not None:
            if self.spool.depth:
                log.info("resuming delivery of %d spooled spans", self.spool.depth)
                self._wake.set()  # start at once, not at the first poll
            self._thread.start()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if delay:
                self._stop.wait(delay)
                if self._stop.is_set():
                    break
            else:
                self._wake.wait(1.0)
            self._wake.clear()
            try:
                delay = self.drain_once()
            except Exception:  # a bug or a broken spool must not end delivery for good
                self._failures += 1
                self.stats["export_errors"] = self.stats.get("export_errors", 0) + 1
                log.exception("export attempt failed unexpectedly; spans stay in the spool")
                delay = self._backoff()

    def _backoff(self) -> float:
        """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... up to BACKOFF_MAX, each scaled by 0.5-1."""
        backoff = min(BACKOFF_BASE * 2 ** max(self._failures - 1, 0), BACKOFF_MAX)
        return backoff * (0.5 + random.random() / 2)

    def drain_once(self, deadline: float | None = None) -> float:
        """Send what the spool holds; returns the delay before the next attempt (0 = as soon as woken).

        With a `deadline` (time.monotonic()) it stops taking new batches once it has passed.
        """
        assert self.spool is not None and self.transport is not None
        while deadline is None or time.monotonic() < deadline:
            rows = self.spool.take()
            if not rows:
                return 0.0
            for dest, group in _by_dest(rows).items():
                left = None if deadline is None else max(deadline - time.monotonic(), 0.5)
                try:
                    out = self._send(dest, group, left)
                except _Unencodable:
                    group = self._set_aside_unencodable(group)
                    if not group:
                        continue
                    out = self._send(dest, group, left)
                if out.ok:
                    if self._failures:
                        log.info("export recovered after %d failed attempts", self._failures)
                    self._failures = 0
                    self._refused.discard((dest, None))
                    self.spool.ack([r.seq for r in group])
                    self.stats["spans_exported"] = self.stats.get("spans_exported", 0) + len(group)
                elif out.retry:
                    self._failures += 1
                    self.stats["export_failures"] = self.stats.get("export_failures", 0) + 1
                    delay = max(out.retry_after or 0.0, self._backoff())
                    if self._failures == 1 or self._failures % 20 == 0:
                        log.warning("export to Neatlogs failed (%s); %d spans kept in the spool, retrying in "
                                    "%.1fs", out.message or f"HTTP {out.status}", self.spool.depth, delay)
                    return delay
                else:
                    self.stats["export_refused"] = self.stats.get("export_refused", 0) + len(group)
                    if (dest, out.status) not in self._refused:
                        self._refused.add((dest, out.status))
                        hint = " (check NEATLOGS_API_KEY)" if out.status in (401, 403) else ""
                        log.error("Neatlogs refused %d spans with HTTP %s%s: %s; they are kept in the "
                                  "spool's dead-letter table", len(group), out.status, hint, out.message)
                    self.spool.bury(group, f"HTTP {out.status}: {out.message}")
        return 0.0

    def _send(self, dest: str | None, rows: list[Row], timeout: float | None = None) -> Outcome:
        assert self.transport is not None
        key = dest or self.default_key
        if key is None:
            return Outcome(False, status=None, message="no Neatlogs API key for these spans")
        latest: dict[str, Span] = {}
        for r in rows:  # rows are in seq order: the last version of a re-exported span wins
            latest[r.span.span_id] = r.span
        try:
            body = otlp.encode(latest.values(), self.workflow)
        except Exception as exc:
            raise _Unencodable(str(exc)) from exc
        if timeout is None:
            return self.transport.send(body, key)
        return self.transport.send(body, key, timeout=timeout)

    def _set_aside_unencodable(self, rows: list[Row]) -> list[Row]:
        """A span OTLP can't carry must not block the queue: dead-letter it, keep the others."""
        good, bad = [], []
        for r in rows:
            try:
                otlp.encode([r.span], self.workflow)
                good.append(r)
            except Exception:
                bad.append(r)
        if bad:
            self.stats["export_unencodable"] = self.stats.get("export_unencodable", 0) + len(bad)
            log.error("%d spans cannot be encoded as OTLP; moved to the spool's dead-letter table", len(bad))
            self.spool.bury(bad, "cannot be encoded as OTLP")  # type: ignore[union-attr]
        return good

    def stop(self, timeout: float) -> None:
        """Stop the thread, then one last delivery attempt within the deadline (no retries).

        Whatever is not acknowledged by then stays in the spool and is delivered after the next start.
        """
        deadline = time.monotonic() + max(timeout, 0.1)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.spool is None or self.transport is None:
            return
        if self._thread.is_alive():  # stuck in a slow POST: don't race it, the spool keeps everything
            log.info("export still in progress at shutdown; unacknowledged spans stay in the spool")
            return
        if self.spool.depth and time.monotonic() < deadline:
            try:
                self.drain_once(deadline)
            except Exception as exc:
                log.warning("final flush failed: %s", exc)
        if self.spool.depth:
            log.info("%d spans stay in the spool for the next start", self.spool.depth)


class _Unencodable(Exception):
    pass


def _by_dest(rows: list[Row]) -> dict[str | None, list[Row]]:
    out: dict[str | None, list[Row]] = {}
    for r in rows:
        out.setdefault(r.dest, []).append(r)
    return out
