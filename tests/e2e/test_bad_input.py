"""Bad input against the live proxy: every case is forwarded or refused with a clear error, and recorded.

Clients send malformed, binary, empty, oddly typed, huge or truncated requests; upstreams answer with
garbage SSE, cut chunked encoding, corrupt compression, absurd usage numbers; the plugin posts broken
event batches. For each case the client's status code and what the proxy recorded are checked, and
the proxy stays healthy throughout (and keeps exporting: one odd value must not poison a batch).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_byte_exact import Canned, Replay, chunk_event, sse
from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.util import wait_until

API_KEY = "nl-bad-input"

ABSURD = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10**30, "completion_tokens": -5, "total_tokens": "lots",
              "prompt_tokens_details": {"cached_tokens": 1e300}}}).encode()

UPSTREAM = {
    "sse-garbage": Canned("200 OK", [("Content-Type", "text/event-stream")],
                          sse(chunk_event("a"), chunk_event("", "stop"),
                              garbage=b"::::\nnot a field\n\xff\xfe\ndata: {broken\n\nevent: x\ndata: [1,2\n\n"),
                          "chunked"),
    "sse-invalid-utf8": Canned("200 OK", [("Content-Type", "text/event-stream")],
                               [b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xc3\x28"}}]}\n\n',
                                b"data: [DONE]\n\n"], "chunked"),
    "chunked-cut": Canned("200 OK", [("Content-Type", "text/event-stream")], sse(chunk_event("par")),
                          "chunked", extra={"cut": "data: {\"choi"}),
    "gzip-corrupt": Canned("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                           [b"\x1f\x8b\x08\x00" + b"\x00garbage" * 20]),
    "absurd-usage": Canned("200 OK", [("Content-Type", "application/json")], [ABSURD]),
    "html-200": Canned("200 OK", [("Content-Type", "text/html")], [b"<html>surprise</html>"]),
    "json": Canned("200 OK", [("Content-Type", "application/json")], [b'{"choices": []}']),
}


@dataclass
class Case:
    name: str
    send: Callable[[str, str], int]  # (proxy url, session id) -> status the client saw
    status: int | tuple[int, ...]
    recorded: Callable[[dict[str, Any]], bool] | None = None  # check on the session's LLM span attributes
    exported: bool = False  # wait for it at the collector too


def post(route: str, body: bytes, ctype: str | None = "application/json", extra: dict[str, str] | None = None,
         stream: bool = False) -> Callable[[str, str], int]:
    def send(url: str, sid: str) -> int:
        headers = {"x-session-id": sid, **(extra or {})}
        if ctype:
            headers["content-type"] = ctype
        try:
            with httpx.Client(timeout=20) as c, c.stream("POST", f"{url}/{route}/v1/chat/completions", content=body,
                                                         headers=headers) as r:
                for _ in r.iter_raw():
                    pass
                return r.status_code
        except httpx.RemoteProtocolError:
            return -1  # the upstream cut the response; the client saw the cut

    return send


def raw(data: bytes) -> Callable[[str, str], int]:
    """Bytes straight onto a socket (malformed HTTP); returns the status the proxy answered, 0 for none."""

    def send(url: str, sid: str) -> int:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(data.replace(b"SID", sid.encode()))
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        if not buf:
            return 0
        status = int(buf.split(b" ", 2)[1])
        if status >= 400:  # every error the proxy itself produces is JSON
            body = buf.split(b"\r\n\r\n", 1)[1]
            assert "error" in json.loads(body), buf
        return status

    return send


def capture_error(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: text in a.get("neatlogs.llm.request.capture_error", "")


def error_type(t: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a.get("error.type") == t


GOOD = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()

CASES = [
    Case("malformed-json", post("fake", b'{"model": "m", "messages": ['), 200, capture_error("not JSON")),
    Case("binary-body", post("fake", os.urandom(4096), "application/octet-stream"), 200, capture_error("not JSON")),
    Case("empty-body", post("fake", b""), 200, capture_error("empty request body")),
    Case("no-content-type", post("fake", GOOD, None), 200, lambda a: a["neatlogs.llm.model_name"] == "fake-model"),
    Case("wrong-content-type", post("fake", GOOD, "text/plain"), 200,
         lambda a: a["neatlogs.llm.model_name"] == "fake-model"),
    Case("invalid-utf8-json", post("fake", b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}'),
         200, capture_error("not JSON")),
    Case("lone-surrogates-and-absurd-params",
         post("fake", b'{"model":"m\\udcff","max_tokens":1000000000000000000000000000000,"temperature":1e308,'
                      b'"messages":[{"role":"user","content":"bad \\ud800 text"}]}'),
         200, lambda a: "bad" in a["input.value"], exported=True),
    Case("gzip-corrupt-request", post("up/json", b"\x1f\x8b\x08\x00 not gzip", extra={"content-encoding": "gzip"}),
         200, capture_error("not JSON")),
    Case("huge-header", post("fake", GOOD, extra={"x-huge": "h" * 60_000}), 200),
    # The fake upstream (Python's http.server) refuses more than 100 headers: its 431 is passed on, recorded.
    Case("many-headers", post("fake", GOOD, extra={f"x-h{i}": str(i) for i in range(300)}), 431,
         error_type("http_431")),
    Case("deeply-nested-json", post("up/json", b"[" * 100_000), 200, capture_error("not JSON")),
    Case("sse-garbage-lines", post("up/sse-garbage", GOOD), 200,
         lambda a: a.get("neatlogs.llm.output_messages.0.content") == "a" and "error.type" not in a),
    Case("sse-invalid-utf8", post("up/sse-invalid-utf8", GOOD), 200, lambda a: "\ufffd" in a.get("output.value", "")),
    Case("chunked-cut-response", post("up/chunked-cut", GOOD), -1, error_type("stream_interrupted")),
    Case("gzip-corrupt-response", post("up/gzip-corrupt", GOOD), 200, error_type("decode_error")),
    Case("absurd-usage", post("up/absurd-usage", GOOD), 200,
         lambda a: a.get("neatlogs.llm.token_count.completion") == 0, exported=True),
    Case("html-instead-of-json", post("up/html-200", GOOD), 200, error_type("invalid_response")),
    Case("truncated-chunked-request", raw(b"POST /fake/v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-session-id: SID\r\n"
                                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"100\r\n{\"model\": \"m\", \"mess"), 0,  # client hung up
         error_type("connection_error")),
    Case("garbage-request-line", raw(b"GARBAGE\r\n\r\n"), 400),
    Case("header-without-colon", raw(b"POST /fake/v1/chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"),
         400),
    Case("bad-content-length", raw(b"POST /fake/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: banana\r\n\r\n"), 400),
    Case("unknown-route", post("nowhere", GOOD), 404),
]


def llm_span(data_dir: Path, sid: str) -> dict[str, Any] | None:
    db = sqlite3.connect(f"file:{data_dir / 'traces.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT attributes FROM spans WHERE session_id=? AND name LIKE 'opencode.llm.%'",
                         (sid,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else None


@pytest.fixture
def replay():  # type: ignore[no-untyped-def]
    r = Replay(UPSTREAM)
    yield r
    r.close()


def test_bad_input_corpus(fake_llm: FakeLLM, fake_collector: FakeCollector, replay: Replay, proxy_process) -> None:
    proxy = proxy_process(routes={"fake": fake_llm.url, "up": replay.url}, endpoint=fake_collector.url,
                          api_key=API_KEY, args=["--idle-timeout", "0.5"])
    for case in CASES:
        sid = f"ses_bad_{case.name}"
        status = case.send(proxy.url, sid)
        want = case.status if isinstance(case.status, tuple) else (case.status,)
        assert status in want, f"{case.name}: client saw {status}, expected {want}"
        health = httpx.get(proxy.url + "/_neatlogs/healthz", timeout=5)
        assert health.status_code == 200, f"{case.name}: proxy unhealthy afterwards"
    for case in CASES:
        if case.recorded is None:
            continue
        sid = f"ses_bad_{case.name}"
        attrs = wait_until(lambda sid=sid: llm_span(proxy.data_dir, sid), timeout=10, message=f"{case.name} span")
        assert case.recorded(attrs), f"{case.name}: recorded {json.dumps(attrs)[:2000]}"
    exported = {f"ses_bad_{c.name}" for c in CASES if c.exported}
    wait_until(lambda: exported <= {s.attributes.get("neatlogs.conversation.id")
                                    for s in fake_collector.latest_by_span_id().values()},
               timeout=20, message="odd spans exported")
    # Still serving normal traffic, nothing stuck in the spool, nothing silently failed.
    r = httpx.post(proxy.url + "/fake/v1/chat/completions", content=GOOD, headers={"x-session-id": "ses_fine"})
    assert r.status_code == 200
    wait_until(lambda: httpx.get(proxy.url + "/_neatlogs/readyz").json().get("spool_depth") == 0, timeout=20)
    # (A lone-surrogate model name used to make every later scrape a 500, which this line took for success.)
    metrics = httpx.get(proxy.url + "/_neatlogs/metrics")
    assert metrics.status_code == 200, metrics.text
    assert "neatlogs_proxy_capture_errors_total 0.0" in metrics.text, metrics.text
    assert proxy.running


EVENT = {"type": "session.idle", "session_id": "ses_ev", "ts": 1.0}

EVENT_CASES: list[tuple[str, bytes, str | None, int, str]] = [
    ("not-json", b"{nope", "application/json", 400, "not valid JSON"),
    ("invalid-utf8", b'{"events": ["\xff"]}', "application/json", 400, "not valid JSON"),
    ("deeply-nested", b"[" * 100_000, "application/json", 400, "not valid JSON"),
    ("array-not-object", b"[]", "application/json", 400, "invalid event batch"),
    ("missing-events", b"{}", "application/json", 400, "events"),
    ("events-not-a-list", json.dumps({"events": {"a": 1}}).encode(), "application/json", 400, "events"),
    ("missing-session-id", json.dumps({"events": [{"type": "session.idle", "ts": 1}]}).encode(),
     "application/json", 400, "events.0.session.idle.session_id"),
    ("unknown-type", json.dumps({"events": [{**EVENT, "type": "nope"}]}).encode(), "application/json", 400,
     "events.0"),
    ("missing-type", json.dumps({"events": [{"session_id": "s", "ts": 1}]}).encode(), "application/json", 400,
     "events.0"),
    ("wrong-ts-type", json.dumps({"events": [{**EVENT, "ts": "yesterday"}]}).encode(), "application/json", 400,
     "ts"),
    ("negative-tokens", json.dumps({"events": [{"type": "message.completed", "session_id": "s", "ts": 1,
                                                "message_id": "m", "tokens": {"input": -1}}]}).encode(),
     "application/json", 400, "tokens.input"),
    ("tool-end-missing-call-id", json.dumps({"events": [{"type": "tool.end", "session_id": "s", "ts": 1,
                                                         "tool": "read"}]}).encode(), "application/json", 400,
     "call_id"),
    ("wrong-content-type", json.dumps({"events": [EVENT]}).encode(), "text/plain", 415, "application/json"),
    ("too-large", json.dumps({"events": [EVENT], "pad": "x" * (1024 * 1024)}).encode(), "application/json", 413,
     "larger than"),
    ("too-many-events", json.dumps({"events": [EVENT] * 1001}).encode(), "application/json", 400, "events"),
    ("extra-fields-ignored", json.dumps({"events": [{**EVENT, "future": {"x": 1}}], "new": 1}).encode(),
     "application/json", 202, ""),
    ("empty-batch", json.dumps({"events": []}).encode(), "application/json", 202, ""),
    ("any-json-args", json.dumps({"events": [{"type": "tool.end", "session_id": "ses_ev", "ts": 1, "call_id": "c",
                                              "tool": "x", "args": [1, {"a": None}], "metadata": "str",
                                              "output": None}]}).encode(), "application/json", 202, ""),
]


def test_bad_plugin_events_are_refused_clearly(proxy_process) -> None:
    proxy = proxy_process(routes={"fake": "http://127.0.0.1:9"})
    url = proxy.url + "/_neatlogs/v1/events"
    rejected = 0
    for name, body, ctype, status, text in EVENT_CASES:
        headers = {"content-type": ctype} if ctype else {}
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.headers["content-type"] == "application/json", name
        if status >= 400:
            err = r.json()["error"]
            assert text in err["message"], f"{name}: {err}"
            rejected += status in (400, 413)
        else:
            assert r.json()["accepted"] == len(json.loads(body)["events"])
        assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200
    metrics = httpx.get(proxy.url + "/_neatlogs/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("neatlogs_proxy_plugin_events_rejected"))
    assert float(line.split()[-1]) == rejected
    assert proxy.running
