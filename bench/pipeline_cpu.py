"""CPU the capture pipeline spends per exchange, off the event loop but under the same GIL.

    .venv/bin/python bench/pipeline_cpu.py                   # µs per exchange, SSE and small JSON
    .venv/bin/python bench/pipeline_cpu.py --profile 25      # + the top 25 functions (cProfile)

Builds the real components (`proxy.server.App`: correlator, content redaction, local store, exporter
without an API key) in a temp data dir and feeds them exchanges shaped exactly like
`bench/latency.py`'s traffic: the same request bodies and headers, and for SSE the de-chunked body
pieces the tap records for `bench/_fake_upstream.py`'s stream. Every number here is time the event
loop may have to wait for the GIL while a later request is in flight (bench/README.md).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fake_upstream import SMALL_BODY, sse_events
from latency import REQUEST_BODY, STREAM_BODY

from addon.model import Exchange
from proxy.server import App
from proxy.settings import Settings


def dechunk(framed: bytes) -> bytes:
    """`%x\\r\\n<data>\\r\\n` → data (what mitmproxy hands the tap)."""
    _, _, rest = framed.partition(b"\r\n")
    return rest[:-2]


def exchange(i: int, stream: bool, session: str) -> Exchange:
    body = STREAM_BODY if stream else REQUEST_BODY
    fields = ((b"host", b"127.0.0.1:1"), (b"user-agent", b"neatlogs-bench/1"), (b"accept", b"*/*"),
              (b"content-type", b"application/json"), (b"authorization", b"Bearer sk-bench-not-a-real-key"),
              (b"content-length", str(len(body)).encode()), (b"x-neatlogs-session-id", session.encode()),
              (b"x-neatlogs-agent", b"build"))
    now = time.time_ns()
    ex = Exchange(flow_id=f"flow-{i}", route="fake", upstream="http://127.0.0.1:1", method="POST",
                  path="/v1/chat/completions", query="", request_headers={}, request_body=body,
                  request_body_truncated=False, start_ns=now, raw_request_fields=fields)
    if stream:
        ex.chunks = [(now + k * 1_000_000, dechunk(c)) for k, c in enumerate(sse_events(50))]
        ctype = b"text/event-stream; charset=utf-8"
    else:
        ex.chunks = [(now, SMALL_BODY)]
        ctype = b"application/json"
    ex.status, ex.end_ns = 200, now + 55_000_000
    ex.raw_response_fields = ((b"content-type", ctype), (b"x-request-id", b"req_bench"))
    return ex


def run(app: App, n: int, stream: bool, tag: str) -> float:
    """Mean µs per exchange for `n` exchanges, 10 per session (as bench/latency.py groups them)."""
    exchanges = [exchange(i, stream, f"bench-{tag}-{i // 10}") for i in range(n)]
    t0 = time.perf_counter()
    for ex in exchanges:
        app.correlator.on_exchange(ex)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="exchanges per kind")
    ap.add_argument("--profile", type=int, metavar="TOP", default=0, help="print the top functions (cProfile)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        app = App(Settings(data_dir=Path(tmp)))
        try:
            run(app, 200, True, "warm")  # imports, price table, first SQLite pages
            run(app, 200, False, "warm")
            prof = cProfile.Profile() if args.profile else None
            if prof:
                prof.enable()
            sse = run(app, args.n, True, "sse")
            small = run(app, args.n, False, "small")
            if prof:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
            spans = app.store.db.execute("SELECT count(*) FROM spans").fetchone()[0]
        finally:
            app.close()
    print(f"pipeline CPU per exchange: SSE (50 events) {sse:.0f} µs, small JSON {small:.0f} µs"
          f"{' (under cProfile: inflated)' if args.profile else ''}; {spans} spans stored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
