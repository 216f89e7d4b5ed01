"""Parity with the official Neatlogs opencode plugin (neatlogs@1.1.15, its `neatlogs/opencode` export).

One real opencode run with BOTH installed: the official plugin exports to one collector, the proxy (with
our plugin) to another. For every span kind, every attribute key the official plugin emits must be
emitted by ours too, with equal token counts and cost.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import NODE_DIR
from tests.e2e.test_plugin_e2e import install_plugin
from tests.fakes.fake_collector import FakeCollector, FlatSpan
from tests.fakes.fake_llm import FakeLLM, parallel_tools_then_tool_then_answer
from tests.fakes.util import wait_until

# The official plugin names its root `opencode.turn` (WORKFLOW); the contract's root is `opencode.session`
# (AGENT) and carries the same attributes.
KIND_OF = {"WORKFLOW": "AGENT"}
COMPARED = ("neatlogs.llm.token_count.prompt", "neatlogs.llm.token_count.completion",
            "neatlogs.llm.token_count.total", "neatlogs.llm.token_count.reasoning",
            "neatlogs.llm.token_count.cache_read", "neatlogs.llm.token_count.cache_write", "neatlogs.llm.cost_usd")


def by_kind(spans: list[FlatSpan]) -> dict[str, list[FlatSpan]]:
    out: dict[str, list[FlatSpan]] = {}
    for s in spans:
        kind = str(s.attributes.get("neatlogs.span.kind"))
        out.setdefault(KIND_OF.get(kind, kind), []).append(s)
    return out


def test_attribute_parity_with_official_plugin(fake_llm: FakeLLM, proxy_process, run_opencode,
                                               tmp_path: Path) -> None:
    official = FakeCollector().start()
    ours = FakeCollector().start()
    try:
        wd = tmp_path / "project"
        wd.mkdir()
        (wd / "a.txt").write_text("alpha\n")
        steps = parallel_tools_then_tool_then_answer(
            parallel=[("read", {"filePath": str(wd / "a.txt")}), ("glob", {"pattern": "*.txt"})],
            then=("read", {"filePath": str(wd / "a.txt")}), answer="done")
        fake_llm.script(steps)
        proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=ours.url, api_key="ours",
                              args=["--idle-timeout", "600"],
                              env={"NEATLOGS_CAPTURE_SYSTEM_PROMPT": "true"})
        install_plugin(wd)
        official_module = NODE_DIR / "node_modules" / "neatlogs" / "dist" / "opencode-plugin.mjs"
        assert official_module.exists()
        (wd / ".opencode" / "plugin" / "official.ts").write_text(
            f'export {{ default }} from "{official_module}";\n')
        result = run_opencode(wd, "Read a.txt", proxy.route_url("fake") + "/v1", env={
            "NEATLOGS_PROXY_URL": proxy.url, "NEATLOGS_API_KEY": "official",
            "NEATLOGS_ENDPOINT": official.url, "NEATLOGS_CAPTURE_SYSTEM_PROMPT": "true"})
        assert result.returncode == 0, result.describe()

        def done(c: FakeCollector, n_llm: int) -> list[FlatSpan] | None:
            spans = list(c.latest_by_span_id().values())
            kinds = by_kind(spans)
            ok = len(kinds.get("LLM", [])) >= n_llm and "Neatlogs.INTERNAL" in kinds and len(kinds.get("TOOL", [])) >= 3
            return spans if ok else None

        theirs_spans = wait_until(lambda: done(official, 3), timeout=20, message="official plugin exported nothing")
        our_spans = wait_until(lambda: done(ours, 4), timeout=20, message="proxy trace incomplete")
        theirs, mine = by_kind(theirs_spans), by_kind(our_spans)
        assert set(theirs) == {"AGENT", "LLM", "TOOL", "Neatlogs.INTERNAL"}
        for kind, spans in theirs.items():
            their_keys = {k for s in spans for k in s.attributes}
            our_keys = {k for s in mine[kind] for k in s.attributes}
            assert their_keys <= our_keys, f"{kind}: missing {sorted(their_keys - our_keys)}"

        # The same three main calls, in order: equal token counts and cost (ours excludes the title call,
        # which the official plugin does not trace).
        their_llm = sorted(theirs["LLM"], key=lambda s: s.start_ns)
        our_llm = sorted((s for s in mine["LLM"] if s.attributes.get("neatlogs.llm.purpose") != "title"),
                         key=lambda s: s.start_ns)
        assert len(their_llm) == len(our_llm) == 3
        for t, o in zip(their_llm, our_llm, strict=True):
            for key in COMPARED:
                assert t.attributes.get(key) == o.attributes.get(key), (key, t.attributes, o.attributes)
        their_tools = sorted(s.attributes["neatlogs.tool.name"] for s in theirs["TOOL"])
        our_tools = sorted(s.attributes["neatlogs.tool.name"] for s in mine["TOOL"])
        assert their_tools == our_tools
    finally:
        official.stop()
        ours.stop()
