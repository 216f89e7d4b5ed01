"""The correlator's joins do not depend on the order in which wire captures and plugin events arrive."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from addon import events as ev
from addon.correlate import Correlator
from addon.model import Exchange
from addon.spans import Content, Span

T0 = 1_700_000_000_000_000_000


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def exchange(sid: str, messages: list[dict], reply: bytes, t: int, parent: str | None = None,
             agent: str | None = None) -> Exchange:
    body = {"model": "m", "stream": True, "messages": messages,
            "tools": [{"type": "function", "function": {"name": "read"}}]}
    return Exchange(f"f{t}", "fake", "http://up", "POST", "/v1/chat/completions", "", {}, json.dumps(body).encode(),
                    False, t, status=200, response_headers={"content-type": "text/event-stream"},
                    chunks=[(t + 10, reply)], end_ns=t + 100, session_id=sid, parent_session_id=parent, agent=agent)


def tool_reply(call_id: str, usage: dict) -> bytes:
    return sse({"id": "r", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": call_id, "function": {"name": "read", "arguments": "{}"}}]}}]},
        {"id": "r", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "r", "choices": [], "usage": usage})


def text_reply(text: str, usage: dict) -> bytes:
    return sse({"id": "r2", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]},
               {"id": "r2", "choices": [], "usage": usage})


class Sink:
    def __init__(self) -> None:
        self.spans: dict[str, Span] = {}
        self.batches: list[list[Span]] = []

    def __call__(self, spans: list[Span], key: str | None) -> None:
        self.batches.append(spans)
        for s in spans:
            self.spans[s.span_id] = s


def correlator(sink: Sink) -> Correlator:
    return Correlator(sink, Content(65536, None), idle_timeout=1.0)


U1 = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 40}}
U2 = {"prompt_tokens": 200, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 150}}


def scenario_items() -> dict[str, Any]:
    sid = "ses_a"
    user = {"role": "user", "content": "go"}
    call1 = exchange(sid, [user], tool_reply("call_1", U1), T0)
    call2 = exchange(sid, [user, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "file body"}], text_reply("done", U2), T0 + 1_000)
    ms = 1e-6
    tool_end = ev.ToolEnd(type="tool.end", session_id=sid, ts=(T0 + 500) * ms, call_id="call_1", tool="read",
                          args={}, title="README.md", output="file body", metadata={"lines": 1},
                          start_ts=(T0 + 200) * ms, end_ts=(T0 + 500) * ms)
    cost1 = ev.MessageCompleted(type="message.completed", session_id=sid, message_id="msg_1", agent="build",
                                tokens=ev.Tokens(input=60, output=10, cache=ev.TokenCache(read=40)), cost=0.25)
    cost2 = ev.MessageCompleted(type="message.completed", session_id=sid, message_id="msg_2", agent="build",
                                tokens=ev.Tokens(input=50, output=20, cache=ev.TokenCache(read=150)), cost=0.5)
    idle = ev.SessionIdle(type="session.idle", session_id=sid)
    return {"call1": call1, "call2": call2, "tool_end": tool_end, "cost1": cost1, "cost2": cost2, "idle": idle}


ORDERS = [p for p in itertools.permutations(["call1", "call2", "tool_end", "cost1", "cost2"])
          if p.index("call1") < p.index("call2")]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_final_state_is_order_independent(order: tuple[str, ...]) -> None:
    items = scenario_items()
    sink = Sink()
    c = correlator(sink)
    for name in [*order, "idle"]:
        item = items[name]
        if isinstance(item, Exchange):
            c.on_exchange(item)
        else:
            c.on_events([item])
    spans = list(sink.spans.values())
    tools = [s for s in spans if s.name.startswith("opencode.tool.")]
    assert len(tools) == 1  # one span per call id, never a wire copy beside the plugin's
    tool = tools[0]
    assert tool.attributes["neatlogs.tool.source"] == "plugin"
    assert tool.attributes["neatlogs.tool.title"] == "README.md"
    llm = sorted((s for s in spans if s.name.startswith("opencode.llm.")), key=lambda s: s.start_ns)
    assert [s.attributes["neatlogs.llm.cost_usd"] for s in llm] == [0.25, 0.5]
    assert all(s.attributes["neatlogs.llm.cost_source"] == "opencode" for s in llm)
    root = next(s for s in spans if s.name == "opencode.session")
    assert root.attributes["neatlogs.session.cost_usd"] == 0.75
    assert root.attributes["neatlogs.session.tool_calls"] == 1
    assert len({s.trace_id for s in spans}) == 1


def test_child_event_before_parent_is_known_still_nests() -> None:
    sink = Sink()
    c = correlator(sink)
    parent_call = exchange("ses_parent", [{"role": "user", "content": "go"}], tool_reply("call_t", U1), T0)
    c.on_exchange(parent_call)
    # The child's first plugin event carries no parent; its wire request (later) does.
    c.on_events([ev.ChatParams(type="chat.params", session_id="ses_child", agent="general")])
    c.on_exchange(exchange("ses_child", [{"role": "user", "content": "sub"}], text_reply("ok", U2), T0 + 500,
                           parent="ses_parent"))
    c.on_events([ev.SessionIdle(type="session.idle", session_id="ses_child")])
    spans = list(sink.spans.values())
    assert len({s.trace_id for s in spans}) == 1
    child_root = next(s for s in spans if s.name == "opencode.session")
    assert child_root.attributes["neatlogs.conversation.id"] == "ses_child"
    assert child_root.parent_span_id is not None


def test_sessions_never_mix() -> None:
    sink = Sink()
    c = correlator(sink)
    for i in range(20):
        sid = f"ses_{i % 4}"
        c.on_exchange(exchange(sid, [{"role": "user", "content": sid}], text_reply(sid, U1), T0 + i * 10))
    for s in sink.spans.values():
        assert s.attributes["neatlogs.conversation.id"] == s.session_id
        if s.name.startswith("opencode.llm."):
            assert s.attributes["input.value"] == s.session_id
    assert len({s.trace_id for s in sink.spans.values()}) == 4


def test_turn_number_comes_from_the_request_history() -> None:
    """A replica that takes over a session mid-way numbers the turn as the one that served turn 1 would."""
    sink = Sink()
    c = correlator(sink)
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "ok"},
               {"role": "user", "content": "two"}]
    c.on_exchange(exchange("ses_moved", history, text_reply("fine", U1), T0))
    c.on_events([ev.SessionIdle(type="session.idle", session_id="ses_moved")])
    root = next(s for s in sink.spans.values() if s.name == "opencode.session")
    marker = next(s for s in sink.spans.values() if s.name == "neatlogs.trace.complete")
    assert root.attributes["neatlogs.session.turns"] == 2
    from addon.spans import marker_span_id_for

    assert marker.span_id == marker_span_id_for("ses_moved", 2)


def test_quiet_turn_end_uses_the_deadline_and_skips_stale_entries() -> None:
    """Without the plugin a turn ends after the quiet period, once; a new call moves the deadline."""
    sink = Sink()
    c = correlator(sink)  # idle_timeout=1.0 s
    user = [{"role": "user", "content": "go"}]
    c.on_exchange(exchange("ses_q", user, text_reply("a", U1), T0))
    c.tick(T0 + 100 + 500_000_000)  # half the quiet period
    assert not any(s.name == "opencode.session" for s in sink.spans.values())
    c.tick(T0 + 100 + 1_000_000_000)
    roots = [b for b in sink.batches if any(s.name == "opencode.session" for s in b)]
    assert len(roots) == 1
    c.tick(T0 + 100 + 5_000_000_000)  # nothing left to end
    assert len([b for b in sink.batches if any(s.name == "opencode.session" for s in b)]) == 1
