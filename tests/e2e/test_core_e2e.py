"""Issue 2 end to end: real opencode → real proxy process → fake LLM; spans decoded at a fake collector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.fakes.fake_collector import FakeCollector, assert_one_wire_tool_span
from tests.fakes.fake_llm import DEFAULT_TITLE, FakeLLM, Usage, tool_then_answer
from tests.fakes.util import wait_until

API_KEY = "nl-test-key-123"


def project(tmp_path: Path) -> Path:
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "README.md").write_text("# Demo\nThis project prints the number 4242.\n")
    return wd


def test_opencode_session_exported_as_one_trace(fake_llm: FakeLLM, fake_collector: FakeCollector, proxy_process,
                                                run_opencode, tmp_path: Path) -> None:
    wd = project(tmp_path)
    u1 = Usage(prompt_tokens=1200, completion_tokens=40, cached_tokens=100)
    u2 = Usage(prompt_tokens=1500, completion_tokens=25, cached_tokens=1100)
    fake_llm.script(tool_then_answer("read", {"filePath": str(wd / "README.md")}, answer="It prints 4242.",
                                     usages=(u1, u2)))
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=["--idle-timeout", "1"])

    result = run_opencode(wd, "Read README.md and summarize it", proxy.route_url("fake") + "/v1")
    assert result.returncode == 0, result.describe()
    assert "It prints 4242." in result.stdout

    seen = fake_llm.requests
    assert len(seen) == 3  # title + tool call + answer
    session_id = seen[0].headers["x-session-id"]
    assert session_id.startswith("ses_")
    # The upstream got the request unchanged, credentials included, and none of our headers.
    assert all(r.headers.get("authorization") == "Bearer sk-fake-secret-123" for r in seen)
    assert not any(k.startswith("x-neatlogs-") for r in seen for k in r.headers)

    spans = wait_until(lambda: _complete(fake_collector), timeout=30, message="turn end not exported")
    assert {s.trace_id for s in spans.values()} == {next(iter(spans.values())).trace_id}

    roots = [s for s in spans.values() if s.name == "opencode.session"]
    assert len(roots) == 1
    root = roots[0]
    assert root.parent_span_id == ""
    assert root.attributes["neatlogs.span.kind"] == "AGENT"
    assert root.attributes["neatlogs.conversation.id"] == session_id
    assert root.attributes["neatlogs.session.id"] == session_id
    assert root.attributes["neatlogs.agent.framework"] == "opencode"
    assert "Read README.md and summarize it" in root.attributes["input.value"]
    assert root.attributes["output.value"] == "It prints 4242."
    assert root.attributes["neatlogs.session.title"] == DEFAULT_TITLE
    assert root.attributes["neatlogs.session.llm_calls"] == 3
    assert root.attributes["neatlogs.session.tool_calls"] == 1

    llm = sorted((s for s in spans.values() if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    assert len(llm) == 3
    assert all(s.parent_span_id == root.span_id and s.attributes["neatlogs.span.kind"] == "LLM" for s in llm)
    assert all(s.attributes["neatlogs.conversation.id"] == session_id for s in llm)
    title = [s for s in llm if s.attributes.get("neatlogs.llm.purpose") == "title"]
    assert len(title) == 1 and title[0].attributes["neatlogs.llm.model_name"] == "fake-small"
    main = [s for s in llm if s not in title]
    for span, usage in zip(main, (u1, u2), strict=True):
        a = span.attributes
        assert a["neatlogs.llm.model_name"] == "fake-model"
        assert a["neatlogs.llm.api"] == "openai.chat"
        assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
        assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
        assert a["gen_ai.usage.cache_read.input_tokens"] == usage.cached_tokens
        assert a["neatlogs.llm.token_count.prompt"] == usage.prompt_tokens - usage.cached_tokens
        assert a["neatlogs.llm.token_count.completion"] == usage.completion_tokens
        assert a["neatlogs.llm.token_count.cache_read"] == usage.cached_tokens
        total = usage.prompt_tokens - usage.cached_tokens + usage.completion_tokens
        assert a["neatlogs.llm.token_count.total"] == total
        assert a["http.response.status_code"] == 200
        assert a["http.request.method"] == "POST" and a["url.path"] == "/v1/chat/completions"
        sent = json.loads(a["neatlogs.http.request.headers"])
        assert sent["x-session-id"] == session_id and "authorization" not in sent
        assert "Read README.md and summarize it" in a["input.value"]
        assert a["neatlogs.llm.time_to_first_token_ms"] >= 0
        assert span.status_code == 1
    first, second = main
    call_id = first.attributes["neatlogs.llm.tool_calls.0.id"]
    assert first.attributes["neatlogs.llm.tool_calls.0.name"] == "read"
    assert first.attributes["neatlogs.llm.finish_reason"] == "tool_calls"
    assert first.attributes["output.value"].startswith("→ read(")
    assert second.attributes["output.value"] == "It prints 4242."
    # The system prompt is not captured by default; the request's messages are, in order.
    roles = [second.attributes[f"neatlogs.llm.input_messages.{i}.role"] for i in range(3)]
    assert roles == ["user", "assistant", "tool"]
    assert "system" not in {v for k, v in second.attributes.items() if k.endswith(".role")}
    assert second.attributes["neatlogs.llm.input_messages.2.tool_call_id"] == call_id

    assert_one_wire_tool_span(spans, root, call_id, first, second, "4242")

    markers = [s for s in spans.values() if s.name == "neatlogs.trace.complete"]
    assert len(markers) == 1 and markers[0].attributes["neatlogs.span.kind"] == "Neatlogs.INTERNAL"

    reqs = [r for r in fake_collector.requests if r.accepted]
    assert all(r.headers.get("x-api-key") == API_KEY for r in reqs)
    assert all(r.headers.get("user-agent", "").startswith("neatlogs-opencode-proxy/") for r in reqs)
    res = next(iter(spans.values())).resource_attributes
    assert res["service.name"] == "neatlogs.opencode" and res["neatlogs.workflow_name"] == "opencode"
    assert res["neatlogs.capture.source"] == "proxy"
    # No secret reached an exported span.
    assert "sk-fake-secret-123" not in json.dumps([s.attributes for s in spans.values()])
    assert "sk-fake-secret-123" not in proxy.logs()


def _complete(collector: FakeCollector):  # type: ignore[no-untyped-def]
    spans = collector.latest_by_span_id()
    names = [s.name for s in spans.values()]
    if "neatlogs.trace.complete" in names and "opencode.session" in names:
        return spans
    return None


def test_without_api_key_sessions_go_to_the_local_store(fake_llm: FakeLLM, proxy_process, run_opencode,
                                                        tmp_path: Path) -> None:
    wd = project(tmp_path)
    steps = tool_then_answer("read", {"filePath": str(wd / "README.md")}, answer="Done reading.")
    fake_llm.script(steps)
    proxy = proxy_process(routes={"fake": fake_llm.url}, args=["--idle-timeout", "1"])
    result = run_opencode(wd, "Read README.md", proxy.route_url("fake") + "/v1")
    assert result.returncode == 0, result.describe()
    session_id = fake_llm.requests[0].headers["x-session-id"]
    assert "local store" in proxy.logs()

    def sessions() -> str | None:
        out = subprocess.run([sys.executable, "-m", "proxy.cli", "sessions", "--data-dir", str(proxy.data_dir)],
                             capture_output=True, text=True, cwd=REPO, timeout=30)
        row = next((line for line in out.stdout.splitlines() if line.startswith(session_id)), None)
        return row if row and DEFAULT_TITLE in row and " 3 " in row else None

    row = wait_until(sessions, timeout=20, message="session not listed")
    expected = sum(u.prompt_tokens - u.cached_tokens + u.completion_tokens
                   for u in [fake_llm.title_step.usage, *(s.usage for s in steps)])
    assert row.split()[-4:-1] == ["3", "1", str(expected)]
    shown = subprocess.run([sys.executable, "-m", "proxy.cli", "show", session_id, "--data-dir", str(proxy.data_dir)],
                           capture_output=True, text=True, cwd=REPO, timeout=30).stdout
    assert shown.startswith("opencode.session")
    assert "opencode.tool.read" in shown and shown.count("opencode.llm.") == 3


def test_routes_healthz_and_unknown_route(proxy_process) -> None:
    proxy = proxy_process(routes={"fake": "http://127.0.0.1:9"})
    assert httpx.get(proxy.url + "/_neatlogs/healthz").json() == {"status": "ok"}
    r = httpx.post(proxy.url + "/nope/v1/chat/completions", json={})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "unknown_route" and set(err["routes"]) >= {"fake", "openai", "anthropic", "google",
                                                                      "openrouter"}


def test_restart_continues_session_totals(fake_llm: FakeLLM, fake_collector: FakeCollector, proxy_process) -> None:
    """Turn 2 of a session after a proxy restart lands in the same trace and keeps counting."""
    from tests.fakes.fake_llm import text_step

    fake_llm.script([text_step("first answer", usage=Usage(100, 10)), text_step("second answer", usage=Usage(200, 20))])
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key=API_KEY,
                          args=["--idle-timeout", "0.5"])
    tools = [{"type": "function", "function": {"name": "read", "parameters": {}}}]
    body = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True}, "tools": tools,
            "messages": [{"role": "user", "content": "first question"}]}
    headers = {"x-session-id": "ses_restart"}

    def root_with(calls: int):  # type: ignore[no-untyped-def]
        roots = [s for s in fake_collector.latest_by_span_id().values() if s.name == "opencode.session"]
        return roots[0] if roots and roots[0].attributes["neatlogs.session.llm_calls"] == calls else None

    assert httpx.post(proxy.route_url("fake") + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    first = wait_until(lambda: root_with(1), timeout=15)
    proxy.restart()
    body["messages"] += [{"role": "assistant", "content": "first answer"}, {"role": "user", "content": "second"}]
    assert httpx.post(proxy.route_url("fake") + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    second = wait_until(lambda: root_with(2), timeout=15)
    assert (second.trace_id, second.span_id) == (first.trace_id, first.span_id)
    a = second.attributes
    assert a["neatlogs.session.turns"] == 2
    assert a["neatlogs.session.token_count.prompt"] == 300 and a["neatlogs.session.token_count.completion"] == 30
    assert a["input.value"] == "first question" and a["output.value"] == "second answer"
    markers = {s.span_id for s in fake_collector.latest_by_span_id().values() if s.name == "neatlogs.trace.complete"}
    assert len(markers) == 2
