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
