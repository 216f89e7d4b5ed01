"""Provider coverage end to end: real opencode with its BUILT-IN providers, through the real proxy.

opencode's `anthropic`, `openai` and `google` providers get `options.baseURL` pointing at the proxy
(`/anthropic/v1`, `/openai/v1`, `/google/v1beta`); the proxy's routes of those names point at fake
upstreams speaking each wire format (tests/fakes/fake_providers.py). At the fake collector we check
the spans, the token counts per the span contract, the cost and its source, and that the provider's
credentials pass through untouched and never leak into spans or logs. Then: the plugin's (opencode's)
cost wins over the price table, and OpenRouter's in-band `usage.cost` wins as `provider`.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from addon.cost import compute_cost
from addon.model import Usage
from tests.conftest import opencode_env
from tests.e2e.test_plugin_e2e import install_plugin
from tests.fakes.fake_collector import FakeCollector, FlatSpan, assert_one_wire_tool_span
from tests.fakes.fake_llm import FakeLLM, text_step, tool_step
from tests.fakes.fake_llm import Usage as ChatUsage
from tests.fakes.fake_providers import DEFAULT_TITLE, FakeProvider, StepUsage, text, tool
from tests.fakes.util import wait_until

COLLECTOR_KEY = "nl-providers-key"
ANSWER = "The file says 7319."
TITLE_USAGE = StepUsage(300, 6)  # what FakeProvider answers title requests with


@dataclass
class Case:
    route: str  # built-in opencode provider id == proxy route name
    base_path: str  # what the provider's baseURL adds after the route
    model: str  # main model (opencode `provider/model` without the provider)
    title_model: str  # the model opencode picks for title generation
    api: str
    gen_ai_provider: str
    api_key: str
    usages: tuple[StepUsage, StepUsage]
    extra: dict[str, Any] = field(default_factory=dict)  # more opencode config
    title_priced: bool = True  # genai-prices knows the title model

    def auth(self, headers: dict[str, str]) -> str | None:
        return {"openai": headers.get("authorization"), "anthropic": headers.get("x-api-key"),
                "google": headers.get("x-goog-api-key")}[self.route]

    def expected_auth(self) -> str:
        return f"Bearer {self.api_key}" if self.route == "openai" else self.api_key


CASES = [
    Case("openai", "/v1", "gpt-5", "gpt-5.4-nano", "openai.responses", "openai", "sk-openai-secret-e2e-4711",
         (StepUsage(input_tokens=1800, output_tokens=120, cache_read_tokens=600, reasoning_tokens=40),
          StepUsage(input_tokens=2100, output_tokens=35, cache_read_tokens=1700, reasoning_tokens=12))),
    Case("anthropic", "/v1", "claude-sonnet-4-5", "claude-haiku-4-5-20251001", "anthropic.messages", "anthropic",
         "sk-ant-secret-e2e-4712",
         (StepUsage(input_tokens=2400, output_tokens=90, cache_read_tokens=1500, cache_write_tokens=300),
          StepUsage(input_tokens=2700, output_tokens=30, cache_read_tokens=2200, cache_write_tokens=150))),
    # The title goes to a model of our own that no price table knows: its span must carry no cost.
    Case("google", "/v1beta", "gemini-2.5-flash", "gemini-nope-1", "google.generate_content", "gcp.gemini",
         "goog-secret-e2e-4713",
         (StepUsage(input_tokens=2000, output_tokens=150, cache_read_tokens=800, reasoning_tokens=60),
          StepUsage(input_tokens=2300, output_tokens=40, cache_read_tokens=1900, reasoning_tokens=15)),
         extra={"provider": {"google": {"models": {"gemini-nope-1": {"name": "Nope"}}}},
                "small_model": "google/gemini-nope-1"},
         title_priced=False),
]


def project(tmp_path: Path) -> Path:
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "notes.txt").write_text("The magic number is 7319.\n")
    return wd


def builtin_config(route: str, base_url: str, api_key: str, model: str, extra: dict[str, Any] | None = None,
                   ) -> dict[str, Any]:
    """extra_config for run_opencode: the built-in provider at the proxy; opencode picks the title model."""
    extra = dict(extra or {})
    provider = {"options": {"baseURL": base_url, "apiKey": api_key}, **extra.pop("provider", {}).get(route, {})}
    return {"provider": {route: provider}, "model": f"{route}/{model}", "small_model": None, **extra}


def complete_trace(collector: FakeCollector, n_llm: int, n_tools: int) -> dict[str, FlatSpan] | None:
    spans = collector.latest_by_span_id()
    names = [s.name for s in spans.values()]
    if ("neatlogs.trace.complete" in names and "opencode.session" in names
            and sum(n.startswith("opencode.llm.") for n in names) >= n_llm
            and sum(n.startswith("opencode.tool.") for n in names) >= n_tools):
        return spans
    return None


def norm(u: StepUsage) -> Usage:
    return Usage(u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens)


def assert_tokens(span: FlatSpan, u: StepUsage) -> None:
    a = span.attributes
    prompt = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
    completion = u.output_tokens - u.reasoning_tokens
    got = {k: a.get(k) for k in (
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens", "neatlogs.llm.token_count.prompt",
        "neatlogs.llm.token_count.completion", "neatlogs.llm.token_count.total",
        "neatlogs.llm.token_count.reasoning", "neatlogs.llm.token_count.cache_read",
        "neatlogs.llm.token_count.cache_write")}
    assert got == {
        "gen_ai.usage.input_tokens": u.input_tokens,
        "gen_ai.usage.output_tokens": u.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": u.cache_write_tokens,
        "neatlogs.llm.token_count.prompt": prompt,
        "neatlogs.llm.token_count.completion": completion,
        "neatlogs.llm.token_count.total": prompt + completion,
        "neatlogs.llm.token_count.reasoning": u.reasoning_tokens,
        "neatlogs.llm.token_count.cache_read": u.cache_read_tokens,
        "neatlogs.llm.token_count.cache_write": u.cache_write_tokens,
    }, span.name


def assert_price_table_cost(span: FlatSpan, provider: str, model: str, u: StepUsage) -> None:
    expected = compute_cost(provider, model, norm(u))
    assert expected is not None and expected > 0, (provider, model)
    assert span.attributes.get("neatlogs.llm.cost_source") == "price_table", span.name
    assert span.attributes["neatlogs.llm.cost_usd"] == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("case", CASES, ids=[c.route for c in CASES])
def test_builtin_provider_through_proxy(case: Case, fake_collector: FakeCollector, proxy_process, run_opencode,
                                        tmp_path: Path) -> None:
    wd = project(tmp_path)
    u1, u2 = case.usages
    with FakeProvider(case.route, [tool("read", {"filePath": str(wd / "notes.txt")}, usage=u1),
                                   text(ANSWER, usage=u2)]) as fake:
        proxy = proxy_process(routes={case.route: fake.url}, endpoint=fake_collector.url, api_key=COLLECTOR_KEY,
                              args=["--idle-timeout", "1"])
        cfg = builtin_config(case.route, proxy.route_url(case.route) + case.base_path, case.api_key, case.model,
                             case.extra)
        result = run_opencode(wd, "Read notes.txt and tell me the number", proxy.url, extra_config=cfg)
        assert result.returncode == 0, result.describe()
        assert ANSWER in result.stdout, result.describe()
        spans = wait_until(lambda: complete_trace(fake_collector, 3, 1), timeout=20, message="trace not complete")
        seen = fake.requests

    # --- what the upstream got: the provider's own requests, credentials unchanged ------------------
    mains = [r for r in seen if r.kind == "main"]
    titles = [r for r in seen if r.kind == "title"]
    assert len(mains) == 2 and len(titles) == 1, [(r.kind, r.path) for r in seen]
    assert fake.exhausted == 0
    for r in seen:
        assert case.auth(r.headers) == case.expected_auth(), r.headers
        assert not any(k.startswith("x-neatlogs-") for k in r.headers)
    if case.route == "anthropic":
        assert all(r.headers.get("anthropic-version") for r in seen)
        # opencode sends beta flags with its main-model requests (not the title's): they arrive intact.
        assert all(re.fullmatch(r"[a-z0-9-]+-20\d{2}-\d{2}-\d{2}(,[a-z0-9-]+-20\d{2}-\d{2}-\d{2})*",
                                r.headers.get("anthropic-beta", "")) for r in mains), [r.headers for r in mains]
    if case.route == "google":
        assert mains[0].path == f"/v1beta/models/{case.model}:streamGenerateContent"
        assert titles[0].path == f"/v1beta/models/{case.title_model}:streamGenerateContent"
    else:
        assert mains[0].body["model"] == case.model and titles[0].body["model"] == case.title_model
    session_id = seen[0].headers["x-session-id"]
    assert session_id.startswith("ses_") and all(r.headers["x-session-id"] == session_id for r in seen)

    # --- one trace, rooted at the session --------------------------------------------------------
    assert len({s.trace_id for s in spans.values()}) == 1
    root = next(s for s in spans.values() if s.name == "opencode.session")
    assert root.attributes["neatlogs.conversation.id"] == session_id
    assert root.attributes["neatlogs.session.title"] == DEFAULT_TITLE
    assert root.attributes["neatlogs.session.llm_calls"] == 3
    assert root.attributes["neatlogs.session.tool_calls"] == 1
    assert root.attributes["output.value"] == ANSWER

    llm = sorted((s for s in spans.values() if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    assert len(llm) == 3
    title = [s for s in llm if s.attributes.get("neatlogs.llm.purpose") == "title"]
    main = [s for s in llm if s not in title]
    assert len(title) == 1 and len(main) == 2
    for s in llm:
        a = s.attributes
        assert s.parent_span_id == root.span_id and a["neatlogs.span.kind"] == "LLM"
        assert a["neatlogs.llm.api"] == case.api
        assert a["gen_ai.provider.name"] == case.gen_ai_provider
        assert a["http.response.status_code"] == 200 and s.status_code == 1
    t = title[0]
    assert t.name == f"opencode.llm.{case.title_model}"
    assert t.attributes["neatlogs.llm.model_name"] == case.title_model
    assert t.attributes["neatlogs.llm.output_messages.0.content"] == DEFAULT_TITLE
    assert_tokens(t, TITLE_USAGE)
    if case.title_priced:
        assert_price_table_cost(t, case.gen_ai_provider, case.title_model, TITLE_USAGE)
    else:
        assert "neatlogs.llm.cost_usd" not in t.attributes and "neatlogs.llm.cost_source" not in t.attributes

    first, second = main
    for span, u in zip(main, case.usages, strict=True):
        assert span.name == f"opencode.llm.{case.model}"
        assert span.attributes["neatlogs.llm.model_name"] == case.model
        assert span.attributes["gen_ai.request.model"] == case.model
        assert span.attributes["gen_ai.response.model"] == case.model
        assert_tokens(span, u)
        assert_price_table_cost(span, case.gen_ai_provider, case.model, u)
    assert first.attributes["neatlogs.llm.tool_calls.0.name"] == "read"
    assert "neatlogs.llm.tool_calls.1.name" not in first.attributes
    assert second.attributes["output.value"] == ANSWER

    # --- the tool call, reconstructed from the wire, under the id the LLM span shows ----------------
    call_id = first.attributes["neatlogs.llm.tool_calls.0.id"]
    assert call_id
    if case.route != "google":  # Gemini has no call ids on the wire: the proxy makes its own
        assert call_id == mains[0].reply_call_ids[0]
    assert_one_wire_tool_span(spans, root, call_id, first, second, "7319")

    # --- session totals and secrets ----------------------------------------------------------------
    priced = [(case.model, u) for u in case.usages] + ([(case.title_model, TITLE_USAGE)] if case.title_priced else [])
    total = sum(compute_cost(case.gen_ai_provider, m, norm(u)) or 0.0 for m, u in priced)
    assert root.attributes["neatlogs.session.cost_usd"] == pytest.approx(total, rel=1e-9)
    dumped = json.dumps([s.attributes for s in spans.values()])
    assert case.api_key not in dumped
    assert case.api_key not in proxy.logs()


# --- the plugin: opencode's own cost wins over the price table ---------------------------------------

# Prices opencode uses for the main model (USD per 1M tokens), deliberately unlike the list prices.
OPENCODE_PRICE = {"input": 1.0, "output": 2.0, "cache_read": 0.25, "cache_write": 0.5}


def opencode_messages(opencode_bin: Path, result: Any, session_id: str) -> list[dict[str, Any]]:
    """The assistant messages as opencode itself stored them (`opencode export`)."""
    proc = subprocess.run([str(opencode_bin), "export", session_id], cwd=result.workdir,
                          env=opencode_env(result.home), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout[proc.stdout.index("{"):])
    return [m["info"] for m in doc["messages"] if m["info"]["role"] == "assistant"]


def test_plugin_cost_wins_over_price_table(fake_collector: FakeCollector, proxy_process, run_opencode,
                                           opencode_bin: Path, tmp_path: Path) -> None:
    case = CASES[1]  # anthropic
    wd = project(tmp_path)
    u1, u2 = case.usages
    with FakeProvider("anthropic", [tool("read", {"filePath": str(wd / "notes.txt")}, usage=u1),
                                    text(ANSWER, usage=u2)]) as fake:
        proxy = proxy_process(routes={"anthropic": fake.url}, endpoint=fake_collector.url, api_key=COLLECTOR_KEY,
                              args=["--idle-timeout", "600"])  # the turn end must come from the plugin
        install_plugin(wd)
        extra = {"provider": {"anthropic": {"models": {case.model: {"cost": OPENCODE_PRICE}}}}}
        cfg = builtin_config("anthropic", proxy.route_url("anthropic") + "/v1", case.api_key, case.model, extra)
        result = run_opencode(wd, "Read notes.txt and tell me the number", proxy.url, extra_config=cfg,
                              env={"NEATLOGS_PROXY_URL": proxy.url})
        assert result.returncode == 0, result.describe()
        assert ANSWER in result.stdout, result.describe()
        seen = fake.requests
    session_id = seen[0].headers["x-session-id"]

    def costs_joined() -> dict[str, FlatSpan] | None:
        spans = complete_trace(fake_collector, 3, 1)
        if spans and all(s.attributes.get("neatlogs.llm.cost_source") == "opencode" for s in spans.values()
                         if s.name == f"opencode.llm.{case.model}"):
            return spans
        return None

    spans = wait_until(costs_joined, timeout=20, message="plugin costs not on the LLM spans")
    llm = sorted((s for s in spans.values() if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    title = [s for s in llm if s.attributes.get("neatlogs.llm.purpose") == "title"]
    main = [s for s in llm if s not in title]
    assert len(main) == 2 and len(title) == 1

    # What opencode itself says each step cost, from its own storage.
    reported = [m["cost"] for m in opencode_messages(opencode_bin, result, session_id)]
    assert len(reported) == 2 and all(c > 0 for c in reported)
    for span, u, cost in zip(main, case.usages, reported, strict=True):
        a = span.attributes
        assert a["neatlogs.llm.cost_source"] == "opencode"
        assert a["neatlogs.llm.cost_usd"] == pytest.approx(cost, rel=1e-9)
        by_hand = ((u.input_tokens - u.cache_read_tokens - u.cache_write_tokens) * OPENCODE_PRICE["input"]
                   + u.output_tokens * OPENCODE_PRICE["output"] + u.cache_read_tokens * OPENCODE_PRICE["cache_read"]
                   + u.cache_write_tokens * OPENCODE_PRICE["cache_write"]) / 1e6
        assert a["neatlogs.llm.cost_usd"] == pytest.approx(by_hand, rel=1e-9)
        list_price = compute_cost("anthropic", case.model, norm(u))
        assert list_price is not None and abs(list_price - a["neatlogs.llm.cost_usd"]) > 1e-6  # really opencode's
        assert_tokens(span, u)
    # The title is no opencode message: it keeps its price-table cost.
    assert_price_table_cost(title[0], "anthropic", case.title_model, TITLE_USAGE)
    root = next(s for s in spans.values() if s.name == "opencode.session")
    title_cost = compute_cost("anthropic", case.title_model, norm(TITLE_USAGE)) or 0.0
    assert root.attributes["neatlogs.session.cost_usd"] == pytest.approx(sum(reported) + title_cost, rel=1e-9)
    tools = [s for s in spans.values() if s.name.startswith("opencode.tool.")]
    assert len(tools) == 1 and tools[0].attributes["neatlogs.tool.source"] == "plugin"
    assert tools[0].attributes["neatlogs.tool.call_id"] == main[0].attributes["neatlogs.llm.tool_calls.0.id"]
    assert case.api_key not in json.dumps([s.attributes for s in spans.values()])
    assert case.api_key not in proxy.logs()


# --- OpenRouter: the provider-reported cost --------------------------------------------------------

OR_MODEL = "anthropic/claude-sonnet-4.5"
OR_KEY = "sk-or-secret-e2e-4714"


def test_openrouter_provider_cost(fake_llm: FakeLLM, fake_collector: FakeCollector, proxy_process, run_opencode,
                                  tmp_path: Path) -> None:
    wd = project(tmp_path)
    u1 = ChatUsage(prompt_tokens=1600, completion_tokens=70, cached_tokens=400, cost=0.0123)
    u2 = ChatUsage(prompt_tokens=1900, completion_tokens=20, cached_tokens=1500, cost=0.0045)
    fake_llm.script([tool_step(("read", {"filePath": str(wd / "notes.txt")}), usage=u1, usage_chunk=True),
                     text_step(ANSWER, usage=u2, usage_chunk=True)])
    fake_llm.title_step.usage = ChatUsage(prompt_tokens=300, completion_tokens=6, cost=0.0002)
    fake_llm.title_step.usage_chunk = True
    proxy = proxy_process(routes={"openrouter": fake_llm.url}, endpoint=fake_collector.url, api_key=COLLECTOR_KEY,
                          args=["--idle-timeout", "1"])
    cfg = builtin_config("openrouter", proxy.route_url("openrouter") + "/v1", OR_KEY, OR_MODEL)
    result = run_opencode(wd, "Read notes.txt and tell me the number", proxy.url, extra_config=cfg)
    assert result.returncode == 0, result.describe()
    assert ANSWER in result.stdout, result.describe()
    spans = wait_until(lambda: complete_trace(fake_collector, 3, 1), timeout=20, message="trace not complete")

    seen = fake_llm.requests
    assert all(r.headers.get("authorization") == f"Bearer {OR_KEY}" for r in seen)
    assert [r.model for r in fake_llm.main_requests()] == [OR_MODEL, OR_MODEL]
    llm = sorted((s for s in spans.values() if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    title = [s for s in llm if s.attributes.get("neatlogs.llm.purpose") == "title"]
    main = [s for s in llm if s not in title]
    assert len(main) == 2 and len(title) == 1
    for span, u in zip([*main, title[0]], (u1, u2, fake_llm.title_step.usage), strict=True):
        a = span.attributes
        assert a["neatlogs.llm.api"] == "openai.chat"
        assert a["gen_ai.provider.name"] == "openrouter"
        assert a["neatlogs.llm.cost_source"] == "provider"
        assert a["neatlogs.llm.cost_usd"] == pytest.approx(u.cost, rel=1e-12)
        assert a["gen_ai.usage.input_tokens"] == u.prompt_tokens
        assert a["neatlogs.llm.token_count.prompt"] == u.prompt_tokens - u.cached_tokens
        assert a["neatlogs.llm.token_count.cache_read"] == u.cached_tokens
        assert a["neatlogs.llm.token_count.completion"] == u.completion_tokens
    assert main[0].attributes["neatlogs.llm.model_name"] == OR_MODEL
    tools = [s for s in spans.values() if s.name.startswith("opencode.tool.")]
    assert len(tools) == 1 and tools[0].attributes["neatlogs.tool.call_id"] == \
        main[0].attributes["neatlogs.llm.tool_calls.0.id"]
    root = next(s for s in spans.values() if s.name == "opencode.session")
    assert root.attributes["neatlogs.session.cost_usd"] == pytest.approx(u1.cost + u2.cost + 0.0002, rel=1e-9)
    assert OR_KEY not in json.dumps([s.attributes for s in spans.values()])
    assert OR_KEY not in proxy.logs()
