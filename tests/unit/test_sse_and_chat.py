"""SSE decoding and the Chat Completions parser on realistic streams, through the real driver."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from addon.model import Exchange
from addon.parsers import parse_exchange, select
from addon.sse import SSEDecoder, decode_events


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None,
          choices: bool = True) -> dict:
    c: dict = {"id": "chatcmpl-42", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1-2025"}
    c["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []
    if usage is not None:
        c["usage"] = usage
    return c


USAGE = {"prompt_tokens": 1200, "completion_tokens": 87, "total_tokens": 1287,
         "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 20}}

PARALLEL = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}),
    chunk({"content": "look."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                           "function": {"name": "read", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"filePath":'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                           "function": {"name": "glob", "arguments": '{"pattern"'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"README.md"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": ':"*.py"}'}}]}),
    chunk(finish="tool_calls"),
    chunk(usage=USAGE, choices=False),
]


def sse_bytes(chunks: list[dict], done: bool = True, eol: bytes = b"\n") -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + eol + eol for c in chunks)
    return out + (b"data: [DONE]" + eol + eol if done else b"")


def exchange(body: bytes, *, stream: bool = True, status: int = 200, split: int | None = None,
             headers: dict | None = None, request: dict | None = None) -> Exchange:
    pieces = [body] if split is None else [body[i:i + split] for i in range(0, len(body), split)]
    req = request or {"model": "gpt-4.1", "stream": stream, "stream_options": {"include_usage": True},
                      "temperature": 0.2, "max_tokens": 512,
                      "messages": [{"role": "system", "content": "You are opencode."},
                                   {"role": "user", "content": "hi"}],
                      "tools": [{"type": "function", "function": {"name": "read", "parameters": {}}}]}
    h = {"content-type": "text/event-stream" if stream else "application/json", **(headers or {})}
    return Exchange("f1", "openai", "https://api.openai.com", "POST", "/v1/chat/completions", "", {},
                    json.dumps(req).encode(), False, 1_000, status=status, response_headers=h,
                    chunks=[(2_000 + i, p) for i, p in enumerate(pieces)], end_ns=9_000)


def test_parallel_tool_calls_text_usage_done() -> None:
    ex = exchange(b"")
    ex.chunks = [(2_000 + i, sse_bytes([c], done=False)) for i, c in enumerate(PARALLEL)]
    ex.chunks.append((3_000, b"data: [DONE]\n\n"))
    fmt, req, res = parse_exchange(ex)
    assert fmt.api == "openai.chat"
    assert req.model == "gpt-4.1" and req.stream and req.system == ["You are opencode."]
    assert req.tools == ["read"] and req.params == {"temperature": 0.2, "max_tokens": 512, "stream": True}
    assert res.text == "Let me look."
    assert [(t.id, t.name, t.arguments) for t in res.tool_calls] == [
        ("call_a", "read", '{"filePath":"README.md"}'), ("call_b", "glob", '{"pattern":"*.py"}')]
    assert res.finish_reason == "tool_calls" and not res.truncated and res.error is None
    assert res.response_id == "chatcmpl-42" and res.model == "gpt-4.1-2025"
    u = res.usage
    assert u is not None
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) == (1200, 87, 1024, 20)
    assert (u.prompt_tokens, u.completion_tokens) == (176, 67)  # opencode's counting
    assert res.first_token_ns == 2_001  # the first chunk with content, not the empty role delta


def test_crlf_and_every_split_give_the_same_result() -> None:
    body = sse_bytes(PARALLEL, eol=b"\r\n")
    whole = parse_exchange(exchange(body))[2]
    for split in (1, 2, 3, 7, 64):
        res = parse_exchange(exchange(body, split=split))[2]
        assert (res.text, res.tool_calls, res.usage, res.finish_reason) == (
            whole.text, whole.tool_calls, whole.usage, whole.finish_reason)


def test_truncated_stream_is_marked() -> None:
    res = parse_exchange(exchange(sse_bytes(PARALLEL[:5], done=False)))[2]
    assert res.truncated
    assert res.tool_calls[0].arguments == '{"filePath":'


def test_cut_connection_records_an_error() -> None:
    ex = exchange(sse_bytes(PARALLEL[:3], done=False))
    ex.error = "Server disconnected."
    res = parse_exchange(ex)[2]
    assert res.truncated and res.error is not None and res.error.type == "stream_interrupted"


def test_in_band_error_after_200() -> None:
    err = b'data: {"error": {"type": "overloaded", "message": "busy"}}\n\n'
    body = sse_bytes([chunk({"content": "x"})], done=False) + err
    res = parse_exchange(exchange(body))[2]
    assert res.error is not None and (res.error.type, res.error.message) == ("overloaded", "busy")


def test_non_streamed_body_and_gzip() -> None:
    body = json.dumps({"id": "chatcmpl-1", "model": "gpt-4.1", "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "Done.", "tool_calls": [
                           {"id": "call_z", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 3}}).encode()
    for encoded, headers in ((body, {}), (gzip.compress(body), {"content-encoding": "gzip"})):
        res = parse_exchange(exchange(encoded, stream=False, split=5, headers=headers))[2]
        assert res.text == "Done." and res.tool_calls[0].id == "call_z" and res.usage is not None
        assert res.usage.input_tokens == 10 and res.finish_reason == "stop"


def test_http_error_body() -> None:
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}).encode()
    res = parse_exchange(exchange(body, stream=False, status=429))[2]
    assert res.error is not None and res.error.type == "rate_limit_exceeded"
    assert res.error.message == "Rate limit reached"


def test_corrupt_gzip_and_non_json_never_raise() -> None:
    res = parse_exchange(exchange(b"\x1f\x8b\x08garbage", stream=False, headers={"content-encoding": "gzip"}))[2]
    assert res.error is not None and res.error.type == "decode_error"
    ex = exchange(b"ok", stream=False)
    ex.request_body = b"\xff\xfenot json"
    _, req, _ = parse_exchange(ex)
    assert req.error == "request body is not JSON"


def test_sse_decoder_fields_comments_and_final_event_without_blank_line() -> None:
    dec = SSEDecoder()
    events = dec.feed(b": OPENROUTER PROCESSING\r\n\r\nevent: ping\ndata:{}\n\nid: 7\ndata: a\ndata: b\n\n")
    assert [(e.event, e.data, e.id) for e in events] == [("ping", "{}", None), ("message", "a\nb", "7")]
    assert dec.feed(b"data: tail") == []
    assert [e.data for e in dec.close()] == ["tail"]


def test_multibyte_utf8_split_across_chunks() -> None:
    raw = 'data: {"x": "héllo ✓"}\n\n'.encode()
    events = list(decode_events([(1, raw[:12]), (2, raw[12:13]), (3, raw[13:])]))
    assert json.loads(events[0].data) == {"x": "héllo ✓"}


def test_select_by_path() -> None:
    assert select("/v1/chat/completions").api == "openai.chat"
    assert select("/api/v1/chat/completions").api == "openai.chat"
    assert select("/v1/unknown").api == "unknown"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(sse_bytes(PARALLEL)) - 1), max_size=12))
def test_any_byte_split_gives_the_same_result(cuts: list[int]) -> None:
    body = sse_bytes(PARALLEL)
    points = sorted(set(cuts))
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    ex = exchange(body)
    ex.chunks = [(2_000 + i, p) for i, p in enumerate(pieces)]
    res = parse_exchange(ex)[2]
    assert res.text == "Let me look." and len(res.tool_calls) == 2 and res.usage is not None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000), st.booleans(), st.integers(min_value=100, max_value=599))
def test_garbage_never_raises(body: bytes, stream: bool, status: int) -> None:
    ex = exchange(body, stream=stream, status=status, split=17)
    ex.request_body = body
    parse_exchange(ex)


# --- the decoder against a one-pass reading of the WHATWG rules -----------------------------------

def reference_events(stream: bytes) -> list[tuple[str, str, str | None]]:
    """Whole stream at once: normalise line ends, then apply the field rules line by line; a final
    event without its blank line still counts (what `close` does at the end of a capture)."""
    text = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
    out: list[tuple[str, str, str | None]] = []
    data: list[str] = []
    event, last_id = "", None
    for line in [*text.split("\n"), ""]:
        if line == "":
            if data or event:
                out.append((event or "message", "\n".join(data), last_id))
            data, event = [], ""
        elif not line.startswith(":"):
            name, sep, value = line.partition(":")
            value = value[1:] if sep and value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                last_id = value
    return out


SSE_LINES = st.sampled_from([
    "data: {\"a\": 1}", "data:{}", "data: x", "data:", "data", "data:  two spaces", "event: ping", "event:",
    "id: 7", "id:", ": comment", ":", "retry: 10", "unknown: field", "", "", "", "databank: not data",
    "data: é✓",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(SSE_LINES, max_size=25), st.sampled_from(["\n", "\r\n", "\r"]),
       st.lists(st.integers(min_value=1, max_value=400), max_size=10), st.booleans())
def test_decoder_matches_the_reference_for_any_stream_and_split(
        lines: list[str], eol: str, cuts: list[int], trailing_eol: bool) -> None:
    stream = eol.join(lines).encode() + (eol.encode() if trailing_eol else b"")
    points = sorted({c for c in cuts if c < len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = [(e.event, e.data, e.id) for e in decode_events([(i, p) for i, p in enumerate(pieces)])]
    assert got == reference_events(stream)
