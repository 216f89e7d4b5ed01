"""The benchmark helpers still run against the current code (they import the real components)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_latency_bench_runs_every_phase_end_to_end() -> None:
    """A tiny run of bench/latency.py: real proxy, fake upstream and relay processes on 127.0.0.1."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "latency.py"), "--requests", "20", "--warmup", "5",
                          "--idle-requests", "5", "--sse-requests", "6", "--sse-idle-requests", "6", "--sse-warmup",
                          "2", "--c8-seconds", "0.4", "--c8-batches", "2", "--sse-chunks", "5", "--sse-delay-ms",
                          "0.2", "--no-write"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for table in ("| small JSON, concurrency 1 (ms) |", "| small JSON, concurrency 8 |",
                  "| SSE, concurrency 1 (ms) |", "| SSE, concurrency 1, 20 ms idle before each call (ms) |"):
        assert table in text, text
    assert "SSE body byte-identical on every path: True" in text
    assert "capture errors: 0" in text
    targets = re.findall(r"^target (.+): (-?[\d.]+) ms <= 1\.0 ms  (PASS|MISS)$", text, re.M)
    assert [t[0] for t in targets] == ["proxy added p50, small JSON, c1",
                                       "proxy added SSE TTFB p50, c1, calls back to back",
                                       "proxy added SSE TTFB p50, c1, 20 ms idle before each call"]
    assert all((float(v) <= 1.0) == (verdict == "PASS") for _, v, verdict in targets)
