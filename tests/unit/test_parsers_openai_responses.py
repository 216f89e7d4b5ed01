"""OpenAI Responses API parser, through the driver (`parse_exchange`)."""

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

PATH = "/v1/responses"
REQ = {"model": "gpt-5", "stream": True, "input": [{"role": "user", "content": "hi"}]}


def run(name: str, request=REQ):
    return run_stream(PATH, request, name)


def test_select_paths():
    assert select("/v1/responses").api == "openai.responses"
    assert select("/openai/v1/responses").provider == "openai"
    assert select("/v1/responses/resp_123/cancel").api == "unknown"


def test_text_stream():
    fmt, _req, res, frames = run("responses_text.sse")
    assert (fmt.api, fmt.provider) == ("openai.responses", "openai")
    assert res.text == "Hi there! How can I help?"
    assert res.reasoning == ""
    assert res.tool_calls == []
    assert res.finish_reason == "stop"
    assert res.response_id == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert res.model == "gpt-4.1-2025-04-14"
    assert res.usage == Usage(input_tokens=2048, output_tokens=12, cache_read_tokens=1536)
    assert res.usage.prompt_tokens == 512
    assert res.error is None and res.truncated is False
    assert res.first_token_ns == 1000 + 1000 * first_index(frames, b"output_text.delta")


def test_parallel_tool_calls_with_reasoning():
    _fmt, _req, res, frames = run("responses_tools_reasoning.sse")
    assert res.text == ""
    assert res.reasoning == "**Reading files**\n\nI need both files.\n\nThen answer."
    assert res.tool_calls == [
        ToolCall("call_Pn0bN4y4sMRWq1Zlx0qcVNGO", "read", '{"filePath":"a.txt"}'),
        ToolCall("call_8Ma8Ov3qYwt3kh3Zg2iXHrTV", "read", '{"filePath":"b.txt","limit":20}'),
    ]
    assert res.finish_reason == "tool_calls"
    assert res.model == "gpt-5-2025-08-07"
    assert res.usage == Usage(input_tokens=5000, output_tokens=300, cache_read_tokens=4096, reasoning_tokens=192)
    assert res.usage.completion_tokens == 108
    assert res.first_token_ns == 1000 + 1000 * first_index(frames, b"reasoning_summary_text.delta")


def test_argument_deltas_keyed_by_item_id_without_done_events():
    events = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": "fc_1", "type": "function_call", "call_id": "call_A", "name": "bash", "arguments": ""}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"id": "fc_2", "type": "function_call", "call_id": "call_B", "name": "read", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_2", "delta": '{"filePath":'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"command":"ls"}'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_2", "delta": '"x"}'},
        {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", "model": "gpt-5"}},
    ]
    _f, _r, res = parse_exchange(exchange(PATH, REQ, [(1, sse_of(events))]))
    assert res.tool_calls == [ToolCall("call_A", "bash", '{"command":"ls"}'),
                              ToolCall("call_B", "read", '{"filePath":"x"}')]
    assert res.finish_reason == "tool_calls"
    assert res.usage is None


def test_incomplete_max_output_tokens():
    _f, _r, res, _ = run("responses_incomplete.sse")
    assert res.text == "The answer is"
    assert res.finish_reason == "length"
    assert res.truncated is False and res.error is None
    assert res.usage == Usage(input_tokens=100, output_tokens=16)


def test_response_failed():
    _f, _r, res, _ = run("responses_failed.sse")
    assert res.error == ProviderError("server_error",
                                      "The server had an error while processing your request. Sorry about that!")
    assert res.truncated is False
    assert res.finish_reason is None


def test_error_event():
    _f, _r, res, _ = run("responses_error_event.sse")
    assert res.error == ProviderError("rate_limit_exceeded", "Rate limit reached for gpt-4.1 on tokens per min (TPM).")
    assert res.truncated is False


def test_truncated_stream():
    frames = sse_frames(sse_bytes("responses_text.sse"))[:-1]  # no response.completed
    _f, _r, res = parse_exchange(exchange(PATH, REQ, timed(frames)))
    assert res.truncated is True
    assert res.text == "Hi there! How can I help?"
    assert res.finish_reason is None and res.usage is None
    assert res.response_id.startswith("resp_")


def test_http_error_body():
    body = {"error": {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(body), status=401, stream=False))
    assert res.error == ProviderError("invalid_request_error", "Incorrect API key provided: sk-test.")


def test_non_streamed_body():
    body = {
        "id": "resp_abc", "object": "response", "status": "completed", "model": "gpt-4o-2024-08-06",
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking."}]},
            {"id": "msg_1", "type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Sure.", "annotations": []}]},
            {"id": "fc_1", "type": "function_call", "call_id": "call_X", "name": "glob",
             "arguments": '{"pattern":"*.py"}'},
        ],
        "usage": {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 20,
                  "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 320},
    }
    req = {**REQ, "stream": False}
    _f, r, res = parse_exchange(exchange(PATH, req, json_chunks(body), stream=False))
    assert r.stream is False and r.params == {"stream": False}
    assert res.text == "Sure." and res.reasoning == "Thinking."
    assert res.tool_calls == [ToolCall("call_X", "glob", '{"pattern":"*.py"}')]
    assert res.finish_reason == "tool_calls"
    assert res.response_id == "resp_abc" and res.model == "gpt-4o-2024-08-06"
    assert res.usage == Usage(input_tokens=300, output_tokens=20, reasoning_tokens=5)


def test_request_shape():
    body = {
        "model": "gpt-5", "instructions": "Be brief.", "stream": True, "temperature": 0.2, "top_p": 0.9,
        "max_output_tokens": 4096, "store": False,
        "tools": [{"type": "function", "name": "read", "parameters": {}}, {"type": "web_search"}],
        "input": [
            {"role": "developer", "content": "You are OpenCode."},
            {"role": "user", "content": [{"type": "input_text", "text": "read a.txt"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Reading."}]},
            {"type": "function_call", "call_id": "call_1", "name": "read", "arguments": '{"filePath":"a.txt"}'},
            {"type": "function_call", "call_id": "call_2", "name": "read", "arguments": '{"filePath":"b.txt"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "A"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "B"}]},
            {"type": "message", "role": "user", "content": "thanks"},
        ],
    }
    _f, req, _res = parse_exchange(exchange(PATH, body, []))
    assert req.api == "openai.responses" and req.model == "gpt-5" and req.stream is True
    assert req.system == ["Be brief.", "You are OpenCode."]
    assert req.tools == ["read"]
    assert req.params == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 4096, "stream": True}
    assert req.messages == [
        Message("user", "read a.txt"),
        Message("assistant", "Reading.", tool_calls=[ToolCall("call_1", "read", '{"filePath":"a.txt"}'),
                                                     ToolCall("call_2", "read", '{"filePath":"b.txt"}')]),
        Message("tool", "A", tool_call_id="call_1"),
        Message("tool", "B", tool_call_id="call_2"),
        Message("user", "thanks"),
    ]


def test_string_input():
    _f, req, _ = parse_exchange(exchange(PATH, {"model": "gpt-4o", "input": "hello"}, []))
    assert req.messages == [Message("user", "hello")] and req.stream is False


def test_real_opencode_requests():
    """What opencode 1.18.33's built-in `openai` provider sent (recorded against the fake)."""
    reqs = opencode_requests("openai")
    title, first, second = reqs
    _f, t, _ = parse_exchange(exchange(title["path"], title["body"], []))
    assert t.model == "gpt-5.4-nano" and t.tools == [] and t.system and t.messages[-1].role == "user"
    _f, r1, _ = parse_exchange(exchange(first["path"], first["body"], []))
    assert r1.model == "gpt-5" and r1.stream is True and "read" in r1.tools and len(r1.system) == 1
    assert r1.messages == [Message("user", '"read the files x.txt and y.txt"')]
    _f, r2, _ = parse_exchange(exchange(second["path"], second["body"], []))
    ids = [tc.id for tc in r2.messages[1].tool_calls]
    assert [m.role for m in r2.messages] == ["user", "assistant", "tool", "tool"]
    assert [m.tool_call_id for m in r2.messages[2:]] == ids and len(ids) == 2
    assert "hello from x" in r2.messages[2].content


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["responses_text.sse", "responses_tools_reasoning.sse", "responses_incomplete.sse",
                             "responses_failed.sse"]),
       points=st.lists(st.integers(0, 20000), max_size=30))
def test_any_byte_split_gives_the_same_result(name, points):
    assert_split_invariant(PATH, REQ, name, points)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(wire_json(), max_size=8), garbage=st.binary(max_size=64), body=wire_json())
def test_random_events_never_crash(events, garbage, body):
    assert_random_input_never_crashes(PATH, events, garbage, body, named=True)
