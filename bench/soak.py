"""Soak: N concurrent sessions stream through a real proxy for a while; every span must be delivered.

    .venv/bin/python bench/soak.py --sessions 50 --seconds 20 [--flap] [--json]

Starts a fake LLM (streamed answers), a fake OTLP collector and the real proxy process (loopback, a
throw-away data dir), then runs `--sessions` client threads for `--seconds`: each makes streamed
Chat Completions calls in a loop with its own `x-session-id`, and posts plugin events as the opencode
plugin does (a `chat.message` first, a `message.completed` after each call, a `session.idle` at the
end; `--no-plugin` for wire traffic only). Then it waits for delivery and compares what the
collector holds with what a fault-free run must produce: per session one LLM span per call, one root
span and one turn marker per call (every call is a new user turn). `--flap` makes the collector fail
every other export (503) during the run. Prints a small table; exits 1 when delivered != expected or
any client call failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import ProxyProcess  # noqa: E402  (the same harness the e2e tests use)
from tests.fakes.fake_collector import FakeCollector  # noqa: E402
from tests.fakes.fake_llm import FakeLLM, Step  # noqa: E402

API_KEY = "nl-soak"


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run(sessions: int, seconds: float, flap: bool, deliver_timeout: float, plugin: bool = True) -> dict[str, object]:
    llm = FakeLLM().start()
    llm.title_step = Step(text="soak answer with a few words in it", chunk_delay=0.005, text_chunks=8)
    collector = FakeCollector().start()
    work = Path(tempfile.mkdtemp(prefix="neatlogs-soak-"))
    proxy = ProxyProcess(work, routes={"fake": llm.url}, endpoint=collector.url, api_key=API_KEY,
                         args=["--idle-timeout", "1"]).start()
    assert proxy.proc is not None
    pid = proxy.proc.pid
    client = httpx.Client(limits=httpx.Limits(max_connections=sessions + 10, max_keepalive_connections=sessions + 10),
                          timeout=60)
    base = proxy.url
    try:
        # Warm up (imports, first connections), then measure from there.
        for i in range(3):
            client.post(f"{base}/fake/v1/chat/completions", headers={"x-session-id": "ses_warmup"},
                        json={"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": str(i)}]})
        rss_before = rss_kb(pid)
        if flap:
            collector.flap([503, 200])
        calls: dict[str, int] = {}
        errors: list[str] = []
        latencies: list[float] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def session(i: int) -> None:
            sid = f"ses_soak{i:04d}"
            n = 0
            now_ms = time.time() * 1000
            try:
                if plugin:
                    client.post(f"{base}/_neatlogs/v1/events", json={"events": [
                        {"type": "chat.message", "session_id": sid, "ts": now_ms, "agent": "build",
                         "provider_id": "fake", "model_id": "fake-model", "text": f"first prompt of {sid}"}]})
                while time.monotonic() < stop_at:
                    t0 = time.monotonic()
                    body = {"model": "fake-model", "stream": True,
                            "messages": [{"role": "user", "content": f"prompt {n} of {sid}"}]}
                    with client.stream("POST", f"{base}/fake/v1/chat/completions", json=body,
                                       headers={"x-session-id": sid}) as r:
                        data = b"".join(r.iter_raw())
                    if r.status_code != 200 or not data.rstrip().endswith(b"data: [DONE]"):
                        with lock:
                            errors.append(f"{sid} call {n}: HTTP {r.status_code}")
                    n += 1
                    with lock:
                        latencies.append(time.monotonic() - t0)
                    if plugin:  # what the plugin reports for each assistant message (tokens match the wire)
                        u = llm.title_step.usage
                        client.post(f"{base}/_neatlogs/v1/events", json={"events": [
                            {"type": "message.completed", "session_id": sid, "ts": time.time() * 1000,
                             "message_id": f"msg_{sid}_{n}", "provider_id": "fake", "model_id": "fake-model",
                             "agent": "build", "cost": 0.0001, "finish": "stop",
                             "tokens": {"input": u.prompt_tokens, "output": u.completion_tokens, "reasoning": 0,
                                        "cache": {"read": 0, "write": 0}}}]})
                if plugin:
                    client.post(f"{base}/_neatlogs/v1/events", json={"events": [
                        {"type": "session.idle", "session_id": sid, "ts": time.time() * 1000}]})
            except Exception as exc:
                with lock:
                    errors.append(f"{sid}: {type(exc).__name__}: {exc}")
            with lock:
                calls[sid] = n

        t_start = time.monotonic()
        threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t_start
        rss_after_traffic = rss_kb(pid)
        collector.clear_faults()

        expected = sum(2 * n + 1 for n in calls.values())

        def delivered() -> dict[str, object]:
            spans = collector.latest_by_span_id()
            return {k: v for k, v in spans.items() if v.attributes.get("neatlogs.conversation.id") in calls}

        deadline = time.monotonic() + deliver_timeout
        got = delivered()
        while len(got) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            got = delivered()
        wait = time.monotonic() - t_start - elapsed
        mixed = sum(1 for s in got.values()  # an LLM span whose prompt names another session
                    if s.name.startswith("opencode.llm.")
                    and not str(s.attributes.get("input.value", "")).endswith(s.attributes["neatlogs.conversation.id"]))
        copies = sum(1 for s in collector.spans() if s.attributes.get("neatlogs.conversation.id") in calls)
        total_calls = sum(calls.values())
        lat = sorted(latencies)
        return {
            "sessions": sessions,
            "seconds": round(elapsed, 1),
            "calls": total_calls,
            "calls_per_s": round(total_calls / elapsed, 1) if elapsed else 0,
            "latency_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
            "latency_p95_ms": round(lat[int(len(lat) * 0.95) - 1] * 1000, 1) if lat else None,
            "client_errors": len(errors),
            "spans_expected": expected,
            "spans_delivered": len(got),
            "spans_mixed": mixed,
            "exported_copies": copies,
            "collector_rejections": sum(not r.accepted for r in collector.requests),
            "delivery_wait_s": round(wait, 1),
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_after_traffic_mb": round(rss_after_traffic / 1024, 1),
            "rss_after_mb": round(rss_kb(pid) / 1024, 1),
            "rss_peak_mb": round(rss_kb(pid, "VmHWM") / 1024, 1),
            "first_errors": errors[:5],
        }
    finally:
        client.close()
        proxy.stop()
        collector.stop()
        llm.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--flap", action="store_true", help="the collector fails every other export during the run")
    p.add_argument("--no-plugin", action="store_true", help="wire traffic only, no plugin events")
    p.add_argument("--deliver-timeout", type=float, default=60.0, help="max seconds to wait for delivery")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    res = run(args.sessions, args.seconds, args.flap, args.deliver_timeout, plugin=not args.no_plugin)
    ok = (res["spans_delivered"] == res["spans_expected"] and not res["client_errors"] and not res["spans_mixed"])
    if args.json:
        print(json.dumps({**res, "ok": ok}))
    else:
        width = max(len(k) for k in res)
        print(f"{'metric':<{width}}  value")
        print(f"{'-' * width}  -----")
        for k, v in res.items():
            if k != "first_errors" or v:
                print(f"{k:<{width}}  {v}")
        print(f"{'result':<{width}}  {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
