"""Nothing lost, nothing broken: export faults, crashes, shutdown, memory, client/upstream failures.

Real proxy processes against the fake LLM and the fake collector on loopback. Traffic is mostly plain
httpx requests carrying `x-session-id` (fast, and exact about what was sent); one real opencode run
goes through a misbehaving collector too. The ground truth for "everything" is the proxy's local
store, which holds every span the proxy produced; the expected shape (per session: one LLM span per
call, one root span, one turn marker per turn) is what a fault-free run produces.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from addon.spans import marker_span_id_for, root_span_id_for, trace_id_for
from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM, Step, tool_then_answer
from tests.fakes.util import RawServer, wait_until

API_KEY = "nl-resilience-key"
FAST = ["--idle-timeout", "0.5"]


# --- helpers -------------------------------------------------------------------------------------


def chat(proxy_url: str, session: str, prompt: str, stream: bool = True, route: str = "fake",
         timeout: float = 30, client: httpx.Client | None = None) -> httpx.Response:
    """One Chat Completions call through the proxy (no tools: the fake answers its fixed title text)."""
    body = {"model": "fake-model", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    return (client or httpx).post(f"{proxy_url}/{route}/v1/chat/completions", json=body, timeout=timeout,
                                  headers={"x-session-id": session, "authorization": "Bearer sk-upstream"})


def pooled() -> httpx.Client:
    """A keep-alive client shared by many threads (as opencode keeps its connections open)."""
    return httpx.Client(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100), timeout=30)


def traffic(proxy_url: str, sessions: int, calls: int, tag: str = "s", workers: int = 16) -> dict[str, int]:
    """`sessions` sessions in parallel, each making `calls` sequential calls; all must succeed."""
    names = [f"ses_{tag}{i:03d}" for i in range(sessions)]

    def one(sid: str) -> None:
        for k in range(calls):
            r = chat(proxy_url, sid, f"prompt {k} of {sid}", stream=k % 2 == 0, client=client)
            assert r.status_code == 200, r.text
            assert ("[DONE]" in r.text) if k % 2 == 0 else r.json()["choices"]

    with pooled() as client, ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))
    return dict.fromkeys(names, calls)


def expected_ids(plan: dict[str, int]) -> set[str]:
    """The deterministic span ids a fault-free run of `plan` exports (roots and turn markers)."""
    out = set()
    for sid, calls in plan.items():
        out.add(root_span_id_for(sid))
        out |= {marker_span_id_for(sid, turn) for turn in range(1, calls + 1)}
    return out


def store_spans(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every span the proxy produced (its local store), by span id."""
    db = sqlite3.connect(f"file:{data_dir / 'traces.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT span_id, trace_id, session_id, name, attributes FROM spans").fetchall()
    finally:
        db.close()
    return {r[0]: {"trace_id": r[1], "session_id": r[2], "name": r[3], "attributes": json.loads(r[4])}
            for r in rows}


def spool_depth(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    finally:
        db.close()


def produced(data_dir: Path, plan: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Wait until the proxy has produced the whole plan (last turns closed), return its spans."""
    n = sum(2 * c + 1 for c in plan.values())

    def ready() -> dict[str, dict[str, Any]] | None:
        spans = store_spans(data_dir)
        return spans if len(spans) >= n else None

    return wait_until(ready, timeout=30, message=f"{n} spans in the local store")


def assert_delivered_exactly(collector: FakeCollector, plan: dict[str, int], data_dir: Path,
                             timeout: float = 40) -> dict[str, Any]:
    """The collector ends up with exactly the fault-free set of spans: same ids, same shape, no extras."""
    n = sum(2 * c + 1 for c in plan.values())
    spans = wait_until(lambda: (s := collector.latest_by_span_id()) and len(s) >= n and s, timeout,
                       message=f"{n} spans at the collector")
    truth = store_spans(data_dir)
    assert set(spans) == set(truth), "collector and local store disagree"
    assert len(spans) == n
    assert expected_ids(plan) <= set(spans)
    shape = Counter((s.attributes["neatlogs.conversation.id"], s.name.split(".")[1]) for s in spans.values())
    want: Counter[tuple[str, str]] = Counter()
    for sid, calls in plan.items():
        want[(sid, "llm")] += calls
        want[(sid, "session")] += 1
        want[(sid, "trace")] += calls
    assert shape == want
    for s in spans.values():  # nothing mixed across sessions
        sid = s.attributes["neatlogs.conversation.id"]
        assert s.trace_id == trace_id_for(sid)
        if s.name.startswith("opencode.llm."):
            assert f"of {sid}" in s.attributes["input.value"]
    # Redelivery is idempotent: every accepted copy of an id is that same span.
    copies = Counter(s.span_id for s in collector.spans())
    assert set(copies) == set(spans)
    return spans


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


# --- export faults -------------------------------------------------------------------------------


def _down_then_up(c: FakeCollector, proxy: Any) -> None:
    c.down()


def _retry_after_503(c: FakeCollector, proxy: Any) -> None:
    c.fail_next(503, count=3, retry_after=1)


def _retry_after_429(c: FakeCollector, proxy: Any) -> None:
    c.fail_next(429, count=2, retry_after="1")


def _slow(c: FakeCollector, proxy: Any) -> None:
    c.delay = 1.5  # longer than the proxy's export timeout (1 s): the collector keeps what times out


def _flapping(c: FakeCollector, proxy: Any) -> None:
    c.flap([503, 200, 500, 502, 200])


@pytest.mark.parametrize("fault", [_down_then_up, _retry_after_503, _retry_after_429, _slow, _flapping],
                         ids=["down-then-up", "503-retry-after", "429-retry-after", "slow", "flapping"])
def test_export_faults_lose_nothing(fault, fake_llm: FakeLLM, fake_collector: FakeCollector,
                                    proxy_process) -> None:
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=FAST, env={"NEATLOGS_PROXY_EXPORT_TIMEOUT": "1"})
    fault(fake_collector, proxy)
    plan = traffic(proxy.url, sessions=6, calls=3)
    produced(proxy.data_dir, plan)
    # The fault has been felt (attempts failed), then it goes away.
    if fault is _down_then_up:
        wait_until(lambda: "export to Neatlogs failed" in proxy.logs(), timeout=10)
        fake_collector.up()
    elif fault is _slow:
        wait_until(lambda: "ReadTimeout" in proxy.logs(), timeout=10)
        fake_collector.clear_faults()
    elif fault is _flapping:
        wait_until(lambda: sum(not r.accepted for r in fake_collector.requests) >= 2, timeout=10)
        fake_collector.clear_faults()
    assert_delivered_exactly(fake_collector, plan, proxy.data_dir)
    wait_until(lambda: spool_depth(proxy.data_dir) == 0, timeout=10, message="spool drained")
    reqs = fake_collector.requests
    if fault in (_retry_after_503, _retry_after_429):
        failed = [i for i, r in enumerate(reqs) if not r.accepted]
        assert failed, "the collector never failed"
        for i in failed:  # the next attempt honoured Retry-After (1 s)
            if i + 1 < len(reqs):
                assert reqs[i + 1].t_ns - reqs[i].t_ns >= 0.95e9
    assert all(r.headers.get("x-api-key") == API_KEY for r in reqs)


def test_opencode_session_survives_a_misbehaving_collector(fake_llm: FakeLLM, fake_collector: FakeCollector,
                                                           proxy_process, run_opencode, tmp_path: Path) -> None:
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "README.md").write_text("# Demo\nThis project prints the number 4242.\n")
    fake_llm.script(tool_then_answer("read", {"filePath": str(wd / "README.md")}, answer="It prints 4242."))
    fake_collector.fail_next(503, count=2, retry_after="0.5")
    fake_collector.flap([200, 502])
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=["--idle-timeout", "1"])
    result = run_opencode(wd, "Read README.md and summarize it", proxy.route_url("fake") + "/v1")
    assert result.returncode == 0, result.describe()
    assert "It prints 4242." in result.stdout
    session_id = fake_llm.requests[0].headers["x-session-id"]
    truth = wait_until(lambda: (s := store_spans(proxy.data_dir)) and len(s) >= 6 and s, timeout=30)
    # The collector keeps flapping (every other export fails) until everything has arrived; how many
    # exports that takes depends on batching, so wait for the outcome, not for a number of failures.
    spans = wait_until(lambda: (s := fake_collector.latest_by_span_id()) and set(s) >= set(truth) and s,
                       timeout=40, message="every produced span at the collector")
    assert sum(not r.accepted for r in fake_collector.requests) >= 2  # the 503s with Retry-After were hit
    assert set(spans) == set(truth)
    names = Counter(s.name.split(".")[1] for s in spans.values())
    assert names == {"llm": 3, "tool": 1, "session": 1, "trace": 1}
    assert {s.attributes["neatlogs.conversation.id"] for s in spans.values()} == {session_id}


# --- crash and shutdown --------------------------------------------------------------------------


def test_kill9_before_delivery_then_restart_delivers_everything(fake_llm: FakeLLM, fake_collector: FakeCollector,
                                                                 proxy_process) -> None:
    fake_collector.down()
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY, args=FAST)
    plan = traffic(proxy.url, sessions=5, calls=2, tag="crash")
    truth = produced(proxy.data_dir, plan)
    assert spool_depth(proxy.data_dir) >= len(truth)
    proxy.kill9()
    assert proxy.proc is not None and proxy.proc.returncode == -signal.SIGKILL
    assert fake_collector.requests == []
    fake_collector.up()
    proxy.start()  # same port, same data dir
    assert_delivered_exactly(fake_collector, plan, proxy.data_dir)
    assert "resuming delivery of" in proxy.logs()
    wait_until(lambda: spool_depth(proxy.data_dir) == 0, timeout=10)


@pytest.mark.parametrize("collector_up", [True, False], ids=["collector-up", "collector-down"])
def test_sigterm_lets_the_in_flight_stream_finish(collector_up: bool, fake_llm: FakeLLM,
                                                  fake_collector: FakeCollector, proxy_process) -> None:
    fake_llm.title_step = Step(text="a slow and complete answer", chunk_delay=0.25, text_chunks=8)
    if not collector_up:
        fake_collector.down()
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY, args=FAST)
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "slow of ses_slow"}]}
    got = bytearray()
    first = threading.Event()
    result: dict[str, Any] = {}

    def client() -> None:
        try:
            with httpx.stream("POST", proxy.route_url("fake") + "/v1/chat/completions", json=body, timeout=30,
                              headers={"x-session-id": "ses_slow"}) as r:
                result["status"] = r.status_code
                for chunk in r.iter_raw():
                    got.extend(chunk)
                    first.set()
        except Exception as exc:  # surfaced by the assertions below
            result["error"] = exc
        first.set()

    t = threading.Thread(target=client)
    t.start()
    assert first.wait(10)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGTERM)
    # New connections are refused while the stream finishes.
    wait_until(lambda: _refused(proxy.port), timeout=5, message="listener closed after SIGTERM")
    t.join(20)
    assert "error" not in result, result
    assert result["status"] == 200
    text = got.decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in text.splitlines() if line.startswith("data: {") and json.loads(line[6:])["choices"]
                   ) == "a slow and complete answer"
    assert proxy.proc.wait(20) == 0
    truth = store_spans(proxy.data_dir)
    names = Counter(s["name"].split(".")[1] for s in truth.values())
    assert names == {"llm": 1, "session": 1, "trace": 1}  # the finished turn was closed at shutdown
    if collector_up:
        spans = fake_collector.latest_by_span_id()
        assert set(spans) == set(truth) and spool_depth(proxy.data_dir) == 0
    else:
        assert spool_depth(proxy.data_dir) >= len(truth)
        fake_collector.up()
        proxy.start()
        wait_until(lambda: set(fake_collector.latest_by_span_id()) == set(truth), timeout=20,
                   message="spooled spans delivered after restart")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


# --- spool bound ---------------------------------------------------------------------------------


def test_full_spool_drops_oldest_and_traffic_continues(fake_llm: FakeLLM, fake_collector: FakeCollector,
                                                       proxy_process) -> None:
    fake_collector.down()
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY, args=FAST,
                          env={"NEATLOGS_PROXY_SPOOL_MAX_BYTES": str(1024 * 1024)})
    big = "x" * 60_000  # each LLM span carries ~60 KB of prompt: ~20 calls fill 1 MiB
    for i in range(40):
        r = chat(proxy.url, f"ses_full{i:02d}", f"{big} of ses_full{i:02d}")
        assert r.status_code == 200  # LLM traffic is never affected
    wait_until(lambda: "spool full" in proxy.logs(), timeout=20, message="spool full logged")
    metrics = httpx.get(proxy.url + "/_neatlogs/metrics").text
    dropped = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("neatlogs_proxy_spool_dropped"))
    assert dropped > 0
    assert proxy.logs().count("spool full") == 1  # logged once per episode
    db = sqlite3.connect(f"file:{proxy.data_dir / 'spool.db'}?mode=ro", uri=True)
    size = db.execute("SELECT SUM(size) FROM spool").fetchone()[0]
    db.close()
    assert size <= 1024 * 1024
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200
    fake_collector.up()
    # What survived is the newest; it is delivered.
    def delivered() -> set[str] | None:
        # Wait for the newest session itself: the spool can be empty for a moment before the last
        # exchange has been processed and spooled.
        sessions = {s.attributes["neatlogs.conversation.id"] for s in fake_collector.latest_by_span_id().values()}
        return sessions if "ses_full39" in sessions and spool_depth(proxy.data_dir) == 0 else None

    sessions = wait_until(delivered, timeout=30, message="remaining spool delivered")
    assert "ses_full39" in sessions and "ses_full00" not in sessions


# --- memory --------------------------------------------------------------------------------------


class Sink(RawServer):
    """A raw HTTP/1.1 upstream that hashes each request body and throws it away."""

    def __init__(self) -> None:
        self.digests: list[tuple[int, str]] = []
        super().__init__(backlog=16)

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            head = {}
            f.readline()
            while (line := f.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                head[k.strip().lower()] = v.strip()
            h = hashlib.sha256()
            n = 0
            if "content-length" in head:
                left = int(head["content-length"])
                while left:
                    data = f.read(min(left, 1 << 20))
                    if not data:
                        break
                    h.update(data)
                    n += len(data)
                    left -= len(data)
            else:  # chunked
                while size := int(f.readline().split(b";")[0] or b"0", 16):
                    data = f.read(size)
                    h.update(data)
                    n += len(data)
                    f.readline()
                f.readline()
            self.digests.append((n, h.hexdigest()))
            body = json.dumps({"received": n, "sha256": h.hexdigest()}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))



def _body(total: int, block: bytes) -> Any:
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mb_upload_streams_through_with_flat_memory(framing: str, proxy_process) -> None:
    """A body of known size over the capture limit is never copied; one of unknown size (chunked) is copied
    until it passes the limit, then released: its cost is bounded by the limit (2 MiB here)."""
    sink = Sink()
    try:
        env = {"NEATLOGS_PROXY_MAX_CAPTURE_BYTES": str(2 * 1024 * 1024)} if framing == "chunked" else {}
        proxy = proxy_process(routes={"sink": sink.url}, args=FAST, env=env)
        assert proxy.proc is not None
        pid = proxy.proc.pid
        for _ in range(2):  # warm up the code paths once
            assert chat(proxy.url, "ses_warm", "warm", route="sink").status_code == 200
        total = 100 * 1024 * 1024
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        for piece in _body(total, block):
            digest.update(piece)
        before, hwm_before = rss_kb(pid), rss_kb(pid, "VmHWM")
        print(f"proxy RSS before {before // 1024} MB (peak {hwm_before // 1024} MB)")
        headers = {"content-type": "application/octet-stream", "x-session-id": "ses_upload"}
        if framing == "content-length":
            headers["content-length"] = str(total)
        r = httpx.post(proxy.route_url("sink") + "/v1/upload", content=_body(total, block), headers=headers,
                       timeout=120)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": total, "sha256": digest.hexdigest()}  # byte-exact upstream
        after, hwm_after = rss_kb(pid), rss_kb(pid, "VmHWM")
        print(f"proxy RSS after {after // 1024} MB (peak {hwm_after // 1024} MB)")
        assert after - before < 8 * 1024, f"RSS grew by {(after - before) // 1024} MB"
        assert hwm_after - hwm_before < 12 * 1024, f"peak RSS grew by {(hwm_after - hwm_before) // 1024} MB"
        # The exchange is still recorded, with the body marked as not captured.
        spans = wait_until(lambda: [s for s in store_spans(proxy.data_dir).values()
                                    if s["session_id"] == "ses_upload"], timeout=10)
        err = spans[0]["attributes"]["neatlogs.llm.request.capture_error"]
        assert "larger than the capture limit" in err
    finally:
        sink.close()


class HeadFirstUpstream(RawServer):
    """A raw upstream that notes when a request's head arrived, then reads the body it announced and
    answers a small chat.completion."""

    def __init__(self) -> None:
        self.head_seen = threading.Event()
        self.bodies: list[bytes] = []
        super().__init__(backlog=4)

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            length = 0
            f.readline()
            while (line := f.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            self.head_seen.set()
            self.bodies.append(f.read(length))
            body = json.dumps({"id": "chatcmpl-head", "object": "chat.completion", "model": "fake-model",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "ok"}}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))


def test_small_request_bodies_stream_upstream_without_waiting_for_their_end(proxy_process) -> None:
    """Every request body is streamed, not only big ones: the upstream has the head while the client is
    still sending the body (so the `request` hook never sits between the client and the upstream),
    and the body still arrives byte-exact and is captured whole."""
    upstream = HeadFirstUpstream()
    try:
        proxy = proxy_process(routes={"headfirst": upstream.url}, args=FAST)
        body = json.dumps({"model": "fake-model", "stream": False,
                           "messages": [{"role": "user", "content": "streamed prompt " + "x" * 2000}]}).encode()
        half = len(body) // 2
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(b"POST /headfirst/v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                      b"Content-Type: application/json\r\nx-session-id: ses_headfirst\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:half]))
            wait_until(upstream.head_seen.is_set, timeout=10,
                       message="the upstream never saw the request head before the body was complete")
            c.sendall(body[half:])
            answer = b""
            while chunk := c.recv(65536):
                answer += chunk
                if b"chatcmpl-head" in answer:
                    break
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert wait_until(lambda: upstream.bodies) == [body]
        spans = wait_until(lambda: [s for s in store_spans(proxy.data_dir).values()
                                    if s["session_id"] == "ses_headfirst" and s["name"] != "opencode.session"
                                    and "input.value" in s["attributes"]], timeout=10)
        assert "streamed prompt " + "x" * 2000 in spans[0]["attributes"]["input.value"]
    finally:
        upstream.close()


def test_a_port_in_use_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    """Startup failures say what is wrong in our terms, exit 1, and never claim to be listening."""
    from tests.conftest import PROXY_CMD, REPO

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEATLOGS_")}
        env["PYTHONPATH"] = str(REPO)
        out = subprocess.run([*PROXY_CMD, "--port", str(port), "--data-dir", str(tmp_path / "data")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    log = out.stdout + out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log
    assert "choose another --port" in log
    assert "listening on" not in log and "--mode" not in log


# --- what the client sees ------------------------------------------------------------------------


def test_upstream_unreachable_gives_a_json_502_naming_the_route(fake_collector: FakeCollector,
                                                                proxy_process) -> None:
    proxy = proxy_process(routes={"fake": "http://127.0.0.1:9"}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=FAST)
    r = chat(proxy.url, "ses_unreach", "hello of ses_unreach")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["type"] == "upstream_unreachable" and err["route"] == "fake"
    assert err["message"].startswith("route 'fake' (http://127.0.0.1:9): connection refused")
    # Large (streamed) request bodies get the same answer.
    r = httpx.post(proxy.url + "/fake/v1/chat/completions", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"content-type": "application/json", "x-session-id": "ses_unreach"})
    assert r.status_code == 502 and r.json()["error"]["route"] == "fake"
    spans = wait_until(lambda: [s for s in fake_collector.latest_by_span_id().values()
                                if s.name.startswith("opencode.llm.")] or None, timeout=15)
    s = spans[0]
    assert s.status_code == 2 and s.attributes["error.type"] == "connection_error"
    assert "refused" in s.status_message.lower()
    assert "route 'fake'" in proxy.logs()
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200


def test_client_disconnect_mid_stream_finishes_the_span_as_cancelled(fake_llm: FakeLLM, proxy_process) -> None:
    fake_llm.title_step = Step(text="one two three four five six seven eight", chunk_delay=0.3, text_chunks=8)
    proxy = proxy_process(routes={"fake": fake_llm.url}, args=FAST)
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", proxy.route_url("fake") + "/v1/chat/completions", json=body, timeout=10,
                      headers={"x-session-id": "ses_gone"}) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # first bytes, then hang up
    spans = wait_until(lambda: [s for s in store_spans(proxy.data_dir).values()
                                if s["name"].startswith("opencode.llm.")], timeout=15)
    a = spans[0]["attributes"]
    assert a["error.type"] == "cancelled"
    assert a["neatlogs.llm.stream.truncated"] is True
    assert chat(proxy.url, "ses_after", "still fine").status_code == 200


def test_upstream_cut_mid_stream_reaches_the_client_and_is_recorded(fake_llm: FakeLLM, proxy_process) -> None:
    fake_llm.title_step = Step(text="this answer is cut short by the upstream", cut_after=3)
    proxy = proxy_process(routes={"fake": fake_llm.url}, args=FAST)
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got = bytearray()
    url = proxy.route_url("fake") + "/v1/chat/completions"
    # The client sees the cut too, not a clean end.
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("POST", url, json=body, timeout=10,
                                                                headers={"x-session-id": "ses_cut"}) as r:
        for chunk in r.iter_raw():
            got.extend(chunk)
    assert got.count(b"data: ") == 3 and b"[DONE]" not in got
    spans = wait_until(lambda: [s for s in store_spans(proxy.data_dir).values()
                                if s["name"].startswith("opencode.llm.")], timeout=15)
    a = spans[0]["attributes"]
    assert a["error.type"] == "stream_interrupted" and a["neatlogs.llm.stream.truncated"] is True


# --- concurrency ---------------------------------------------------------------------------------


def test_hundreds_of_interleaved_streams_and_plugin_events_never_mix(fake_llm: FakeLLM,
                                                                     fake_collector: FakeCollector,
                                                                     proxy_process) -> None:
    fake_llm.title_step = Step(text="interleaved answer", chunk_delay=0.002, text_chunks=6)
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=["--idle-timeout", "30"])  # turns end by the plugin's session.idle only
    sessions = [f"ses_mix{i:03d}" for i in range(40)]
    calls = 5
    now_ms = time.time() * 1000

    def events(sid: str, kind: str) -> None:
        evs: list[dict[str, Any]]
        if kind == "before":
            evs = [{"type": "session.info", "session_id": sid, "ts": now_ms, "title": f"title of {sid}"},
                   {"type": "chat.message", "session_id": sid, "ts": now_ms, "message_id": f"msg_{sid}",
                    "agent": "build", "provider_id": "fake", "model_id": "fake-model", "text": f"prompt of {sid}"}]
        else:
            evs = [{"type": "session.idle", "session_id": sid, "ts": time.time() * 1000}]
        r = client.post(proxy.url + "/_neatlogs/v1/events", json={"source": "test", "events": evs}, timeout=10)
        assert r.status_code == 202, r.text

    def one(sid: str) -> None:
        # Plugin events before and after the wire calls, in a session-dependent order.
        if hash(sid) % 2:
            events(sid, "before")
        for k in range(calls):
            r = chat(proxy.url, sid, f"call {k} of {sid}", client=client)
            assert r.status_code == 200 and "interleaved answer" in "".join(
                json.loads(x[6:])["choices"][0]["delta"].get("content") or ""
                for x in r.text.splitlines() if x.startswith("data: {") and json.loads(x[6:])["choices"])
        if not hash(sid) % 2:
            events(sid, "before")

    client = pooled()
    with ThreadPoolExecutor(40) as pool:
        list(pool.map(one, sessions))  # 200 streams, 40 at a time, interleaved
    wait_until(lambda: len(store_spans(proxy.data_dir)) >= len(sessions) * calls, timeout=30)
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda s: events(s, "after"), sessions))

    def done() -> dict[str, Any] | None:  # every session's last turn closed by its session.idle
        spans = fake_collector.latest_by_span_id()
        markers = [s for s in spans.values() if s.name == "neatlogs.trace.complete"]
        return spans if len(markers) == len(sessions) * calls else None

    spans = wait_until(done, timeout=30, message="every session's root span")
    client.close()
    by_session: dict[str, Counter[str]] = {}
    for s in spans.values():
        sid = s.attributes["neatlogs.conversation.id"]
        assert s.trace_id == trace_id_for(sid)
        by_session.setdefault(sid, Counter())[s.name.split(".")[1]] += 1
        if s.name.startswith("opencode.llm."):
            assert s.attributes["input.value"].endswith(f"of {sid}")
        if s.name == "opencode.session":
            assert s.attributes["neatlogs.session.title"] == f"title of {sid}"
            assert s.attributes["neatlogs.session.llm_calls"] == calls
    assert set(by_session) == set(sessions)
    assert all(c["llm"] == calls and c["session"] == 1 for c in by_session.values())



def test_soak_smoke() -> None:
    """bench/soak.py end to end, briefly: every span of 5 concurrent sessions is delivered."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "bench" / "soak.py"), "--sessions", "5", "--seconds", "2",
                          "--deliver-timeout", "30", "--json"], capture_output=True, text=True, timeout=120, cwd=repo)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] and res["spans_delivered"] == res["spans_expected"] > 0 and res["client_errors"] == 0
