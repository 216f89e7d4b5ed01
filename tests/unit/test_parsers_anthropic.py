"""Anthropic Messages parser, through the driver (`parse_exchange`)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.model import Message, ProviderError, ToolCall, Usage
from addon.parsers import parse_exchange, select
from tests.fixtures.wire import (
    assert_random_input_never_crashes,
    assert_split_invariant,
    exchange,
    first_index,
    json_chunks,
    opencode_requests,
    run_stream,
    sse_bytes,
    sse_frames,
    sse_of,
    timed,
    wire_json,
)

PATH = "/v1/messages"
REQ = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
       "messages": [{"role": "user", "content": "hi"}]}


def run(name: str, request=REQ):
    return run_stream(PATH, request, name)


def test_select_paths():
    assert select("/v1/messages").api == "anthropic.messages"
    assert select("/anthropic/v1/messages").provider == "anthropic"
    assert select("/v1/messages/count_tokens").api == "unknown"


def test_text_stream():
    fmt, _req, res, frames = run("anthropic_text.sse")
    assert (fmt.api, fmt.provider) == ("anthropic.messages", "anthropic")
    assert res.text == "Hello! How can I help?"
    assert res.reasoning == "" and res.tool_calls == []
    assert res.finish_reason == "end_turn"
    assert res.response_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert res.model == "claude-sonnet-4-5-20250929"
    assert res.usage == Usage(input_tokens=25, output_tokens=15)  # cumulative output from message_delta
    assert res.error is None and res.truncated is False
    assert res.first_token_ns == 1000 + 1000 * first_index(frames, b"text_delta")


def test_thinking_parallel_tools_and_cache_tokens():
    _f, _r, res, frames = run("anthropic_tools_thinking.sse")
    assert res.reasoning == "The user wants both files. I'll read them in parallel."
    assert res.text == "Let me read both."
    assert res.tool_calls == [
        ToolCall("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "read", '{"filePath": "a.txt"}'),
        ToolCall("toolu_01UzwxMQ6c6GhjsV2JkXmdnb", "bash", '{"command": "ls -la"}'),
    ]
    assert res.finish_reason == "tool_use"
    # TRAP: Anthropic's input_tokens (12) excludes cache reads (30000) and writes (2000).
    assert res.usage == Usage(input_tokens=32012, output_tokens=210, cache_read_tokens=30000,
                              cache_write_tokens=2000)
    assert res.usage.prompt_tokens == 12
    assert res.first_token_ns == 1000 + 1000 * first_index(frames, b"thinking_delta")


def test_message_delta_without_repeated_input_keeps_message_start_numbers():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-haiku-4-5", "usage": {
            "input_tokens": 7, "cache_creation_input_tokens": None, "cache_read_input_tokens": 100,
            "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "list", "input": {}}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9, "input_tokens": None}},
        {"type": "message_stop"},
    ]
    _f, _r, res = parse_exchange(exchange(PATH, REQ, [(5, sse_of(events, named=True))]))
    assert res.usage == Usage(input_tokens=107, output_tokens=9, cache_read_tokens=100)
    assert res.tool_calls == [ToolCall("toolu_1", "list", "{}")]  # no input deltas: the empty input
    assert res.first_token_ns == 5


def test_in_band_error_event():
    _f, _r, res, _ = run("anthropic_error.sse")
    assert res.error == ProviderError("overloaded_error", "Overloaded")
    assert res.text == "Partial"
    assert res.truncated is False


def test_truncated_stream():
    frames = sse_frames(sse_bytes("anthropic_tools_thinking.sse"))[:-2]  # no message_delta / message_stop
    _f, _r, res = parse_exchange(exchange(PATH, REQ, timed(frames)))
    assert res.truncated is True
    assert len(res.tool_calls) == 2
    assert res.finish_reason is None
    assert res.usage == Usage(input_tokens=32012, output_tokens=3, cache_read_tokens=30000, cache_write_tokens=2000)


def test_http_error_body():
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has "
                                       "exceeded your per-minute rate limit"}, "request_id": "req_011"}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(body), status=429, stream=False))
    assert res.error == ProviderError("rate_limit_error",
                                      "Number of request tokens has exceeded your per-minute rate limit")


def test_non_streamed_body():
    body = {
        "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "Need the file.", "signature": "zbbJ"},
            {"type": "text", "text": "I'll check."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "read",
             "input": {"filePath": "x.txt"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 50, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 2000,
                  "output_tokens": 80},
    }
    _f, req, res = parse_exchange(exchange(PATH, {**REQ, "stream": False}, json_chunks(body), stream=False))
    assert req.stream is False
    assert res.text == "I'll check." and res.reasoning == "Need the file."
    assert res.tool_calls == [ToolCall("toolu_01A09q90qw90lq917835lq9", "read", '{"filePath": "x.txt"}')]
    assert res.finish_reason == "tool_use"
    assert res.response_id == "msg_01Aq9w938a90dw8q" and res.model == "claude-sonnet-4-20250514"
    assert res.usage == Usage(input_tokens=2060, output_tokens=80, cache_read_tokens=2000, cache_write_tokens=10)


def test_request_shape():
    body = {
        "model": "claude-sonnet-4-5", "max_tokens": 32000, "temperature": 0.3, "top_p": 0.95, "stream": True,
        "system": [{"type": "text", "text": "You are OpenCode.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Env: linux"}],
        "tools": [{"name": "read", "input_schema": {}}, {"name": "bash", "input_schema": {}}],
        "messages": [
            {"role": "user", "content": "read a.txt"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"filePath": "a.txt"}},
                {"type": "tool_use", "id": "toolu_2", "name": "bash", "input": {"command": "false"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "exit 1"}]},
                {"type": "text", "text": "go on"},
            ]},
        ],
    }
    _f, req, _ = parse_exchange(exchange(PATH, body, []))
    assert req.model == "claude-sonnet-4-5" and req.stream is True
    assert req.system == ["You are OpenCode.", "Env: linux"]
    assert req.tools == ["read", "bash"]
    assert req.params == {"temperature": 0.3, "top_p": 0.95, "max_tokens": 32000, "stream": True}
    assert req.messages == [
        Message("user", "read a.txt"),
        Message("assistant", "Reading.", tool_calls=[ToolCall("toolu_1", "read", '{"filePath": "a.txt"}'),
                                                     ToolCall("toolu_2", "bash", '{"command": "false"}')]),
        Message("tool", "A", tool_call_id="toolu_1"),
        Message("tool", "exit 1", tool_call_id="toolu_2", is_error=True),
        Message("user", "go on"),
    ]


def test_system_string():
    _f, req, _ = parse_exchange(exchange(PATH, {**REQ, "system": "Be terse."}, []))
    assert req.system == ["Be terse."]


def test_real_opencode_requests():
    """What opencode 1.18.33's built-in `anthropic` provider sent (recorded against the fake)."""
    title, first, second = opencode_requests("anthropic")
    _f, t, _ = parse_exchange(exchange(title["path"], title["body"], []))
    assert t.model == "claude-haiku-4-5-20251001" and t.tools == [] and t.params["max_tokens"] == 48000
    _f, r1, _ = parse_exchange(exchange(first["path"], first["body"], []))
    assert r1.model == "claude-sonnet-4-5" and "read" in r1.tools and r1.system
    assert r1.messages == [Message("user", '"read the files x.txt and y.txt"')]
    _f, r2, _ = parse_exchange(exchange(second["path"], second["body"], []))
    assert [m.role for m in r2.messages] == ["user", "assistant", "tool", "tool"]
    ids = [tc.id for tc in r2.messages[1].tool_calls]
    assert [m.tool_call_id for m in r2.messages[2:]] == ids and len(ids) == 2
    assert r2.messages[1].content == ""  # the echoed thinking block is not answer text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["anthropic_text.sse", "anthropic_tools_thinking.sse", "anthropic_error.sse"]),
       points=st.lists(st.integers(0, 20000), max_size=30))
def test_any_byte_split_gives_the_same_result(name, points):
    assert_split_invariant(PATH, REQ, name, points)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(wire_json(), max_size=8), garbage=st.binary(max_size=64), body=wire_json())
def test_random_events_never_crash(events, garbage, body):
    assert_random_input_never_crashes(PATH, events, garbage, body, named=True)
