"""Durable span queue: SQLite in WAL mode, modelled on the OpenTelemetry Collector's persistent queue.

A span is written here before any export attempt and deleted only once the backend acknowledged it,
so a crash or `kill -9` loses nothing: the next start resumes delivery. Bounded in bytes; when full
the OLDEST spans are dropped (counted, logged once per episode) so fresh sessions keep flowing.
Rows carry their destination key (per-user Neatlogs keys) and the span as JSON.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from addon.spans import Span

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  dest TEXT,
  span_id TEXT NOT NULL,
  payload TEXT NOT NULL,
  size INTEGER NOT NULL,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
  seq INTEGER PRIMARY KEY,
  dest TEXT,
  span_id TEXT NOT NULL,
  payload TEXT NOT NULL,
  reason TEXT NOT NULL,
  failed REAL NOT NULL
);
"""


@dataclass(slots=True)
class Row:
    seq: int
    dest: str | None
    span: Span


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives process crashes
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA journal_size_limit=8388608")  # truncate the WAL after checkpoints
        self.db.executescript(_SCHEMA)
        os.chmod(path, 0o600)  # rows may carry per-user API keys
        self.bytes, self.depth = self.db.execute("SELECT COALESCE(SUM(size),0), COUNT(*) FROM spool").fetchone()
        self.dropped = 0
        self._full_episode = False

    def put(self, spans: list[Span], dest: str | None) -> None:
        """Append spans; when that passes the byte limit, the oldest go in the same transaction, so
        the spool is never over its limit, not even between two statements or after a crash."""
        rows = [(dest, s.span_id, s.model_dump_json(), time.time()) for s in spans]
        with self.lock:
            before = (self.bytes, self.depth, self.dropped, self._full_episode)
            self.db.execute("BEGIN")
            try:
                for dest_, sid, payload, created in rows:
                    self.db.execute("INSERT INTO spool(dest, span_id, payload, size, created) VALUES (?,?,?,?,?)",
                                    (dest_, sid, payload, len(payload), created))
                self.bytes += sum(len(r[2]) for r in rows)
                self.depth += len(rows)
                if self.bytes > self.max_bytes:
                    self._drop_oldest()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self.bytes, self.depth, self.dropped, self._full_episode = before
                raise
            if self._full_episode and self.bytes < self.max_bytes * 0.9 and self.dropped == before[2]:
                self._full_episode = False
                log.info("spool below its limit again; %d spans were dropped while it was full", self.dropped)

    def _drop_oldest(self) -> None:
        target = int(self.max_bytes * 0.9)
        cur = self.db.execute("SELECT seq, size FROM spool ORDER BY seq")
        cut, freed, n = 0, 0, 0
        for seq, size in cur:
            if self.bytes - freed <= target:
                break
            cut, freed, n = seq, freed + size, n + 1
        self.db.execute("DELETE FROM spool WHERE seq <= ?", (cut,))
        self.bytes -= freed
        self.depth -= n
        self.dropped += n
        if not self._full_episode:
            self._full_episode = True
            log.error("spool full (%d bytes limit): dropping the oldest spans (%d so far); "
                      "is the Neatlogs endpoint reachable?", self.max_bytes, self.dropped)

    def take(self, limit: int = 512, max_bytes: int = 4 * 1024 * 1024) -> list[Row]:
        """The oldest rows, up to `limit` rows / `max_bytes` (at least one row)."""
        bad: list[tuple[int, str | None, str, str]] = []
        with self.lock:
            rows = self.db.execute("SELECT seq, dest, payload, size FROM spool ORDER BY seq LIMIT ?",
                                   (limit,)).fetchall()
            out: list[Row] = []
            total = 0
            for seq, dest, payload, size in rows:
                if out and total + size > max_bytes:
                    break
                try:
                    span = Span.model_validate_json(payload)
                except ValueError as exc:  # written by an incompatible version, or damaged: set aside
                    bad.append((seq, dest, payload, f"unreadable spool row: {exc}"[:500]))
                    continue
                total += size
                out.append(Row(seq, dest, span))
            if bad:
                self.db.execute("BEGIN")
                for seq, dest, payload, reason in bad:
                    self.db.execute("INSERT OR REPLACE INTO dead(seq, dest, span_id, payload, reason, failed) "
                                    "VALUES (?,?,?,?,?,?)", (seq, dest, "", payload, reason, time.time()))
                    self.db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
                self.db.execute("COMMIT")
                self.bytes, self.depth = self.db.execute(
                    "SELECT COALESCE(SUM(size),0), COUNT(*) FROM spool").fetchone()
        if bad:
            log.error("%d unreadable spool rows moved to the dead-letter table", len(bad))
        return out

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self.lock:
            self.db.execute("BEGIN")
            size = 0
            for chunk in _chunks(seqs, 500):
                marks = ",".join("?" * len(chunk))
                size += self.db.execute(f"SELECT COALESCE(SUM(size),0) FROM spool WHERE seq IN ({marks})",
                                        chunk).fetchone()[0]
                self.db.execute(f"DELETE FROM spool WHERE seq IN ({marks})", chunk)
            self.db.execute("COMMIT")
            self.bytes -= size
            self.depth = self.db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def bury(self, rows: list[Row], reason: str) -> None:
        """Keep rows the backend refused for good (e.g. 401) in a dead-letter table, off the queue."""
        with self.lock:
            self.db.execute("BEGIN")
            for r in rows:
                self.db.execute("INSERT OR REPLACE INTO dead(seq, dest, span_id, payload, reason, failed) "
                                "VALUES (?,?,?,?,?,?)", (r.seq, r.dest, r.span.span_id,
                                                         r.span.model_dump_json(), reason, time.time()))
            self.db.execute("COMMIT")
        self.ack([r.seq for r in rows])

    def dead_count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM dead").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _chunks(items: list[int], n: int) -> list[list[int]]:
    return [items[i:i + n] for i in range(0, len(items), n)]
