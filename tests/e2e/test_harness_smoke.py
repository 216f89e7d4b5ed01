"""The harness itself works: real opencode against the fake LLM (no proxy), and the fake collector.

If these fail, every proxy e2e test would fail for reasons that have nothing to do with the proxy.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import (
    DEFAULT_TITLE,
    FakeLLM,
    parallel_tools_then_tool_then_answer,
    tool_then_answer,
)

SECRET = "the magic number is 4242"


def _project(tmp_path: Path) -> Path:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "notes.txt").write_text(SECRET + "\n")
    return workdir


def test_opencode_against_fake_llm(fake_llm: FakeLLM, run_opencode, tmp_path: Path) -> None:
    workdir = _project(tmp_path)
    fake_llm.script(tool_then_answer("read", {"filePath": str(workdir / "notes.txt")}, answer="It says 4242."))

    result = run_opencode(workdir, "What is in notes.txt?", fake_llm.base_url)

    assert result.returncode == 0, result.describe()
    assert "It says 4242." in result.stdout
    assert fake_llm.exhausted == 0

    titles = fake_llm.title_requests()
    mains = fake_llm.main_requests()
    assert len(titles) == 1, [r.body for r in titles]
    assert len(mains) == 2
    assert titles[0].model == "fake-small"
    assert all(r.model == "fake-model" and r.stream for r in mains)

    session_ids = {r.headers.get("x-session-id") for r in [*titles, *mains]}
    assert len(session_ids) == 1, session_ids
    (session_id,) = session_ids
    assert session_id and session_id.startswith("ses_")
    assert all(r.headers["authorization"] == "Bearer sk-fake-secret-123" for r in mains)

    first, second = mains
    call_id = first.reply_tool_call_ids[0]
    assert call_id.startswith("call_")
    assert [m["role"] for m in first.messages] == ["system", "user"]
    tool_msgs = [m for m in second.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == [call_id]
    assert SECRET in json.dumps(tool_msgs[0]["content"])
    assistant = next(m for m in second.messages if m["role"] == "assistant")
    assert [tc["id"] for tc in assistant["tool_calls"]] == [call_id]


def test_parallel_tool_calls_scenario(fake_llm: FakeLLM, run_opencode, tmp_path: Path) -> None:
    """Two parallel tool calls (read + glob, which needs the pre-installed ripgrep), then one more."""
    workdir = _project(tmp_path)
    notes = str(workdir / "notes.txt")
    fake_llm.script(
        parallel_tools_then_tool_then_answer(
            parallel=[("read", {"filePath": notes}), ("glob", {"pattern": "*.txt"})],
            then=("read", {"filePath": notes, "offset": 1, "limit": 1}),
            answer="Finished.",
        )
    )

    result = run_opencode(workdir, "Look around.", fake_llm.base_url, timeout=90)

    assert result.returncode == 0, result.describe()
    mains = fake_llm.main_requests()
    assert len(mains) == 3 and fake_llm.exhausted == 0
    ids = [r.reply_tool_call_ids for r in mains]
    assert len(ids[0]) == 2 and len(ids[1]) == 1 and ids[2] == []
    answered = [m["tool_call_id"] for m in mains[2].messages if m["role"] == "tool"]
    assert answered == [*ids[0], *ids[1]]
    glob_out = next(m for m in mains[1].messages if m.get("tool_call_id") == ids[0][1])
    assert "notes.txt" in json.dumps(glob_out["content"])


def _export_request() -> bytes:
    span = Span(
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        span_id=bytes.fromhex("b7ad6b7169203331"),
        name="opencode.session",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1_000,
        end_time_unix_nano=2_000,
        attributes=[
            KeyValue(key="neatlogs.conversation.id", value=AnyValue(string_value="ses_abc")),
            KeyValue(key="n", value=AnyValue(int_value=3)),
        ],
    )
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [KeyValue(key="service.name", value=AnyValue(string_value="svc"))]},
                scope_spans=[ScopeSpans(scope={"name": "neatlogs.opencode.proxy"}, spans=[span])],
            )
        ]
    )
    return req.SerializeToString()


def test_fake_collector_decodes_and_faults(fake_collector: FakeCollector) -> None:
    url = fake_collector.url + "/v1/traces"
    headers = {"content-type": "application/x-protobuf", "x-api-key": "k1", "user-agent": "ua/1"}

    assert httpx.post(url, content=_export_request(), headers=headers).status_code == 200
    (span,) = fake_collector.wait_for(lambda c: c.spans_by_name("opencode."), timeout=5)
    assert span.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id == "b7ad6b7169203331" and span.parent_span_id == ""
    assert span.attributes == {"neatlogs.conversation.id": "ses_abc", "n": 3}
    assert span.resource_attributes == {"service.name": "svc"}
    assert span.scope_name == "neatlogs.opencode.proxy"
    assert fake_collector.requests[0].headers["x-api-key"] == "k1"

    fake_collector.fail_next(503, count=1, retry_after=2)
    r = httpx.post(url, content=_export_request(), headers=headers)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert httpx.post(url, content=_export_request(), headers=headers).status_code == 200
    assert len(fake_collector.spans()) == 2  # the rejected export is recorded but not counted
    assert len(fake_collector.spans(include_rejected=True)) == 3
    assert list(fake_collector.latest_by_span_id()) == ["b7ad6b7169203331"]

    port = fake_collector.port
    fake_collector.down()
    try:
        httpx.post(url, content=_export_request(), headers=headers, timeout=2)
        raise AssertionError("collector should refuse connections while down")
    except httpx.ConnectError:
        pass
    fake_collector.up()
    assert fake_collector.port == port
    assert httpx.post(url, content=_export_request(), headers=headers).status_code == 200


def test_fake_llm_title_and_faults(fake_llm: FakeLLM) -> None:
    """Title requests (no tools) never consume scripted steps; faults behave as documented."""
    from tests.fakes.fake_llm import Step

    fake_llm.script([Step(status=429, headers={"Retry-After": "1"}), Step(text="partial answer", cut_after=3)])
    url = fake_llm.base_url + "/chat/completions"
    title = httpx.post(url, json={"model": "fake-small", "messages": [], "stream": False})
    assert title.json()["choices"][0]["message"]["content"] == DEFAULT_TITLE
    body = {"model": "fake-model", "messages": [], "tools": [{"type": "function"}], "stream": True}
    r = httpx.post(url, json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    try:
        httpx.post(url, json=body)
        raise AssertionError("a cut stream must not look complete")
    except httpx.RemoteProtocolError:
        pass
    assert [r.kind for r in fake_llm.requests] == ["title", "main", "main"]
    assert fake_llm.steps_used == 2


# A stand-in for the proxy: serves /_neatlogs/healthz on --port and logs its arguments and SIGTERM.
_STANDIN = r"""
import argparse, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int)
ap.add_argument("--data-dir")
ap.add_argument("--route", action="append", default=[])
a = ap.parse_args()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/_neatlogs/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
def term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("routes", a.route, "endpoint", os.environ.get("NEATLOGS_ENDPOINT"), flush=True)
HTTPServer(("127.0.0.1", a.port), H).serve_forever()
"""


def test_proxy_process_fixture_mechanics(proxy_process, tmp_path: Path) -> None:
    """Start/health-check/kill -9/restart/stop work, on the same port and data dir."""
    import sys

    script = tmp_path / "standin.py"
    script.write_text(_STANDIN)
    proxy = proxy_process(
        routes={"fake": "http://127.0.0.1:1"},
        endpoint="http://127.0.0.1:2",
        command_prefix=[sys.executable, str(script)],
    )
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200
    assert proxy.route_url("fake") == f"http://127.0.0.1:{proxy.port}/fake"
    port = proxy.port

    proxy.kill9()
    assert not proxy.running
    proxy.restart()
    assert proxy.port == port and proxy.running
    assert proxy.stop() == 0
    logs = proxy.logs()
    assert "routes ['fake=http://127.0.0.1:1'] endpoint http://127.0.0.1:2" in logs
    assert "got SIGTERM" in logs
