"""The benchmark helpers still run against the current code (they import the real components)."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_cpu_measures_real_capture_work() -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline_cpu.py"), "--n", "30"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    m = re.search(r"SSE \(50 events\) (\d+) µs, small JSON (\d+) µs; (\d+) spans stored", out.stdout)
    assert m, out.stdout
    sse, small, spans = map(int, m.groups())
    assert sse > 0 and small > 0
    # 460 exchanges (200 + 200 warm-up, 30 + 30 measured), one LLM span each, plus each session's root
    # span and turn marker: the pipeline really parsed, correlated and stored them.
    assert spans >= 460, out.stdout


def bench_latency() -> ModuleType:
    """bench/latency.py as a module (bench/ is not a package)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module("latency")
    finally:
        sys.path.remove(str(REPO / "bench"))


def busy_loops() -> list[int]:
    """Pids of live processes running the benchmark's busy-loop program."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"os.SCHED_IDLE" in cmd:
                pids.append(int(d.name))
    return pids


def test_busy_loops_run_at_idle_priority_and_stop() -> None:
    """The diagnostic's busy loops must never compete with real work: SCHED_IDLE while they run, gone after."""
    latency = bench_latency()
    with latency.cpus_kept_busy(2) as procs:
        assert len(procs) == 2
        assert all(os.sched_getscheduler(p.pid) == os.SCHED_IDLE for p in procs)
        assert all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    assert not set(busy_loops()) & {p.pid for p in procs}


def test_latency_bench_runs_every_phase_end_to_end() -> None:
    """A tiny run of bench/latency.py: real proxy (on both HTTP layers), bare mitmproxy, fake upstream and relay
    processes on 127.0.0.1."""
    args = ["--requests", "20", "--warmup", "5", "--idle-requests", "5", "--sse-requests", "6",
            "--sse-idle-requests", "6", "--busy-cpus-requests", "6", "--sse-warmup", "2", "--c8-seconds", "0.4",
            "--c8-batches", "2", "--sse-chunks", "5", "--sse-delay-ms", "0.2", "--no-write"]
    out = subprocess.run([sys.executable, str(REPO / "bench" / "latency.py"), *args],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for table in ("| small JSON, concurrency 1 (ms) |", "| small JSON, concurrency 8 |",
                  "| SSE, concurrency 1 (ms) |", "| SSE, concurrency 1, 20 ms idle before each call (ms) |",
                  "SCHED_IDLE busy loops (diagnostic, ms) |"):
        assert table in text, text
    assert re.search(r"^added TTFB p50 back to back that is the machine waking idle CPUs \(phase 3 minus this\): "
                     r"proxy [-+][\d.]+ ms, proxy-mitm [-+][\d.]+ ms, mitmproxy [-+][\d.]+ ms, relay [-+][\d.]+ ms$",
                     text, re.M), text
    assert re.search(r"^added stream total p50 that is the machine waking idle CPUs \(phase 3 minus this\): "
                     r"proxy [-+][\d.]+ ms, proxy-mitm [-+][\d.]+ ms, mitmproxy [-+][\d.]+ ms, relay [-+][\d.]+ ms$",
                     text, re.M), text
    assert re.search(r"^machine: .* cpuidle=\S+ ", text, re.M), text
    # Every target in every table (small JSON c1, c1 idle, c8; SSE back to back, idle, busy), and an "added"
    # row in each but the concurrency-8 one.
    for row, n in (("| bare mitmproxy (its HTTP layer, no addons) |", 6), ("| tcp relay (floor) |", 6),
                   ("| proxy on mitmproxy's HTTP layer |", 6), ("| added by mitmproxy |", 5),
                   ("| added by proxy-mitm |", 5)):
        assert text.count(row) == n, (row, text)
    phases = r"p50\): small JSON [-+][\d.]+ ms, SSE TTFB back to back [-+][\d.]+ ms, SSE TTFB 20 ms idle [-+][\d.]+ ms$"
    assert re.search(r"^what the fast HTTP layer changes \(added by proxy minus added by proxy-mitm, " + phases,
                     text, re.M), text
    assert re.search(r"^what our addons add beyond mitmproxy itself \(added by proxy-mitm minus added by bare "
                     r"mitmproxy, " + phases, text, re.M), text
    assert not busy_loops(), "the benchmark left its busy loops running"
    assert "SSE body byte-identical on every path: True" in text
    assert "capture errors: 0" in text
    targets = re.findall(r"^target (.+): (-?[\d.]+) ms <= 1\.0 ms  (PASS|MISS)$", text, re.M)
    assert [t[0] for t in targets] == ["proxy added p50, small JSON, c1",
                                       "proxy added SSE TTFB p50, c1, calls back to back",
                                       "proxy added SSE TTFB p50, c1, 20 ms idle before each call"]
    assert all((float(v) <= 1.0) == (verdict == "PASS") for _, v, verdict in targets)


def test_bare_mitmproxy_floor_forwards_streams_tuned_and_stock(tmp_path: Path) -> None:
    """The floor target, with and without our tuning, passes the upstream's SSE body through unchanged."""
    latency = bench_latency()
    up, uport = latency.start_upstream(5, 0.2)
    procs = []
    try:
        ports = {}
        for stock in (False, True):
            p, port = latency.start_bare_mitmproxy(uport, tmp_path / f"conf-{stock}", stock=stock)
            procs.append(p)
            ports[stock] = port

        async def fetch(port: int) -> tuple[int, bytes]:
            c = await latency.Conn("127.0.0.1", port, "").open()
            try:
                r = await c.send(c.build("POST", "/v1/chat/completions", latency.STREAM_BODY), keep_body=True)
            finally:
                c.close()
            return r.status, r.body

        direct = asyncio.run(fetch(uport))
        assert direct[0] == 200 and direct[1].endswith(b"data: [DONE]\n\n")
        for port in ports.values():
            assert asyncio.run(fetch(port)) == direct
    finally:
        for p in procs:
            latency.stop(p, 5)
        latency.stop(up, 5)
