"""Latency benchmark: direct to a fake upstream vs through neatlogs-proxy, in one interleaved run.

    .venv/bin/python bench/latency.py                      # defaults: ~2.5 minutes
    .venv/bin/python bench/latency.py --requests 5000 --sse-requests 300
    .venv/bin/python bench/latency.py --py-spy /tmp/proxy.svg   # also profile the proxy (py-spy installed)

What runs:
  * `bench/_fake_upstream.py` in its own process (raw asyncio/uvloop HTTP/1.1, keep-alive): a small
    non-streamed chat.completion JSON answered at once, or (for `"stream": true`) a chunked SSE
    chat.completion of `--sse-chunks` events with `--sse-delay-ms` between them (usage + [DONE]).
  * the real proxy, `python -m proxy.cli`, as a subprocess with a temp data dir, no NEATLOGS_API_KEY
    (local store) and `--route fake=http://127.0.0.1:<upstream>`; stopped with SIGTERM at the end. It
    runs twice: as shipped (its fast HTTP/1.1 layer, target "proxy") and with `--http-layer mitmproxy`
    (mitmproxy's HTTP layer, target "proxy-mitm"; `--no-mitmproxy-layer` skips it).
  * `bench/_bare_mitmproxy.py`: mitmproxy tuned as the proxy runs it, without our addons (the floor for
    anything forwarding through mitmproxy's HTTP layer; `--no-bare-mitmproxy` skips it), and a plain
    TCP relay (the floor for any extra hop; `--no-relay` skips it).
  * the client: raw asyncio streams on uvloop in this process (no HTTP library overhead), the same code
    for every target, one keep-alive connection per target (8 for the concurrency-8 phase).

Phases (targets interleaved, in rotating order, so machine noise hits all of them equally):
  1. small JSON, concurrency 1: each request to every target in turn; warm-up excluded;
     p50/p90/p99 per target and added (target - direct) p50/p99. 1b: the same, 20 ms idle before each.
  2. small JSON, concurrency 8: alternating fixed-duration batches; req/s per target.
  3. SSE, concurrency 1: interleaved per stream; time to first body chunk (TTFB) and total time.
     3b: the same with every process idle 20 ms before each call (as an agent spaces its calls).
     3c (diagnostic, Linux): back to back again with one SCHED_IDLE busy loop per CPU, so no CPU is ever
     idle when a process wakes. The difference from phase 3 is what the machine's idle exits cost each
     extra hop (large on a virtual machine, where an idle vCPU halts and waking it is a VM exit).

Targets (issue): added p50 <= 1 ms for small JSON and added SSE TTFB p50 <= 1 ms at concurrency 1.
Results: a table on stdout, and bench/results/latency-<date>.{json,md} (unless --no-write).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
now_ns = time.perf_counter_ns

TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_TTFB_MS = 1.0

REQUEST_BODY = json.dumps({
    "model": "fake-bench-model",
    "messages": [
        {"role": "system", "content": "You are a helpful coding assistant. Answer briefly."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "temperature": 0.2,
    "max_tokens": 64,
}).encode()
STREAM_BODY = json.dumps({**json.loads(REQUEST_BODY), "stream": True,
                          "stream_options": {"include_usage": True}}).encode()


# ---------------------------------------------------------------- client ---

@dataclass
class Result:
    status: int
    t_head: int  # ns from request write to end of response headers
    t_first: int  # ns to first body bytes (for content-length bodies: the whole body)
    t_total: int  # ns to the last body byte
    body: bytes
    t_req: int = 0  # ns until the upstream had read the whole request (its x-bench-recv-ns header)


class Conn:
    """One keep-alive HTTP/1.1 connection; minimal request writer and response reader."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def build(self, method: str, path: str, body: bytes = b"", session: str | None = None) -> bytes:
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"host: {self.host}:{self.port}",
                "user-agent: neatlogs-bench/1", "accept: */*"]
        if body:
            head += ["content-type: application/json", "authorization: Bearer sk-bench-not-a-real-key",
                     f"content-length: {len(body)}"]
        if session:
            head += [f"x-neatlogs-session-id: {session}", "x-neatlogs-agent: build"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def send(self, raw: bytes, keep_body: bool = False) -> Result:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        t0 = now_ns()
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        t_head = now_ns()
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = False
        recv = 0
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif k == b"x-bench-recv-ns":
                recv = int(v)
        parts: list[bytes] = []
        t_first = 0
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                data = await reader.readexactly(size + 2)
                if not t_first:
                    t_first = now_ns()
                if keep_body:
                    parts.append(data[:-2])
        elif length >= 0:
            data = await reader.readexactly(length) if length else b""
            t_first = now_ns()
            parts.append(data)
        else:
            raise RuntimeError("response without content-length or chunked encoding (connection-delimited)")
        t_end = now_ns()
        return Result(status, t_head - t0, (t_first or t_end) - t0, t_end - t0, b"".join(parts),
                      recv - t0 if recv else 0)


# ------------------------------------------------------------- processes ---

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPINNER = """
import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


@contextlib.contextmanager
def cpus_kept_busy(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` busy loops at SCHED_IDLE priority: a CPU never goes idle, yet any runnable process preempts the
    loop at once. Yields no processes where SCHED_IDLE is unavailable (the loops must never compete at
    normal priority)."""
    if not hasattr(os, "SCHED_IDLE"):
        yield []
        return
    procs = [subprocess.Popen([sys.executable, "-c", SPINNER], stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        deadline = time.monotonic() + 10
        while not all(_is_idle_class(p) for p in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a busy loop could not switch to SCHED_IDLE")
            time.sleep(0.01)
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _is_idle_class(p: subprocess.Popen[bytes]) -> bool:
    try:
        return os.sched_getscheduler(p.pid) == os.SCHED_IDLE
    except OSError:
        return False


def read_port(p: subprocess.Popen[str], what: str) -> int:
    """The `PORT <n>` line a helper process prints once it listens; kills it if the line is wrong."""
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")
    return int(line.split()[1])


def proxy_env(root: Path) -> dict[str, str]:
    """This environment without NEATLOGS_* settings, with the checkout `root` first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEATLOGS_")}
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_upstream(chunks: int, delay_ms: float, relay_to: int | None = None) -> tuple[subprocess.Popen[str], int]:
    """The fake upstream (or, with relay_to, a plain TCP relay to it) in its own process."""
    extra = ["--relay-to", str(relay_to)] if relay_to else []
    p = subprocess.Popen([sys.executable, str(BENCH / "_fake_upstream.py"), "--port", "0",
                          "--sse-chunks", str(chunks), "--sse-delay-ms", str(delay_ms), *extra],
                         stdout=subprocess.PIPE, text=True)
    return p, read_port(p, "fake upstream")


def start_bare_mitmproxy(upstream_port: int, confdir: Path, root: Path = ROOT, python: str | None = None,
                         stock: bool = False) -> tuple[subprocess.Popen[str], int]:
    """mitmproxy without our addons (bench/_bare_mitmproxy.py), tuned by the same checkout's proxy.tuning."""
    p = subprocess.Popen([python or sys.executable, str(BENCH / "_bare_mitmproxy.py"), "--upstream",
                          str(upstream_port), "--confdir", str(confdir), *(["--stock"] if stock else [])],
                         cwd=root, env=proxy_env(root), stdout=subprocess.PIPE, text=True)
    return p, read_port(p, "bare mitmproxy")


def start_proxy(upstream_port: int, data_dir: Path, cprofile: str | None, root: Path = ROOT,
                python: str | None = None, script: Path | None = None,
                extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = proxy_env(root)
    cmd = [python or sys.executable]
    if cprofile:
        cmd += ["-m", "cProfile", "-o", cprofile]
    cmd += [str(script)] if script else ["-m", "proxy.cli"]
    cmd += ["--port", str(port), "--data-dir", str(data_dir),
            "--route", f"fake=http://127.0.0.1:{upstream_port}", "--log-level", "warning", *extra]
    p = subprocess.Popen(cmd, cwd=root, env=env)
    return p, port


async def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited during startup with code {proc.returncode}")
        try:
            c = await Conn("127.0.0.1", port, "").open()
            try:
                r = await asyncio.wait_for(c.send(c.build("GET", "/_neatlogs/healthz")), 2)
                if r.status == 200:
                    return
            finally:
                c.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("proxy did not become healthy")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ----------------------------------------------------------------- stats ---

def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ns: list[int]) -> dict[str, float]:
    ms = [x / 1e6 for x in ns]
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms) if ms else float("nan"), "min": min(ms) if ms else float("nan")}


@dataclass
class Report:
    machine: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- phases ---

@dataclass
class Target:
    name: str  # "direct", "proxy", "proxy-mitm", "mitmproxy" (bare, the floor for mitmproxy itself) or "relay"
    port: int
    prefix: str  # path prefix: "" direct, "/fake" through the proxy

    def session(self, tag: str) -> str | None:
        return tag if self.name.startswith("proxy") else None  # the plugin's headers only make sense to the proxy


def rotations(targets: list[Target], i: int) -> list[Target]:
    """Order of the legs for iteration i: rotate, and reverse every other full rotation."""
    k = i % len(targets)
    order = targets[k:] + targets[:k]
    return order[::-1] if (i // len(targets)) % 2 else order


def added(res: dict[str, dict[str, float]], name: str, base: str = "direct") -> dict[str, float]:
    a, b = res[name], res[base]
    return {q: a[q] - b[q] for q in ("p50", "p90", "p99", "mean")}


async def phase_small_c1(targets: list[Target], n: int, warmup: int, gap: float = 0.0) -> dict[str, Any]:
    conns = {t.name: await Conn("127.0.0.1", t.port, t.prefix).open() for t in targets}
    acc: dict[str, dict[str, list[int]]] = {t.name: {"total": [], "request_leg": [], "response_leg": []}
                                            for t in targets}
    for i in range(warmup + n):
        for t in rotations(targets, i):
            c = conns[t.name]
            if gap:
                await asyncio.sleep(gap)  # every process idle, as between real LLM calls
            r = await c.send(c.build("POST", "/v1/chat/completions", REQUEST_BODY, t.session(f"bench-c1-{i // 20}")))
            if r.status != 200:
                raise RuntimeError(f"{t.name}: HTTP {r.status}")
            if i >= warmup:
                acc[t.name]["total"].append(r.t_total)
                if r.t_req:
                    acc[t.name]["request_leg"].append(r.t_req)
                    acc[t.name]["response_leg"].append(r.t_total - r.t_req)
    for c in conns.values():
        c.close()
    out: dict[str, Any] = {k: {m: summary(v) for m, v in acc[k].items()} for k in acc}
    tot = {k: out[k]["total"] for k in acc}
    legs = {k: {m: out[k][m]["p50"] for m in ("request_leg", "response_leg")} for k in acc}
    out["added"] = {k: {**added(tot, k), "request_leg_p50": legs[k]["request_leg"] - legs["direct"]["request_leg"],
                        "response_leg_p50": legs[k]["response_leg"] - legs["direct"]["response_leg"],
                        "ratio_p50": tot[k]["p50"] / tot["direct"]["p50"]}
                    for k in acc if k != "direct"}
    return out


async def phase_small_c8(targets: list[Target], seconds: float, batches: int, conc: int = 8) -> dict[str, Any]:
    conns = {t.name: [await Conn("127.0.0.1", t.port, t.prefix).open() for _ in range(conc)] for t in targets}
    counts = {t.name: 0 for t in targets}
    elapsed = {t.name: 0.0 for t in targets}
    lat: dict[str, list[int]] = {t.name: [] for t in targets}

    async def worker(t: Target, c: Conn, deadline: float, out: list[int], idx: int) -> int:
        done = 0
        raw = c.build("POST", "/v1/chat/completions", REQUEST_BODY, t.session(f"bench-c8-{idx}"))
        while time.perf_counter() < deadline:
            r = await c.send(raw)
            if r.status != 200:
                raise RuntimeError(f"{t.name}: HTTP {r.status}")
            out.append(r.t_total)
            done += 1
        return done

    async def batch(t: Target, dur: float, record: bool) -> None:
        t0 = time.perf_counter()
        sink: list[int] = []
        n = sum(await asyncio.gather(*(worker(t, c, t0 + dur, sink, i) for i, c in enumerate(conns[t.name]))))
        if record:
            counts[t.name] += n
            elapsed[t.name] += time.perf_counter() - t0
            lat[t.name] += sink

    for t in targets:
        await batch(t, 0.3, False)  # warm-up
    per = seconds / (len(targets) * batches)
    for b in range(batches):
        for t in rotations(targets, b):
            await batch(t, per, True)
    for cs in conns.values():
        for c in cs:
            c.close()
    out: dict[str, Any] = {"concurrency": conc}
    for t in targets:
        out[t.name] = {"requests": counts[t.name], "seconds": elapsed[t.name],
                       "rps": counts[t.name] / elapsed[t.name], "latency": summary(lat[t.name])}
    out["ratio_rps"] = {t.name: out[t.name]["rps"] / out["direct"]["rps"]
                        for t in targets if t.name != "direct"}
    return out


async def phase_sse(targets: list[Target], n: int, warmup: int, gap: float = 0.0) -> dict[str, Any]:
    conns = {t.name: await Conn("127.0.0.1", t.port, t.prefix).open() for t in targets}
    acc: dict[str, dict[str, list[int]]] = {t.name: {"head": [], "ttfb": [], "total": [], "request_leg": [],
                                                     "head_leg": [], "ttfb_b2b": [], "ttfb_after_other": []}
           for t in targets}
    identical = True
    prev = None
    for i in range(warmup + n):
        bodies = {}
        for t in rotations(targets, i):
            c = conns[t.name]
            if gap:
                await asyncio.sleep(gap)  # every process idle and done with the previous call, as in an agent loop
            r = await c.send(c.build("POST", "/v1/chat/completions", STREAM_BODY, t.session(f"bench-sse-{i // 10}")),
                             keep_body=(i == warmup))
            if r.status != 200:
                raise RuntimeError(f"{t.name}: HTTP {r.status}")
            bodies[t.name] = r.body
            if i >= warmup:
                a = acc[t.name]
                a["head"].append(r.t_head)
                a["ttfb"].append(r.t_first)
                a["ttfb_b2b" if prev == t.name else "ttfb_after_other"].append(r.t_first)
                a["total"].append(r.t_total)
                if r.t_req:
                    a["request_leg"].append(r.t_req)
                    a["head_leg"].append(r.t_head - r.t_req)
            prev = t.name
        if i == warmup:
            identical = bodies["direct"].endswith(b"data: [DONE]\n\n") and all(
                b == bodies["direct"] for b in bodies.values())
    for c in conns.values():
        c.close()
    out: dict[str, Any] = {k: {m: summary(v) for m, v in acc[k].items()} for k in acc}
    out["added"] = {k: {m: added({x: out[x][m] for x in acc}, k) for m in acc[k]}
                    for k in acc if k != "direct"}
    out["body_identical"] = identical
    return out


# ---------------------------------------------------------------- output ---

def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        facts["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):  # how CPUs idle: what a wake-up costs each hop
        facts["cpuidle_driver"] = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    with contextlib.suppress(OSError):
        facts["guest_halt_poll_ns"] = int(Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read_text())
    with contextlib.suppress(OSError):
        facts["virtual_machine"] = " hypervisor " in Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].replace(
            "\n", " ") + " "
    for mod in ("mitmproxy", "uvloop"):
        try:
            if mod == "mitmproxy":
                from mitmproxy.version import VERSION as v
            else:
                import uvloop

                v = uvloop.__version__
            facts[mod] = v
        except ImportError:
            facts[mod] = None
    with contextlib.suppress(Exception):
        facts["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                             text=True, check=True).stdout.strip()
    return facts


def sse_rows(res: dict[str, Any], names: list[str], label: dict[str, str],
             cols: list[tuple[str, str, bool]]) -> list[str]:
    """One row per target, then one "added by" row per non-direct target; `cols` are (metric, quantile,
    bold in the proxy's added row)."""
    rows = [f"| {label[k]} | " + " | ".join(f"{res[k][m][q]:.3f}" for m, q, _ in cols) + " |" for k in names]
    for k in names[1:]:
        b = "**" if k == "proxy" else ""
        cells = [f"{b if bold else ''}{res['added'][k][m][q]:.3f}{b if bold else ''}" for m, q, bold in cols]
        rows.append(f"| {b}added by {k}{b} | " + " | ".join(cells) + " |")
    return rows


def sse_table(title: str, res: dict[str, Any], names: list[str], label: dict[str, str],
              cols: list[tuple[str, str, str, bool]]) -> list[str]:
    """A markdown table of one SSE phase; `cols` are (header, metric, quantile, bold in the proxy's added
    row)."""
    head = f"| {title} | " + " | ".join(c[0] for c in cols) + " |"
    return [head, "|---|" + "---:|" * len(cols), *sse_rows(res, names, label, [c[1:] for c in cols])]


def render_table(rep: Report) -> str:
    r = rep.results
    out: list[str] = []
    m = rep.machine
    out.append(f"machine: nproc={m.get('nproc')} cpu={m.get('cpu_model', '?')} virtual={m.get('virtual_machine', '?')} "
               f"cpuidle={m.get('cpuidle_driver', '?')} guest_halt_poll_ns={m.get('guest_halt_poll_ns', '?')} "
               f"python={m.get('python')} "
               f"mitmproxy={m.get('mitmproxy')} uvloop={m.get('uvloop')} commit={m.get('git_commit', '?')} "
               f"loadavg start={m.get('loadavg_at_start')} end={m.get('loadavg_at_end')}")
    c = rep.config
    out.append(f"config: requests={c['requests']} sse_requests={c['sse_requests']} sse_chunks={c['sse_chunks']} "
               f"sse_delay_ms={c['sse_delay_ms']} c8_seconds={c['c8_seconds']}; targets interleaved per request")
    out.append("")
    names = [n for n in ("direct", "proxy", "proxy-mitm", "mitmproxy", "relay") if n in r["small_c1"]]
    label = {"direct": "direct", "proxy": "**proxy**", "proxy-mitm": "proxy on mitmproxy's HTTP layer",
             "mitmproxy": "bare mitmproxy (its HTTP layer, no addons)", "relay": "tcp relay (floor)"}
    s = r["small_c1"]
    out.append("| small JSON, concurrency 1 (ms) | p50 | p90 | p99 | mean |")
    out.append("|---|---:|---:|---:|---:|")
    for k in names:
        x = s[k]["total"]
        out.append(f"| {label[k]} | {x['p50']:.3f} | {x['p90']:.3f} | {x['p99']:.3f} | {x['mean']:.3f} |")
    for k in names[1:]:
        x = s["added"][k]
        b = "**" if k == "proxy" else ""
        out.append(f"| {b}added by {k}{b} | {b}{x['p50']:.3f}{b} | {x['p90']:.3f} | {b}{x['p99']:.3f}{b} | "
                   f"{x['mean']:.3f} |")
    out.append("")
    out.append("where the added small-JSON p50 goes (request leg: client write -> upstream has read the request; "
               "response leg: upstream -> client has the whole response):")
    for k in names[1:]:
        x = s["added"][k]
        out.append(f"  {k}: request leg +{x['request_leg_p50']:.3f} ms, response leg +{x['response_leg_p50']:.3f} ms"
                   f" (p50 ratio vs direct {x['ratio_p50']:.1f}x)")
    if "small_c1_idle" in r:
        s2 = r["small_c1_idle"]
        out.append("")
        out.append(f"| small JSON, concurrency 1, {c['idle_gap_ms']:.0f} ms idle before each request (ms) "
                   "| p50 | p90 | p99 | req leg p50 |")
        out.append("|---|---:|---:|---:|---:|")
        for k in names:
            x = s2[k]["total"]
            out.append(f"| {label[k]} | {x['p50']:.3f} | {x['p90']:.3f} | {x['p99']:.3f} | "
                       f"{s2[k]['request_leg']['p50']:.3f} |")
        for k in names[1:]:
            x = s2["added"][k]
            out.append(f"| added by {k} | {x['p50']:.3f} | {x['p90']:.3f} | {x['p99']:.3f} | "
                       f"{x['request_leg_p50']:.3f} |")
    out.append("")
    t = r["small_c8"]
    out.append("| small JSON, concurrency 8 | req/s | vs direct | p50 ms | p99 ms |")
    out.append("|---|---:|---:|---:|---:|")
    for k in names:
        x = t[k]
        ratio = "1" if k == "direct" else f"{t['ratio_rps'][k]:.3f}"
        out.append(f"| {label[k]} | {x['rps']:.0f} | {ratio}x | {x['latency']['p50']:.3f} | "
                   f"{x['latency']['p99']:.3f} |")
    out.append("")
    e = r["sse_c1"]
    out += sse_table("SSE, concurrency 1 (ms)", e, names, label, [
        ("headers p50", "head", "p50", False), ("TTFB p50", "ttfb", "p50", True), ("TTFB p99", "ttfb", "p99", True),
        ("total p50", "total", "p50", True), ("total p99", "total", "p99", False)])
    out.append("")
    def ms(v: float) -> str:
        return "n/a" if v != v else f"{v:.3f} ms"  # NaN: no such stream in this rotation

    for k in names[1:]:
        x = e["added"][k]
        out.append(f"SSE {k}: request leg +{x['request_leg']['p50']:.3f} ms, response-headers leg "
                   f"+{x['head_leg']['p50']:.3f} ms (p50); TTFB p50 right after its own previous stream "
                   f"{ms(e[k]['ttfb_b2b']['p50'])}, after another target's {ms(e[k]['ttfb_after_other']['p50'])} "
                   f"(direct: {ms(e['direct']['ttfb_b2b']['p50'])} / {ms(e['direct']['ttfb_after_other']['p50'])})")
    if "sse_c1_idle" in r:
        out.append("")
        out += sse_table(f"SSE, concurrency 1, {c['idle_gap_ms']:.0f} ms idle before each call (ms)", r["sse_c1_idle"],
                         names, label, [("TTFB p50", "ttfb", "p50", True), ("TTFB p99", "ttfb", "p99", False),
                                        ("req leg p50", "request_leg", "p50", False),
                                        ("total p50", "total", "p50", False)])
    if "sse_c1_busy" in r:
        e3 = r["sse_c1_busy"]
        out.append("")
        out += sse_table(f"SSE, concurrency 1, back to back, CPUs kept out of idle by {rep.checks.get('busy_loops')} "
                         "SCHED_IDLE busy loops (diagnostic, ms)", e3, names, label,
                         [("TTFB p50", "ttfb", "p50", True), ("TTFB p99", "ttfb", "p99", False),
                          ("req leg p50", "request_leg", "p50", False), ("headers leg p50", "head_leg", "p50", False),
                          ("total p50", "total", "p50", False)])
        share = ", ".join(f"{k} {e['added'][k]['ttfb']['p50'] - e3['added'][k]['ttfb']['p50']:+.3f} ms"
                          for k in names[1:])
        out.append(f"added TTFB p50 back to back that is the machine waking idle CPUs (phase 3 minus this): {share}")
        share = ", ".join(f"{k} {e['added'][k]['total']['p50'] - e3['added'][k]['total']['p50']:+.3f} ms"
                          for k in names[1:])
        out.append(f"added stream total p50 that is the machine waking idle CPUs (phase 3 minus this): {share}")
    def difference(a: str, b: str) -> str:
        """p50 added by target a minus added by target b, per phase."""
        def d(added: dict[str, Any], metric: str | None) -> float:
            x, y = added[a], added[b]
            return (x[metric]["p50"] - y[metric]["p50"]) if metric else (x["p50"] - y["p50"])

        parts = [f"small JSON {d(s['added'], None):+.3f} ms", f"SSE TTFB back to back {d(e['added'], 'ttfb'):+.3f} ms"]
        if "sse_c1_idle" in r:
            parts.append(f"SSE TTFB {c['idle_gap_ms']:.0f} ms idle {d(r['sse_c1_idle']['added'], 'ttfb'):+.3f} ms")
        return ", ".join(parts)

    if "proxy-mitm" in names:
        out.append("")
        out.append("what the fast HTTP layer changes (added by proxy minus added by proxy-mitm, p50): "
                   + difference("proxy", "proxy-mitm"))
    if "mitmproxy" in names:
        ours = "proxy-mitm" if "proxy-mitm" in names else "proxy"
        out.append("")
        out.append(f"what our addons add beyond mitmproxy itself (added by {ours} minus added by bare mitmproxy, "
                   "p50): " + difference(ours, "mitmproxy"))
    out.append("")
    ck = rep.checks
    out.append(f"proxy CPU (all threads) per proxied small request: "
               f"{ck.get('proxy_cpu_ms_per_small_request', 0):.3f} ms; "
               f"per SSE stream: {ck.get('proxy_cpu_ms_per_sse_request', 0):.3f} ms")
    out.append(f"SSE body byte-identical on every path: {e['body_identical']}; spans in the proxy's local store after "
               f"the run: {ck.get('spans_stored')}; capture errors: {ck.get('capture_errors')}")
    out.append(f"new upstream connections (all hops, keep-alive check): concurrency-1 phase "
               f"({c['requests'] + c['warmup']} requests each) {ck.get('upstream_connections_opened_c1')}, SSE phase "
               f"({c['sse_requests'] + c['sse_warmup']} streams each) {ck.get('upstream_connections_opened_sse')}")
    out.append("")
    for name, ok, val, target in ck["targets"]:
        out.append(f"target {name}: {val:.3f} ms <= {target:.1f} ms  {'PASS' if ok else 'MISS'}")
    return "\n".join(out)


def write_results(rep: Report, out_dir: Path, table: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    jpath = out_dir / f"latency-{stamp}.json"
    mpath = out_dir / f"latency-{stamp}.md"
    data = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": rep.machine,
            "config": rep.config, "results": rep.results, "checks": rep.checks}
    jpath.write_text(json.dumps(data, indent=2, default=str) + "\n")
    mpath.write_text(f"# neatlogs-proxy latency, {stamp}\n\nProduced by `bench/latency.py "
                     f"{' '.join(shlex.quote(a) for a in sys.argv[1:])}`".rstrip() + " (defaults, unless options are "
                     "shown).\n\n```\n" + table.split("\n\n", 1)[0]
                     + "\n```\n\n" + table.split("\n\n", 1)[1] + "\n\nRaw numbers: "
                     f"[{jpath.name}]({jpath.name}).\n")
    return jpath, mpath


# ------------------------------------------------------------------ main ---

async def http_get(port: int, path: str) -> bytes:
    c = await Conn("127.0.0.1", port, "").open()
    try:
        return (await c.send(c.build("GET", path), keep_body=True)).body
    finally:
        c.close()


async def upstream_connections_async(port: int) -> int:
    return int(json.loads(await http_get(port, "/_stats"))["connections"])


async def run_phases(args: argparse.Namespace, targets: list[Target], ppid: int, rep: Report) -> None:
    uport = targets[0].port
    names = "/".join(t.name for t in targets)
    print(f"[1/3] small JSON, concurrency 1: {args.requests} requests per target ({names}, interleaved) "
          f"+{args.warmup} warm-up...", file=sys.stderr)
    conns0 = await upstream_connections_async(uport)
    cpu0 = cpu_seconds(ppid)
    rep.results["small_c1"] = await phase_small_c1(targets, args.requests, args.warmup)
    cpu1 = cpu_seconds(ppid)
    rep.checks["proxy_cpu_ms_per_small_request"] = (cpu1 - cpu0) * 1000 / (args.requests + args.warmup)
    extra = 1  # our own /_stats connection
    rep.checks["upstream_connections_opened_c1"] = await upstream_connections_async(uport) - conns0 - extra
    if args.idle_requests:
        print(f"[1b] small JSON, concurrency 1, {args.idle_gap_ms:.0f} ms idle before each request: "
              f"{args.idle_requests} per target...", file=sys.stderr)
        rep.results["small_c1_idle"] = await phase_small_c1(targets, args.idle_requests, 10, args.idle_gap_ms / 1000)
    print(f"[2/3] small JSON, concurrency 8: {args.c8_seconds:.0f} s in alternating batches...", file=sys.stderr)
    rep.results["small_c8"] = await phase_small_c8(targets, args.c8_seconds, args.c8_batches)
    print(f"[3/3] SSE ({args.sse_chunks} events, {args.sse_delay_ms} ms apart), concurrency 1: "
          f"{args.sse_requests} streams per target +{args.sse_warmup} warm-up...", file=sys.stderr)
    conns2 = await upstream_connections_async(uport)
    cpu2 = cpu_seconds(ppid)
    rep.results["sse_c1"] = await phase_sse(targets, args.sse_requests, args.sse_warmup)
    cpu3 = cpu_seconds(ppid)
    rep.checks["proxy_cpu_ms_per_sse_request"] = (cpu3 - cpu2) * 1000 / (args.sse_requests + args.sse_warmup)
    rep.checks["upstream_connections_opened_sse"] = await upstream_connections_async(uport) - conns2 - extra
    if args.sse_idle_requests:
        print(f"[3b] SSE, concurrency 1, {args.idle_gap_ms:.0f} ms idle before each call: "
              f"{args.sse_idle_requests} streams per target...", file=sys.stderr)
        rep.results["sse_c1_idle"] = await phase_sse(targets, args.sse_idle_requests, args.sse_warmup,
                                                     args.idle_gap_ms / 1000)
    if args.busy_cpus_requests:
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        with cpus_kept_busy(ncpu) as loops:
            if not loops:
                print("[3c] skipped: this OS has no SCHED_IDLE", file=sys.stderr)
                return
            print(f"[3c] SSE back to back, {len(loops)} SCHED_IDLE busy loops keeping the CPUs out of idle "
                  f"(diagnostic): {args.busy_cpus_requests} streams per target...", file=sys.stderr)
            rep.results["sse_c1_busy"] = await phase_sse(targets, args.busy_cpus_requests, args.sse_warmup)
            rep.checks["busy_loops"] = len(loops)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--requests", type=int, default=3000, help="small JSON requests each way, concurrency 1")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests each way (excluded)")
    ap.add_argument("--idle-requests", type=int, default=150,
                    help="small JSON requests per target with an idle gap before each (0 = skip)")
    ap.add_argument("--idle-gap-ms", type=float, default=20.0)
    ap.add_argument("--sse-requests", type=int, default=200, help="SSE streams each way, concurrency 1")
    ap.add_argument("--sse-idle-requests", type=int, default=150,
                    help="SSE streams per target with an idle gap (--idle-gap-ms) before each (0 = skip)")
    ap.add_argument("--busy-cpus-requests", type=int, default=100,
                    help="SSE streams per target back to back with the CPUs kept out of idle by SCHED_IDLE busy "
                         "loops: a diagnostic of the machine's wake-up cost (0 = skip)")
    ap.add_argument("--sse-warmup", type=int, default=10)
    ap.add_argument("--sse-chunks", type=int, default=50, help="SSE events per stream (incl. usage and [DONE])")
    ap.add_argument("--sse-delay-ms", type=float, default=1.0, help="upstream delay before each SSE event")
    ap.add_argument("--c8-seconds", type=float, default=8.0, help="total concurrency-8 time (split both ways)")
    ap.add_argument("--c8-batches", type=int, default=4, help="alternating batches per side at concurrency 8")
    ap.add_argument("--no-relay", action="store_true", help="skip the plain TCP relay baseline target")
    ap.add_argument("--no-mitmproxy-layer", action="store_true",
                    help="skip the proxy-mitm target (the proxy with --http-layer mitmproxy)")
    ap.add_argument("--no-bare-mitmproxy", action="store_true",
                    help="skip the bare-mitmproxy target (mitmproxy tuned as ours, without our addons)")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--no-write", action="store_true", help="print only; don't write bench/results/")
    ap.add_argument("--py-spy-rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--py-spy", metavar="OUT", help="profile the proxy with `py-spy record` during the run "
                    "(.svg flamegraph, .txt collapsed stacks, .json speedscope)")
    ap.add_argument("--cprofile", metavar="OUT", help="run the proxy under cProfile (skews its latency)")
    ap.add_argument("--proxy-python", metavar="PYTHON",
                    help="interpreter for the proxy (A/B of Python versions); default: this one")
    ap.add_argument("--proxy-script", type=Path, metavar="PY",
                    help="start the proxy with this script (same arguments as proxy.cli) instead of "
                         "`-m proxy.cli`: experiments that patch the proxy before running it")
    ap.add_argument("--proxy-root", type=Path, default=ROOT,
                    help="run the proxy from another checkout (A/B experiments); default: this repo")
    args = ap.parse_args(argv)

    try:
        import uvloop

        loop_runner = uvloop.run
    except ImportError:  # pragma: no cover
        loop_runner = asyncio.run

    rep = Report(machine=machine_facts(), config={k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()})
    t_start = time.monotonic()
    upstream, uport = start_upstream(args.sse_chunks, args.sse_delay_ms)
    tmp = tempfile.TemporaryDirectory(prefix="neatlogs-bench-")
    data_dir = Path(tmp.name)
    proxy, pport = start_proxy(uport, data_dir, args.cprofile, args.proxy_root.resolve(), args.proxy_python,
                               args.proxy_script.resolve() if args.proxy_script else None)
    spy: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[str] | None = None
    bare: subprocess.Popen[str] | None = None
    targets = [Target("direct", uport, ""), Target("proxy", pport, "/fake")]
    proxy_mitm: subprocess.Popen[bytes] | None = None
    if not args.no_mitmproxy_layer:
        proxy_mitm, mport = start_proxy(uport, data_dir / "mitmproxy-layer", None, args.proxy_root.resolve(),
                                        args.proxy_python, args.proxy_script.resolve() if args.proxy_script else None,
                                        ("--http-layer", "mitmproxy"))
        targets.append(Target("proxy-mitm", mport, "/fake"))
    if not args.no_bare_mitmproxy:
        bare, bport = start_bare_mitmproxy(uport, data_dir / "bare-mitmproxy", args.proxy_root.resolve(),
                                           args.proxy_python)
        targets.append(Target("mitmproxy", bport, ""))
    if not args.no_relay:
        relay, rport = start_upstream(args.sse_chunks, args.sse_delay_ms, relay_to=uport)
        targets.append(Target("relay", rport, ""))
    try:
        loop_runner(wait_healthy(pport, proxy))
        if proxy_mitm is not None:
            loop_runner(wait_healthy(targets[2].port, proxy_mitm))
        if args.py_spy:
            fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(args.py_spy).suffix, "flamegraph")
            exe = Path(sys.executable).with_name("py-spy")
            spy = subprocess.Popen([str(exe) if exe.exists() else "py-spy", "record", "--pid", str(proxy.pid),
                                    "--rate", str(args.py_spy_rate), "--threads", "--format", fmt,
                                    "--output", args.py_spy],
                                   stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        loop_runner(run_phases(args, targets, proxy.pid, rep))
        with contextlib.suppress(Exception):
            metrics = loop_runner(http_get(pport, "/_neatlogs/metrics")).decode(errors="replace")
            errs = [ln for ln in metrics.splitlines() if "capture_errors" in ln and not ln.startswith("#")]
            rep.checks["capture_errors"] = sum(float(ln.rsplit(" ", 1)[1]) for ln in errs) if errs else 0
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        rep.checks["proxy_exit_code"] = stop(proxy)
        if proxy_mitm is not None:
            rep.checks["proxy_mitm_exit_code"] = stop(proxy_mitm)
        if relay is not None:
            stop(relay, 5)
        if bare is not None:
            stop(bare, 5)
        stop(upstream, 5)
    db = data_dir / "traces.db"
    with contextlib.suppress(Exception):
        con = sqlite3.connect(db)
        rep.checks["spans_stored"] = con.execute("select count(*) from spans").fetchone()[0]
        con.close()
    tmp.cleanup()
    rep.checks["wall_seconds"] = round(time.monotonic() - t_start, 1)
    with contextlib.suppress(OSError):
        rep.machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    small = rep.results["small_c1"]["added"]["proxy"]["p50"]
    ttfb = rep.results["sse_c1"]["added"]["proxy"]["ttfb"]["p50"]
    rep.checks["targets"] = [
        ("proxy added p50, small JSON, c1", small <= TARGET_ADDED_P50_MS, small, TARGET_ADDED_P50_MS),
        ("proxy added SSE TTFB p50, c1, calls back to back", ttfb <= TARGET_ADDED_TTFB_MS, ttfb,
         TARGET_ADDED_TTFB_MS),
    ]
    if "sse_c1_idle" in rep.results:
        idle = rep.results["sse_c1_idle"]["added"]["proxy"]["ttfb"]["p50"]
        rep.checks["targets"].append((f"proxy added SSE TTFB p50, c1, {args.idle_gap_ms:.0f} ms idle before each call",
                                      idle <= TARGET_ADDED_TTFB_MS, idle, TARGET_ADDED_TTFB_MS))
    table = render_table(rep)
    print(table)
    print(f"\nwall time {rep.checks['wall_seconds']} s", file=sys.stderr)
    if not args.no_write:
        jpath, mpath = write_results(rep, args.out_dir, table)
        print(f"wrote {mpath.relative_to(ROOT) if mpath.is_relative_to(ROOT) else mpath} and {jpath.name}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
