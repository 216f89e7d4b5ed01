"""Issue 3 end to end: real opencode with the plugin installed, through the proxy, to a fake collector."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO
from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM, Usage, parallel_tools_then_tool_then_answer, tool_then_answer
from tests.fakes.util import wait_until

PRICE = {"input": 3, "output": 15, "cache_read": 0.3}  # USD per 1M tokens, as in tests/conftest.py


def install_plugin(workdir: Path) -> None:
    """The documented way: a one-line re-export in the project's .opencode/plugin/."""
    d = workdir / ".opencode" / "plugin"
    d.mkdir(parents=True, exist_ok=True)
    (d / "neatlogs.ts").write_text(f'export {{ default }} from "{REPO / "plugin" / "src" / "index.ts"}";\n')


def cost_of(u: Usage) -> float:
    return ((u.prompt_tokens - u.cached_tokens) * PRICE["input"] + u.completion_tokens * PRICE["output"]
            + u.cached_tokens * PRICE["cache_read"]) / 1e6


def complete_trace(collector: FakeCollector, n_tools: int):  # type: ignore[no-untyped-def]
    spans = collector.latest_by_span_id()
    tools = [s for s in spans.values() if s.name.startswith("opencode.tool.")]
    names = {s.name for s in spans.values()}
    if "neatlogs.trace.complete" in names and len(tools) >= n_tools:
        return spans
    return None


def test_plugin_tool_spans_cost_and_turn_end(fake_llm: FakeLLM, fake_collector: FakeCollector, proxy_process,
                                             run_opencode, tmp_path: Path) -> None:
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "a.txt").write_text("alpha 1\n")
    (wd / "b.txt").write_text("beta 2\n")
    steps = parallel_tools_then_tool_then_answer(
        parallel=[("read", {"filePath": str(wd / "a.txt")}), ("glob", {"pattern": "*.txt"})],
        then=("read", {"filePath": str(wd / "b.txt")}), answer="alpha and beta.")
    fake_llm.script(steps)
    # A long idle timeout: the turn end must come from the plugin's session.idle, not the quiet timer.
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key="k",
                          args=["--idle-timeout", "600"])
    install_plugin(wd)
    result = run_opencode(wd, "Read the text files", proxy.route_url("fake") + "/v1",
                          env={"NEATLOGS_PROXY_URL": proxy.url})
    assert result.returncode == 0, result.describe()
    assert "alpha and beta." in result.stdout
    # The plugin tagged every LLM request; the proxy stripped its headers before the upstream.
    assert not any(k.startswith("x-neatlogs-") for r in fake_llm.requests for k in r.headers)

    spans = wait_until(lambda: complete_trace(fake_collector, 3), timeout=20, message="plugin trace incomplete")
    session_id = fake_llm.requests[0].headers["x-session-id"]
    root = next(s for s in spans.values() if s.name == "opencode.session")
    assert root.attributes["neatlogs.agent.name"] == "build"
    assert root.attributes["neatlogs.session.tool_calls"] == 3

    llm = sorted((s for s in spans.values() if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    main = [s for s in llm if s.attributes.get("neatlogs.llm.purpose") != "title"]
    assert len(main) == 3 and all(s.attributes["neatlogs.llm.purpose"] == "build" for s in main)
    for span, step in zip(main, steps, strict=True):
        assert span.attributes["neatlogs.llm.cost_source"] == "opencode"
        assert abs(span.attributes["neatlogs.llm.cost_usd"] - cost_of(step.usage)) < 1e-12
    assert abs(root.attributes["neatlogs.session.cost_usd"] - sum(cost_of(s.usage) for s in steps)) < 1e-9

    tools = [s for s in spans.values() if s.name.startswith("opencode.tool.")]
    by_call = {s.attributes["neatlogs.tool.call_id"]: s for s in tools}
    asked = [json.loads(main[i].attributes[f"neatlogs.llm.tool_calls.{j}.arguments"]) and
             main[i].attributes[f"neatlogs.llm.tool_calls.{j}.id"] for i, j in ((0, 0), (0, 1), (1, 0))]
    assert sorted(by_call) == sorted(asked)  # one span per call id: never a wire and a plugin copy
    for call_id, span in by_call.items():
        a = span.attributes
        assert a["neatlogs.tool.source"] == "plugin"
        assert a["neatlogs.conversation.id"] == session_id
        assert a["neatlogs.tool.title"] and a["neatlogs.tool.metadata"].startswith("{")
        before = main[0] if call_id in asked[:2] else main[1]
        after = main[1] if call_id in asked[:2] else main[2]
        assert before.end_ns <= span.start_ns <= span.end_ns <= after.start_ns, (call_id, span.name)
    assert "alpha 1" in by_call[asked[0]].attributes["neatlogs.tool.output"]

    markers = [s for s in spans.values() if s.name == "neatlogs.trace.complete"]
    assert len(markers) == 1 and markers[0].parent_span_id == root.span_id


def test_plugin_with_proxy_down_does_not_slow_opencode(fake_llm: FakeLLM, run_opencode, tmp_path: Path) -> None:
    """The plugin's proxy is unreachable (nothing listens there): opencode still finishes on time."""
    from tests.fakes.util import free_port

    def run(with_plugin: bool) -> float:
        wd = tmp_path / f"p{with_plugin}"
        wd.mkdir()
        (wd / "a.txt").write_text("x\n")
        fake_llm.script(tool_then_answer("read", {"filePath": str(wd / "a.txt")}, answer="ok"))
        if with_plugin:
            install_plugin(wd)
        res = run_opencode(wd, "Read a.txt", fake_llm.base_url,
                           env={"NEATLOGS_PROXY_URL": f"http://127.0.0.1:{free_port()}"})
        assert res.returncode == 0, res.describe()
        assert "ok" in res.stdout
        return res.duration

    normal = run(False)
    assert run(True) <= normal + 3.0
