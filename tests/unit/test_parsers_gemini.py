"""Gemini generateContent / streamGenerateContent parser, through the driver (`parse_exchange`)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.model import Message, ProviderError, ToolCall, Usage
from addon.parsers import parse_exchange, select
from addon.parsers.gemini import call_id_for
from tests.fakes.fake_providers import Call, Step, gemini_events
from tests.fixtures.wire import (
    assert_random_input_never_crashes,
    assert_split_invariant,
    exchange,
    json_chunks,
    opencode_requests,
    run_stream,
    sse_bytes,
    sse_frames,
    sse_of,
    timed,
    wire_json,
)

PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
REQ = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def run(name: str, request=REQ, path=PATH):
    return run_stream(path, request, name, query="alt=sse")


def test_select_paths():
    assert select(PATH).api == "google.generate_content"
    assert select("/google/v1beta/models/gemini-2.5-pro:generateContent").provider == "gcp.gemini"
    assert select("/v1/projects/p/locations/us/publishers/google/models/gemini-2.5-pro:streamGenerateContent"
                  ).api == "google.generate_content"
    assert select("/v1beta/models/gemini-2.5-flash:countTokens").api == "unknown"


def test_text_stream_model_from_path():
    fmt, req, res, _frames = run("gemini_text.sse")
    assert (fmt.api, fmt.provider) == ("google.generate_content", "gcp.gemini")
    assert req.model == "gemini-2.5-flash" and req.stream is True
    assert res.text == "Hello world, how can I help?"
    assert res.reasoning == "" and res.tool_calls == []
    assert res.finish_reason == "STOP"
    assert res.response_id == "Dq1yaPbxKMWbmecP5_DQkQ4" and res.model == "gemini-2.5-flash"
    # TRAP: candidatesTokenCount (8) excludes thoughtsTokenCount (19).
    assert res.usage == Usage(input_tokens=9, output_tokens=27, reasoning_tokens=19)
    assert res.usage.completion_tokens == 8
    assert res.truncated is False and res.error is None
    assert res.first_token_ns == 1000


def test_thoughts_parallel_calls_and_cache():
    _f, _r, res, _frames = run("gemini_tools_thinking.sse")
    assert res.reasoning == "**Planning**\nI need to read a.txt and run ls."
    assert res.text == "Reading now."
    assert res.tool_calls == [
        ToolCall(call_id_for("read", {"filePath": "a.txt"}, 0), "read", '{"filePath": "a.txt"}'),
        ToolCall(call_id_for("bash", {"command": "ls -la", "timeout": 30}, 0), "bash",
                 '{"command": "ls -la", "timeout": 30}'),
    ]
    assert all(tc.id.startswith("gemini_call_") for tc in res.tool_calls)
    assert res.tool_calls[0].id != res.tool_calls[1].id
    assert res.finish_reason == "STOP"
    assert res.usage == Usage(input_tokens=12000, output_tokens=160, cache_read_tokens=8000, reasoning_tokens=120)
    assert res.first_token_ns == 1000


def test_ids_are_deterministic_and_distinct_for_repeated_calls():
    step = Step(calls=[Call("read", {"filePath": "a"}), Call("read", {"filePath": "a"}),
                       Call("read", {"filePath": "b"})])
    data = sse_of([ev for _, ev in gemini_events(step, "gemini-2.5-flash")])
    _f, _r, one = parse_exchange(exchange(PATH, REQ, [(1, data)]))
    _f, _r, two = parse_exchange(exchange(PATH, REQ, [(1, data)]))
    ids = [tc.id for tc in one.tool_calls]
    assert ids == [tc.id for tc in two.tool_calls]
    assert len(set(ids)) == 3


def test_call_ids_match_the_next_request():
    """The id derived for a functionCall in response N equals the id of its result in request N+1."""
    step = Step(calls=[Call("read", {"filePath": "x.txt"}), Call("read", {"filePath": "y.txt"})])
    data = sse_of([ev for _, ev in gemini_events(step, "gemini-2.5-flash")])
    _f, _r, res = parse_exchange(exchange(PATH, REQ, [(1, data)]))
    _title, _first, second = opencode_requests("google")  # real opencode echo of that step
    _f, req, _ = parse_exchange(exchange(second["path"], second["body"], []))
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "tool"]
    assert [tc.id for tc in req.messages[1].tool_calls] == [tc.id for tc in res.tool_calls]
    assert [m.tool_call_id for m in req.messages[2:]] == [tc.id for tc in res.tool_calls]
    assert req.messages[2].name == "read" and "hello from x" in req.messages[2].content
    assert "hello from y" in req.messages[3].content


def test_results_match_calls_by_name_and_order():
    body = {"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "read", "args": {"p": 1}}},
                                    {"functionCall": {"name": "bash", "args": {"c": "ls"}}},
                                    {"functionCall": {"name": "read", "args": {"p": 2}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "bash", "response": {"output": "files"}}},
                                   {"functionResponse": {"name": "read", "response": {"content": "one"}}},
                                   {"functionResponse": {"name": "read", "response": {"content": "two"}}},
                                   {"functionResponse": {"name": "glob", "response": {"content": "?"}}}]},
    ]}
    _f, req, _ = parse_exchange(exchange(PATH, body, []))
    calls = req.messages[1].tool_calls
    assert [c.id for c in calls] == [call_id_for("read", {"p": 1}, 0), call_id_for("bash", {"c": "ls"}, 0),
                                     call_id_for("read", {"p": 2}, 0)]
    tools = req.messages[2:]
    assert [(m.name, m.tool_call_id, m.content) for m in tools] == [
        ("bash", calls[1].id, '{"output": "files"}'),
        ("read", calls[0].id, "one"),
        ("read", calls[2].id, "two"),
        ("glob", call_id_for("glob", None, 0), "?"),
    ]


def test_float_args_survive_a_js_round_trip():
    assert call_id_for("f", {"n": 2.0, "l": [1.0]}, 0) == call_id_for("f", {"n": 2, "l": [1]}, 0)


def test_in_band_error():
    _f, _r, res, _ = run("gemini_error.sse")
    assert res.error == ProviderError("UNAVAILABLE", "The model is overloaded. Please try again later.")
    assert res.text == "Partial" and res.truncated is False


def test_truncated_stream():
    frames = sse_frames(sse_bytes("gemini_tools_thinking.sse"))[:-1]  # the finishReason chunk never came
    _f, _r, res = parse_exchange(exchange(PATH, REQ, timed(frames)))
    assert res.truncated is True and res.finish_reason is None and res.tool_calls == []
    assert res.text == "Reading now."


def test_http_error_uses_status_as_type():
    body = {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                      "status": "RESOURCE_EXHAUSTED"}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks(body), status=429, stream=False))
    assert res.error == ProviderError("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
    _f, _r, res = parse_exchange(exchange(PATH, REQ, json_chunks([body]), status=400, stream=False))
    assert res.error.type == "RESOURCE_EXHAUSTED"


def test_non_streamed_body():
    path = "/v1beta/models/gemini-2.5-pro:generateContent"
    body = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Thinking...", "thought": True}, {"text": "Done."},
        {"functionCall": {"name": "read", "args": {"filePath": "a"}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 10, "thoughtsTokenCount": 5,
                          "totalTokenCount": 65},
        "modelVersion": "gemini-2.5-pro", "responseId": "abc"}
    _f, req, res = parse_exchange(exchange(path, REQ, json_chunks(body), stream=False))
    assert req.model == "gemini-2.5-pro" and req.stream is False
    assert res.text == "Done." and res.reasoning == "Thinking..."
    assert res.tool_calls == [ToolCall(call_id_for("read", {"filePath": "a"}, 0), "read", '{"filePath": "a"}')]
    assert res.usage == Usage(input_tokens=50, output_tokens=15, reasoning_tokens=5)
    assert res.response_id == "abc" and res.finish_reason == "STOP" and res.truncated is False


def test_prompt_blocked():
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    _f, _r, res = parse_exchange(exchange(PATH, REQ, [(1, sse_of([body]))]))
    assert res.error == ProviderError("prompt_blocked", "SAFETY") and res.truncated is False


def test_request_shape():
    body = {
        "systemInstruction": {"parts": [{"text": "You are opencode."}, {"text": "Env: linux"}]},
        "generationConfig": {"temperature": 1, "topP": 0.95, "topK": 64, "maxOutputTokens": 32000},
        "tools": [{"functionDeclarations": [{"name": "bash"}, {"name": "read"}]}],
        "contents": [
            {"role": "user", "parts": [{"text": "read a"}]},
            {"role": "model", "parts": [{"text": "hmm", "thought": True}, {"text": "Sure."},
                                        {"functionCall": {"name": "read", "args": {"filePath": "a"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "read",
                                                             "response": {"name": "read", "content": "A"}}}]},
        ],
    }
    _f, req, _ = parse_exchange(exchange(PATH, body, []))
    cid = call_id_for("read", {"filePath": "a"}, 0)
    assert req.system == ["You are opencode.", "Env: linux"]
    assert req.tools == ["bash", "read"]
    assert req.params == {"stream": True, "temperature": 1, "top_p": 0.95, "max_tokens": 32000}
    assert req.messages == [
        Message("user", "read a"),
        Message("assistant", "Sure.", tool_calls=[ToolCall(cid, "read", '{"filePath": "a"}')]),
        Message("tool", "A", tool_call_id=cid, name="read"),
    ]


def test_real_opencode_title_request():
    title, first, _second = opencode_requests("google")
    _f, t, _ = parse_exchange(exchange(title["path"], title["body"], []))
    assert t.model == "gemini-3.8-flash" and t.tools == [] and t.params["temperature"] == 0.5
    _f, r1, _ = parse_exchange(exchange(first["path"], first["body"], []))
    assert r1.model == "gemini-2.5-flash" and "read" in r1.tools and r1.params["max_tokens"] == 32000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["gemini_text.sse", "gemini_tools_thinking.sse", "gemini_error.sse"]),
       points=st.lists(st.integers(0, 20000), max_size=30))
def test_any_byte_split_gives_the_same_result(name, points):
    assert_split_invariant(PATH, REQ, name, points)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(wire_json(), max_size=8), garbage=st.binary(max_size=64), body=wire_json())
def test_random_events_never_crash(events, garbage, body):
    assert_random_input_never_crashes(PATH, events, garbage, body)
