"""The durable spool and the exporter: persistence, bounds, drop policy, retry classification, backoff."""

from __future__ import annotations

import email.utils
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from addon.export import BACKOFF_MAX, Exporter
from addon.spans import Span, new_span_id, trace_id_for
from addon.spool import Spool
from addon.store import LocalStore
from addon.transport import OTLPTransport, Outcome, parse_retry_after
from tests.fakes.fake_collector import FakeCollector
from tests.fakes.util import wait_until


def span(name: str = "opencode.llm.m", span_id: str | None = None, size: int = 0, session: str = "ses_a") -> Span:
    return Span(trace_id=trace_id_for(session), span_id=span_id or new_span_id(), name=name, start_ns=1,
                end_ns=2, attributes={"blob": "x" * size} if size else {}, session_id=session)


class ScriptedTransport:
    """Stands in for OTLPTransport: answers with the scripted outcomes, then ok; records every body."""

    def __init__(self, outcomes: list[Outcome | Exception] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.calls: list[tuple[bytes, str, float]] = []
        self.lock = threading.Lock()

    def send(self, body: bytes, api_key: str, timeout: float | None = None) -> Outcome:
        with self.lock:
            self.calls.append((body, api_key, time.monotonic()))
            nxt = self.outcomes.pop(0) if self.outcomes else Outcome(True, status=200)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    def close(self) -> None:
        pass


# --- spool ---------------------------------------------------------------------------------------


def test_spool_survives_a_crash_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, 10 * 2**20)
    spans = [span(f"s{i}") for i in range(5)]
    spool.put(spans[:3], None)
    spool.put(spans[3:], "user-key")
    # No close(): a kill -9 leaves the WAL as is. A second process opening the file sees every row.
    again = Spool(path, 10 * 2**20)
    rows = again.take()
    assert [r.span.name for r in rows] == [f"s{i}" for i in range(5)]
    assert [r.dest for r in rows] == [None, None, None, "user-key", "user-key"]
    assert again.depth == 5 and again.bytes == spool.bytes
    again.ack([rows[0].seq, rows[1].seq])
    assert [r.span.name for r in Spool(path, 10 * 2**20).take()] == ["s2", "s3", "s4"]


def test_spool_take_respects_limits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 100 * 2**20)
    spool.put([span(size=1000) for _ in range(10)], None)
    assert len(spool.take(limit=3)) == 3
    assert len(spool.take(max_bytes=2500)) == 2
    assert len(spool.take(max_bytes=10)) == 1  # always at least one row, however big


def test_spool_drops_oldest_when_full_and_logs_once_per_episode(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool.db", 50_000)
    caplog.set_level(logging.INFO, logger="addon.spool")
    names = [f"s{i}" for i in range(40)]
    for n in names:
        spool.put([span(n, size=4000)], None)
    assert spool.bytes <= 50_000
    assert spool.dropped > 0
    kept = [r.span.name for r in spool.take(limit=1000)]
    assert kept == names[-len(kept):]  # the newest survive, in order
    assert spool.depth == len(kept) and spool.dropped + len(kept) == len(names)
    full = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert len(full) == 1  # one episode, one log line
    # Drain below the limit: the episode ends (logged), and a new one logs again.
    spool.ack([r.seq for r in spool.take(limit=1000)])
    spool.put([span("after")], None)
    assert any("below its limit again" in r.getMessage() for r in caplog.records)
    for i in range(40):
        spool.put([span(f"t{i}", size=4000)], None)
    assert len([r for r in caplog.records if "spool full" in r.getMessage()]) == 2


def test_the_spool_is_never_over_its_limit_as_another_reader_sees_it(tmp_path: Path) -> None:
    """Dropping the oldest happens in the transaction that added the newest: a reader (or a crash)
    between two statements never finds the spool over its limit."""
    spool = Spool(tmp_path / "spool.db", 50_000)
    reader = sqlite3.connect(tmp_path / "spool.db")
    seen: list[int] = []
    spool.db.set_trace_callback(
        lambda _stmt: seen.append(reader.execute("SELECT COALESCE(SUM(size), 0) FROM spool").fetchone()[0]))
    for i in range(40):
        spool.put([span(f"s{i}", size=4000)], None)
    spool.db.set_trace_callback(None)
    reader.close()
    assert spool.dropped > 0 and len(seen) > 80
    assert max(seen) <= 50_000


def test_a_failed_put_leaves_the_spool_and_its_counters_as_they_were(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 50_000)
    for i in range(10):
        spool.put([span(f"s{i}", size=4000)], None)
    before = (spool.bytes, spool.depth, spool.dropped)
    assert before[2] == 0
    spool.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON spool WHEN NEW.span_id = 'badbadbadbadbad0' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        spool.put([span("ok", size=4000), span("x", span_id="badbadbadbadbad0")], None)
    assert (spool.bytes, spool.depth, spool.dropped) == before
    assert [r.span.name for r in spool.take(limit=100)] == [f"s{i}" for i in range(10)]
    spool.put([span("after", size=10)], None)  # no transaction left open
    assert spool.depth == 11


def test_unreadable_rows_are_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 10 * 2**20)
    spool.put([span("good1")], None)
    spool.db.execute("INSERT INTO spool(dest, span_id, payload, size, created) VALUES (NULL,'x','{not json',9,0)")
    spool.put([span("good2")], None)
    assert [r.span.name for r in spool.take()] == ["good1", "good2"]
    assert spool.dead_count() == 1
    assert spool.depth == 2


# --- exporter ------------------------------------------------------------------------------------


def make_exporter(tmp_path: Path, transport: object, key: str | None = "k") -> tuple[Exporter, Spool, dict]:
    stats: dict[str, int] = {}
    spool = Spool(tmp_path / "spool.db", 10 * 2**20)
    store = LocalStore(tmp_path / "traces.db")
    return Exporter(store, spool, transport, "opencode", key, stats), spool, stats  # type: ignore[arg-type]


def test_spans_are_spooled_before_any_export_attempt(tmp_path: Path) -> None:
    t = ScriptedTransport()
    exp, spool, _ = make_exporter(tmp_path, t)
    exp.submit([span(), span()], None)  # exporter thread not started: nothing is sent, all is spooled
    assert spool.depth == 2 and t.calls == []
    assert exp.drain_once() == 0.0
    assert spool.depth == 0 and len(t.calls) == 1 and t.calls[0][1] == "k"


def test_retryable_failures_keep_spans_and_honour_retry_after(tmp_path: Path) -> None:
    t = ScriptedTransport([Outcome(False, retry=True, retry_after=7.0, status=429),
                           Outcome(False, retry=True, status=503), Outcome(False, retry=True, message="refused")])
    exp, spool, stats = make_exporter(tmp_path, t)
    exp.submit([span()], None)
    assert exp.drain_once() >= 7.0  # Retry-After wins over a shorter backoff
    d2 = exp.drain_once()
    d3 = exp.drain_once()
    assert spool.depth == 1 and stats["export_failures"] == 3
    assert 0 < d2 <= 1.0 and 0 < d3 <= 2.0  # 0.5 s * 2^(n-1), jittered down to half
    assert exp.drain_once() == 0.0 and spool.depth == 0 and stats["spans_exported"] == 1


def test_backoff_is_exponential_capped_and_jittered(tmp_path: Path) -> None:
    exp, _, _ = make_exporter(tmp_path, ScriptedTransport())
    seen = []
    for n in range(1, 12):
        exp._failures = n
        seen.append(exp._backoff())
    assert all(0 < d <= BACKOFF_MAX for d in seen)
    assert seen[-1] >= BACKOFF_MAX / 2
    assert len({round(exp._backoff(), 6) for _ in range(20)}) > 1  # jitter


def test_refusals_are_dead_lettered_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="addon.export")
    t = ScriptedTransport([Outcome(False, status=401, message="bad key"), Outcome(False, status=401, message="bad")])
    exp, spool, stats = make_exporter(tmp_path, t)
    exp.submit([span()], None)
    exp.drain_once()
    exp.submit([span()], None)
    exp.drain_once()
    assert spool.depth == 0 and spool.dead_count() == 2 and stats["export_refused"] == 2
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(logged) == 1 and "NEATLOGS_API_KEY" in logged[0]


def test_only_the_newest_version_of_a_reexported_span_is_sent(tmp_path: Path) -> None:
    t = ScriptedTransport()
    exp, _, _ = make_exporter(tmp_path, t)
    sid = new_span_id()
    exp.submit([span("v1", span_id=sid)], None)
    exp.submit([span("v2", span_id=sid), span("other")], None)
    exp.drain_once()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    msg = ExportTraceServiceRequest()
    msg.ParseFromString(t.calls[0][0])
    names = [s.name for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == ["other", "v2"]


def test_exporter_thread_survives_transport_exceptions(tmp_path: Path) -> None:
    t = ScriptedTransport([RuntimeError("boom")])
    exp, spool, stats = make_exporter(tmp_path, t)
    exp.start()
    try:
        exp.submit([span()], None)
        wait_until(lambda: spool.depth == 0, timeout=10, message="delivery after an unexpected error")
        assert stats["export_errors"] == 1 and len(t.calls) == 2
    finally:
        exp.stop(2)


def test_submit_never_raises_when_the_spool_is_broken(tmp_path: Path) -> None:
    exp, spool, stats = make_exporter(tmp_path, ScriptedTransport())
    spool.db.close()
    exp.submit([span()], None)
    assert stats["spool_errors"] == 1 and stats["spans_lost"] == 1
    # The local copy still happened.
    assert exp.store.db.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == 1


def test_no_key_means_local_store_only(tmp_path: Path) -> None:
    t = ScriptedTransport()
    exp, spool, _ = make_exporter(tmp_path, t, key=None)
    exp.submit([span()], None)
    assert spool.depth == 0
    exp.submit([span()], "per-user")  # a per-user key still exports
    assert spool.depth == 1


def test_stop_leaves_unacknowledged_spans_in_the_spool(tmp_path: Path) -> None:
    t = ScriptedTransport([Outcome(False, retry=True, status=503)] * 100)
    exp, spool, _ = make_exporter(tmp_path, t)
    exp.start()
    exp.submit([span(), span()], None)
    wait_until(lambda: t.calls, timeout=5)
    t0 = time.monotonic()
    exp.stop(1.0)
    assert time.monotonic() - t0 < 5
    assert spool.depth == 2


# --- transport (real HTTP against the fake collector) ---------------------------------------------


def test_transport_classifies_collector_answers() -> None:
    with FakeCollector() as col:
        tr = OTLPTransport(col.url + "/v1/traces", timeout=5)
        col.fail_next(429, retry_after=3)
        out = tr.send(b"", "k")
        assert (out.ok, out.retry, out.retry_after, out.status) == (False, True, 3.0, 429)
        col.fail_next(503)
        assert tr.send(b"", "k").retry
        col.fail_next(401)
        out = tr.send(b"", "k")
        assert (out.ok, out.retry, out.status) == (False, False, 401)
        assert tr.send(b"", "k").ok
        col.down()
        out = tr.send(b"", "k")
        assert out.retry and not out.ok and "ConnectError" in out.message
        tr.close()


def test_transport_timeout_is_retryable() -> None:
    with FakeCollector() as col:
        col.delay = 1.0
        tr = OTLPTransport(col.url + "/v1/traces", timeout=0.2)
        out = tr.send(b"", "k")
        assert out.retry and "Timeout" in out.message
        tr.close()


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("  2.5 ") == 2.5
    assert parse_retry_after("100000") == 300.0  # capped
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    now = time.time()
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8 <= (parse_retry_after(date, now) or 0) <= 11


def test_spool_file_is_private(tmp_path: Path) -> None:
    Spool(tmp_path / "spool.db", 2**20)
    assert (tmp_path / "spool.db").stat().st_mode & 0o077 == 0
    assert sqlite3.connect(tmp_path / "spool.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_odd_values_cannot_poison_an_export_batch(tmp_path: Path) -> None:
    t = ScriptedTransport()
    exp, spool, _ = make_exporter(tmp_path, t)
    bad = span("bad\udcff")
    bad.attributes.update({"huge": 10**30, "neg": -(10**40), "nan": float("nan"), "text": "x\udcffy",
                           "list": ["ok", "\ud800"]})
    exp.submit([bad, span("fine")], None)
    assert exp.drain_once() == 0.0 and spool.depth == 0 and len(t.calls) == 1
    a = exp.store.trace_spans("ses_a")
    got = {s.name: s for s in a}
    assert set(got) == {"bad\ufffd", "fine"}
    attrs = got["bad\ufffd"].attributes
    assert attrs["huge"] == str(10**30) and attrs["nan"] == "nan" and attrs["text"] == "x\ufffdy"


def test_an_unencodable_span_is_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    t = ScriptedTransport()
    exp, spool, stats = make_exporter(tmp_path, t)
    spool.put([span("fine1"), span("poison"), span("fine2")], None)
    import addon.otlp as otlp

    real = otlp.encode

    def picky(spans, workflow):  # type: ignore[no-untyped-def]
        spans = list(spans)
        if any(s.name == "poison" for s in spans):
            raise ValueError("cannot encode")
        return real(spans, workflow)

    otlp.encode = picky  # type: ignore[assignment]
    try:
        assert exp.drain_once() == 0.0
    finally:
        otlp.encode = real  # type: ignore[assignment]
    assert spool.depth == 0 and spool.dead_count() == 1 and stats["export_unencodable"] == 1
    assert stats["spans_exported"] == 2
