"""OpenRouter (Chat Completions + extras), selected through the driver's refiners."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.model import ProviderError, ToolCall, Usage
from addon.parsers import parse_exchange, select
from tests.fixtures.wire import (
    assert_no_parser_crash,
    assert_split_invariant,
    exchange,
    json_chunks,
    run_stream,
    sse_bytes,
    sse_frames,
    sse_of,
    timed,
    wire_json,
)

PATH = "/api/v1/chat/completions"
UP = "https://openrouter.ai"
REQ = {"model": "anthropic/claude-sonnet-4", "stream": True, "usage": {"include": True},
       "messages": [{"role": "user", "content": "capital of France?"}]}


def run(name: str, **kw):
    return run_stream(PATH, REQ, name, upstream=UP, **kw)


def test_selected_by_route_or_upstream_host():
    assert select(PATH, "openrouter", "https://example.test").provider == "openrouter"
    assert select("/v1/chat/completions", "or", "https://openrouter.ai:443").provider == "openrouter"
    assert select("/v1/chat/completions", "or", "https://eu.openrouter.ai").provider == "openrouter"
    plain = select("/v1/chat/completions", "openai", "https://api.openai.com")
    assert plain.provider == "openai" and plain.api == "openai.chat"
    assert select("/v1/chat/completions", "x", "https://notopenrouter.ai").provider == "openai"
    assert select("/v1/messages", "openrouter", UP).api == "anthropic.messages"  # only Chat Completions


def test_reasoning_cost_and_cache_write():
    fmt, req, res, frames = run("openrouter_reasoning_cost.sse")
    assert (fmt.api, fmt.provider) == ("openai.chat", "openrouter")
    assert req.model == "anthropic/claude-sonnet-4"
    assert res.text == "Paris is the capital."
    assert res.reasoning == "Let me think briefly."
    assert res.finish_reason == "stop"
    assert res.model == "anthropic/claude-sonnet-4"
    assert res.response_id == "gen-1751992345-Tq2Ld1Fj7sE3hZ9k2pYc"
    assert res.usage == Usage(input_tokens=1000, output_tokens=50, cache_read_tokens=600, cache_write_tokens=100,
                              reasoning_tokens=20, provider_cost_usd=0.01095)
    assert res.truncated is False and res.error is None
    # the comment frame (": OPENROUTER PROCESSING") came first and carries nothing
    assert res.first_token_ns == 1000 + 1000 * next(i for i, f in enumerate(frames) if b"Let me think" in f)


def test_byok_cost_adds_the_upstream_bill():
    chunks = [
        {"id": "gen-1", "model": "openai/gpt-4o", "choices": [{"index": 0, "delta": {"content": "ok"}}]},
        {"id": "gen-1", "model": "openai/gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "gen-1", "model": "openai/gpt-4o", "choices": [], "usage": {
            "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cost": 0.0001, "is_byok": True,
            "cost_details": {"upstream_inference_cost": 0.002}}},
    ]
    data = sse_of(chunks) + b"data: [DONE]\n\n"
    _f, _r, res = parse_exchange(exchange(PATH, REQ, [(1, data)], upstream=UP))
    assert res.usage.provider_cost_usd == 0.0001 + 0.002


def test_in_band_stream_error_after_200():
    _f, _r, res, _ = run("openrouter_error.sse")
    assert res.error == ProviderError("server_error", "Provider disconnected unexpectedly")
    assert res.text == "Par" and res.truncated is False


def test_in_band_error_in_non_streamed_200_body():
    body = {"id": "gen-2", "model": "openai/gpt-4o", "choices": [{"index": 0, "finish_reason": "error",
            "message": {"role": "assistant", "content": ""},
            "error": {"code": 502, "message": "Upstream error from OpenAI"}}]}
    _f, _r, res = parse_exchange(exchange(PATH, {**REQ, "stream": False}, json_chunks(body), upstream=UP,
                                          stream=False))
    assert res.error == ProviderError("http_502", "Upstream error from OpenAI")
    top = {"error": {"code": 408, "message": "Timed out"}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(top), upstream=UP, stream=False))
    assert res.error == ProviderError("http_408", "Timed out")


def test_http_error_body():
    body = {"error": {"code": 402, "message": "Insufficient credits", "metadata": {}}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(body), status=402, upstream=UP, stream=False))
    assert res.error == ProviderError("http_402", "Insufficient credits")


def test_non_streamed_body_with_tools_and_cost():
    body = {"id": "gen-3", "model": "google/gemini-2.5-flash", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "reasoning": "use a tool",
                "tool_calls": [{"id": "tool_0_read", "type": "function",
                                "function": {"name": "read", "arguments": '{"filePath":"a"}'}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "cost": 0.00002, "is_byok": False,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 3}}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(body), upstream=UP, stream=False))
    assert res.tool_calls == [ToolCall("tool_0_read", "read", '{"filePath":"a"}')]
    assert res.reasoning == "use a tool" and res.finish_reason == "tool_calls" and res.error is None
    assert res.usage == Usage(input_tokens=20, output_tokens=7, reasoning_tokens=3, provider_cost_usd=0.00002)


def test_truncated_stream():
    frames = sse_frames(sse_bytes("openrouter_reasoning_cost.sse"))[:-1]  # no [DONE]
    _f, _r, res = parse_exchange(exchange(PATH, REQ, timed(frames), upstream=UP))
    assert res.truncated is True and res.text == "Paris is the capital."


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["openrouter_reasoning_cost.sse", "openrouter_error.sse"]),
       points=st.lists(st.integers(0, 20000), max_size=30))
def test_any_byte_split_gives_the_same_result(name, points):
    assert_split_invariant(PATH, REQ, name, points, upstream=UP)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(wire_json(), max_size=8), body=wire_json())
def test_random_events_never_crash(events, body):
    # OpenAIChat (the base class) is not ours: only shapes OpenRouter adds are fuzzed deeply here.
    ex = exchange(PATH, json.dumps(body).encode(), [(1, sse_of(events))], upstream=UP)
    _f, req, res = parse_exchange(ex)
    assert req.error is None or isinstance(req.error, str)
    if isinstance(body, dict):
        _f, req, res = parse_exchange(exchange(PATH, REQ, json_chunks({"usage": body, "error": body}),
                                               upstream=UP, stream=False))
        assert_no_parser_crash(req, res)
