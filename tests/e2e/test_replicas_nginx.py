"""Several replicas, for real: two proxy processes behind nginx hashing on ``x-session-id``.

Interleaved opencode sessions go through nginx (``hash $http_x_session_id consistent``) to two real
proxy replicas that export to one fake collector. Between two turns of a session the replica that
served it is killed with SIGKILL; nginx fails the next turn over to the survivor. Every session must
still land in exactly one trace, with one root span, and the moved session's trace must hold the LLM
spans of both turns (trace and root span ids are derived from the session id, see addon/spans.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from addon.spans import root_span_id_for, trace_id_for
from tests.conftest import CACHE, REPO, OpencodeRun, ProxyProcess
from tests.fakes.fake_collector import FakeCollector, FlatSpan
from tests.fakes.fake_llm import FakeLLM, RecordedRequest, Step, Usage, text_step, tool_step
from tests.fakes.util import free_port, wait_until

API_KEY = "nl-replicas-key-123"
SESSIONS = 4  # first turns, run concurrently
ANSWER = "The number is {n}."


# --- nginx ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_bin() -> Path:
    """nginx from the Debian package; installs it with scripts/install-nginx.sh if needed. Never skips."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install-nginx.lock", "w") as lock:  # one apt-get at a time (pytest-xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-nginx.sh")], capture_output=True,
                              text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"install-nginx.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.exists(), f"install-nginx.sh printed {path}, which does not exist"
    return path


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format replicas '$http_x_session_id|$upstream_addr|$upstream_status|$status|$request_method $uri';
    access_log {dir}/access.log replicas;

    upstream neatlogs_proxy {{
        hash $http_x_session_id consistent;
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=30s;
    }}
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 64m;
        location / {{
            proxy_pass http://neatlogs_proxy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;            # SSE must stream
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: Path, workdir: Path, upstream_ports: tuple[int, int]) -> None:
        self.binary = binary
        self.dir = workdir
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir(exist_ok=True)
        # As root, nginx's workers would switch to www-data, which cannot enter pytest's 0700 tmp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(user=user, dir=self.dir, port_a=upstream_ports[0],
                                               port_b=upstream_ports[1], listen=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        cmd = [str(self.binary), "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")]
        test = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, f"nginx -t failed:\n{test.stderr}"
        with open(self.dir / "nginx.out.log", "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + "/_neatlogs/healthz", timeout=1.0).status_code == 200
            return False

        wait_until(up, 15, interval=0.1, message=f"nginx on {self.url} proxying /_neatlogs/healthz")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def access_log(self) -> list[dict[str, str]]:
        """One dict per proxied request: session id, upstream address(es), statuses, request."""
        path = self.dir / "access.log"
        if not path.exists():
            return []
        keys = ("session_id", "upstream", "upstream_status", "status", "request")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in path.read_text().splitlines() if line]

    def logs(self) -> str:
        parts = []
        for name in ("nginx.conf", "nginx.out.log", "error.log", "access.log"):
            p = self.dir / name
            if p.exists():
                parts.append(f"--- {name} ---\n{p.read_text(errors='replace')[-8000:]}")
        return "\n".join(parts)


# --- a fake LLM that answers each session by its own conversation --------------------------------


class PerConversationLLM(FakeLLM):
    """Concurrent sessions cannot share one scripted sequence: answer from the request itself.

    A request whose last message is a tool result gets the final text answer; any other agent request
    gets one ``read`` tool call on the note named in the latest user message. Title requests are
    answered by the base class.
    """

    def _record_and_pick(self, rec: RecordedRequest) -> Step | None:
        if rec.kind != "main":
            return super()._record_and_pick(rec)
        msgs = rec.messages
        user = [_text(m) for m in msgs if m.get("role") == "user"]
        notes = re.findall(r"\S+/note-(\d+)\.txt", user[-1] if user else "")
        if msgs and msgs[-1].get("role") == "tool":
            step = text_step(ANSWER.format(n=notes[-1] if notes else "?"),
                             usage=Usage(prompt_tokens=1500, completion_tokens=20, cached_tokens=1200))
        else:
            path = re.search(r"\S+/note-\d+\.txt", user[-1] if user else "")
            step = tool_step(("read", {"filePath": path.group(0) if path else "missing.txt"}),
                             usage=Usage(prompt_tokens=1200, completion_tokens=40))
        with self._lock:
            self._requests.append(rec)
            for tc in step.tool_calls:
                self._ids += 1
                tc.id = f"call_{self._id_prefix}_{self._ids}"
            rec.reply_tool_call_ids = [tc.id for tc in step.tool_calls if tc.id]
        return step


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


# --- the test ------------------------------------------------------------------------------------


@pytest.fixture
def per_conversation_llm() -> Iterator[PerConversationLLM]:
    with PerConversationLLM() as fake:
        yield fake


@pytest.fixture
def nginx(nginx_bin: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Nginx]]:
    """Factory: ``nginx(port_a, port_b)`` starts nginx in front of two replicas; stopped at teardown."""
    started: list[Nginx] = []

    def make(port_a: int, port_b: int) -> Nginx:
        n = Nginx(nginx_bin, tmp_path / f"nginx-{len(started)}", (port_a, port_b))
        started.append(n)
        return n.start()

    yield make
    for n in started:
        n.stop()
    if _failed(request):
        for n in started:
            print(f"===== nginx ({n.url}) =====\n{n.logs()}")


def test_sessions_survive_a_killed_replica_behind_nginx(per_conversation_llm: PerConversationLLM,
                                                         fake_collector: FakeCollector, proxy_process,
                                                         run_opencode, nginx, tmp_path: Path) -> None:
    fake = per_conversation_llm
    replicas: list[ProxyProcess] = [
        proxy_process(routes={"fake": fake.url}, endpoint=fake_collector.url, api_key=API_KEY,
                      args=["--idle-timeout", "1"])
        for _ in range(2)
    ]
    assert replicas[0].data_dir != replicas[1].data_dir
    lb: Nginx = nginx(replicas[0].port, replicas[1].port)
    base_url = lb.url + "/fake/v1"

    workdirs: list[Path] = []

    def turn(i: int, prompt: str, args: list[str] | None = None) -> OpencodeRun:
        result = run_opencode(workdirs[i], prompt, base_url, home=tmp_path / f"home-{i}", args=args or [],
                              timeout=90)
        assert result.returncode == 0, result.describe()
        assert ANSWER.format(n=i) in result.stdout, result.describe()
        return result

    def first_turns(n: int) -> None:
        """Start ``n`` new sessions at once: their requests interleave at nginx and at the replicas."""
        new = range(len(workdirs), len(workdirs) + n)
        for i in new:
            wd = tmp_path / f"project-{i}"
            wd.mkdir()
            (wd / f"note-{i}.txt").write_text(f"The number is {i}{i}{i}.\n")
            workdirs.append(wd)
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: turn(i, f"Read {workdirs[i] / f'note-{i}.txt'} and tell me the number."), new))

    t0 = time.monotonic()
    first_turns(SESSIONS)
    # Consistent hashing may put all of them on one replica; add sessions until both serve some.
    while len(set(_replica_by_session(lb, replicas, _sessions(fake, workdirs)).values())) < 2:
        assert len(workdirs) < SESSIONS + 6, "nginx sends every session to the same replica"
        first_turns(1)
    t1 = time.monotonic()

    # Which opencode session is which: a workdir's path appears only in its own session's requests.
    assert all(r.headers.get("x-session-id", "").startswith("ses_") for r in fake.requests), \
        "an LLM request without x-session-id"
    sessions = _sessions(fake, workdirs)
    # Session affinity: nginx sent every request of a session to one replica.
    replica_of = _replica_by_session(lb, replicas, sessions)
    # Wait until every first turn is exported: a SIGKILLed replica exports nothing afterwards.
    wait_until(lambda: all(_turn_exported(fake_collector, fake, s) for s in sessions), timeout=30,
               message="first turns exported by both replicas")

    # Kill the replica that served session 0, then run its second turn (nginx must move it to the
    # survivor) concurrently with a second turn of a session that stays on the survivor.
    victim = replica_of[sessions[0]]
    survivor = 1 - victim
    stayed = [i for i, sid in enumerate(sessions) if replica_of[sid] == survivor]
    second = [0, stayed[0]]
    kill_ns = time.time_ns()
    replicas[victim].kill9()
    assert not replicas[victim].running

    def second_turn(i: int) -> OpencodeRun:
        return turn(i, f"Turn two: read {workdirs[i] / f'note-{i}.txt'} once more.", ["--session", sessions[i]])

    with ThreadPoolExecutor(len(second)) as pool:
        list(pool.map(second_turn, second))
    t2 = time.monotonic()
    late = {r.headers["x-session-id"] for r in fake.requests if r.t_ns > kill_ns}
    assert late == {sessions[i] for i in second}, "a second turn did not continue its session"

    # nginx: session 0 went to the victim until the kill, then (after a refused connect) to the survivor.
    seen0 = [r for r in fake.requests if r.headers["x-session-id"] == sessions[0]]
    n_before = sum(1 for r in seen0 if r.t_ns < kill_ns)
    log0 = _llm_log(lb, sessions[0])
    hops = [e["upstream"].split(", ")[-1] for e in log0]
    assert hops == [_addr(replicas[victim])] * n_before + [_addr(replicas[survivor])] * (len(seen0) - n_before), \
        lb.logs()
    # The first request after the kill tried the dead replica first (refused: 502), then the survivor.
    assert log0[n_before]["upstream"] == f"{_addr(replicas[victim])}, {_addr(replicas[survivor])}", log0
    assert log0[n_before]["upstream_status"] == "502, 200" and all(e["status"] == "200" for e in log0), log0
    assert {e["upstream"] for e in _llm_log(lb, sessions[stayed[0]])} == {_addr(replicas[survivor])}

    wait_until(lambda: all(_turn_exported(fake_collector, fake, sessions[i], after_ns=kill_ns) for i in second),
               timeout=30, message="second turns exported by the survivor")

    # --- every session is exactly one trace with one root; no trace holds two sessions -----------
    everything = fake_collector.spans()
    latest = fake_collector.latest_by_span_id()
    assert all(r.headers.get("x-api-key") == API_KEY for r in fake_collector.requests)
    by_session: dict[str, list[FlatSpan]] = defaultdict(list)
    for s in everything:
        sid = s.attributes.get("neatlogs.conversation.id")
        assert sid in sessions, f"span {s.name} has conversation id {sid!r}"
        by_session[sid].append(s)
    assert set(by_session) == set(sessions)
    sessions_of_trace: dict[str, set[str]] = defaultdict(set)
    for sid, spans in by_session.items():
        trace_ids = {s.trace_id for s in spans}
        assert trace_ids == {trace_id_for(sid)}, f"{sid} is spread over traces {trace_ids}"
        roots = {s.span_id for s in spans if s.name == "opencode.session"}
        assert roots == {root_span_id_for(sid)}, f"{sid} has root span ids {roots}"
        latest_roots = [s for s in latest.values()
                        if s.name == "opencode.session" and s.attributes["neatlogs.conversation.id"] == sid]
        assert len(latest_roots) == 1 and latest_roots[0].parent_span_id == ""
        assert all(s.parent_span_id for s in spans if s.name != "opencode.session")
        for t in trace_ids:
            sessions_of_trace[t].add(sid)
    assert len(sessions_of_trace) == len(sessions)
    assert all(len(sids) == 1 for sids in sessions_of_trace.values()), dict(sessions_of_trace)

    # Each session's trace holds one LLM span per request the fake saw for it; for the moved session,
    # those of turn 1 (exported by the killed replica) and of turn 2 (exported by the survivor).
    for sid in sessions:
        llm = _llm_spans(latest, sid)
        reqs = [r for r in fake.requests if r.headers["x-session-id"] == sid]
        assert len(llm) == len(reqs), f"{sid}: {len(llm)} LLM spans for {len(reqs)} requests"
    llm0 = _llm_spans(latest, sessions[0])
    assert n_before >= 2 and len(seen0) - n_before >= 2  # a tool call and an answer in each turn
    assert sum(1 for s in llm0 if s.start_ns < kill_ns) == n_before
    assert sum(1 for s in llm0 if s.start_ns >= kill_ns) == len(seen0) - n_before
    print(f"sessions per replica: {[sum(1 for s in sessions if replica_of[s] == k) for k in (0, 1)]}, "
          f"killed #{victim}, second turns for sessions {second}; first turns {t1 - t0:.1f}s, "
          f"kill to second turns done {t2 - t1:.1f}s, exports {time.monotonic() - t2:.1f}s")


# --- helpers -------------------------------------------------------------------------------------


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
               for w in ("setup", "call"))


def _addr(p: ProxyProcess) -> str:
    return f"127.0.0.1:{p.port}"


def _sessions(fake: FakeLLM, workdirs: list[Path]) -> list[str]:
    """The opencode session id of each project, in project order."""
    session_of: dict[int, str] = {}
    for rec in fake.main_requests():
        i = _workdir_index(rec, workdirs)
        assert session_of.setdefault(i, rec.headers["x-session-id"]) == rec.headers["x-session-id"]
    assert sorted(session_of) == list(range(len(workdirs)))
    sessions = [session_of[i] for i in range(len(workdirs))]
    assert len(set(sessions)) == len(sessions)
    return sessions


def _workdir_index(rec: RecordedRequest, workdirs: list[Path]) -> int:
    text = " ".join(_text(m) for m in rec.messages)
    hits = {i for i, wd in enumerate(workdirs) if f"{wd}/" in text}
    assert len(hits) == 1, f"cannot tell which project a request belongs to: {hits}"
    return hits.pop()


def _llm_log(lb: Nginx, sid: str) -> list[dict[str, str]]:
    return [e for e in lb.access_log() if e["session_id"] == sid and "/chat/completions" in e["request"]]


def _replica_by_session(lb: Nginx, replicas: list[ProxyProcess], sessions: list[str]) -> dict[str, int]:
    index = {_addr(p): k for k, p in enumerate(replicas)}
    out = {}
    for sid in sessions:
        entries = _llm_log(lb, sid)
        upstreams = {e["upstream"] for e in entries}
        assert entries and len(upstreams) == 1 and upstreams <= set(index), \
            f"{sid} was not routed to exactly one replica: {entries}"
        assert all(e["status"] == "200" for e in entries), entries
        out[sid] = index[upstreams.pop()]
    return out


def _llm_spans(spans: dict[str, FlatSpan], sid: str) -> list[FlatSpan]:
    return [s for s in spans.values()
            if s.name.startswith("opencode.llm.") and s.attributes.get("neatlogs.conversation.id") == sid]


def _turn_exported(collector: FakeCollector, fake: FakeLLM, sid: str, after_ns: int = 0) -> bool:
    """The collector has the session's root, a turn-end marker (after ``after_ns``) and one LLM span per
    request the fake LLM answered for it."""
    latest = collector.latest_by_span_id()
    mine = [s for s in latest.values() if s.attributes.get("neatlogs.conversation.id") == sid]
    n_requests = sum(1 for r in fake.requests if r.headers.get("x-session-id") == sid)
    return (any(s.name == "opencode.session" for s in mine)
            and any(s.name == "neatlogs.trace.complete" and s.start_ns >= after_ns for s in mine)
            and len(_llm_spans(latest, sid)) == n_requests)
