"""Subagent sessions (opencode's `task` tool) land in the parent's trace, under the parent's task span."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_plugin_e2e import install_plugin
from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM, text_step, tool_step
from tests.fakes.util import wait_until


@pytest.mark.parametrize("with_plugin", [False, True], ids=["wire", "plugin"])
def test_subagent_nests_in_parent_trace(with_plugin: bool, fake_llm: FakeLLM, fake_collector: FakeCollector,
                                        proxy_process, run_opencode, tmp_path: Path) -> None:
    wd = tmp_path / "project"
    wd.mkdir()
    fake_llm.script([
        tool_step(("task", {"description": "look around", "prompt": "List the files", "subagent_type": "general"})),
        text_step("The subagent found nothing."),
        text_step("Parent is done."),
    ])
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key="k",
                          args=["--idle-timeout", "1"])
    if with_plugin:
        install_plugin(wd)
    result = run_opencode(wd, "Use a subagent", proxy.route_url("fake") + "/v1",
                          env={"NEATLOGS_PROXY_URL": proxy.url})
    assert result.returncode == 0, result.describe()
    child_req = next(r for r in fake_llm.requests if r.headers.get("x-parent-session-id"))
    parent_id, child_id = child_req.headers["x-parent-session-id"], child_req.headers["x-session-id"]

    def roots():  # type: ignore[no-untyped-def]
        spans = fake_collector.latest_by_span_id()
        by_conv = {s.attributes["neatlogs.conversation.id"]: s for s in spans.values() if s.name == "opencode.session"}
        markers = [s for s in spans.values() if s.name == "neatlogs.trace.complete"]
        return (spans, by_conv) if {parent_id, child_id} <= set(by_conv) and markers else None

    spans, by_conv = wait_until(roots, timeout=20, message="both sessions' roots not exported")
    parent, child = by_conv[parent_id], by_conv[child_id]
    assert {s.trace_id for s in spans.values()} == {parent.trace_id}  # one trace for both sessions
    assert parent.parent_span_id == ""
    task = next(s for s in spans.values() if s.name == "opencode.tool.task")
    assert task.parent_span_id == parent.span_id
    assert child.parent_span_id == task.span_id
    assert child.attributes["neatlogs.parent_conversation.id"] == parent_id
    assert child.attributes["neatlogs.span.kind"] == "AGENT"
    assert child.attributes["output.value"] == "The subagent found nothing."
    child_llm = [s for s in spans.values() if s.name.startswith("opencode.llm.")
                 and s.attributes["neatlogs.conversation.id"] == child_id]
    assert len(child_llm) == 1 and child_llm[0].parent_span_id == child.span_id
    # Only the top-level session closes the trace.
    markers = [s for s in spans.values() if s.name == "neatlogs.trace.complete"]
    assert [m.attributes["neatlogs.conversation.id"] for m in markers] == [parent_id]
    expected_source = "plugin" if with_plugin else "wire"
    assert task.attributes["neatlogs.tool.source"] == expected_source
