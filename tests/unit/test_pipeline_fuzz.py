"""Property test: random wire exchanges and plugin events through the capture pipeline.

Exchanges (any path, method, status, headers, encodings, body bytes, chunking, errors) and plugin
event batches (valid or not) are fed in-process, in random interleavings, to the real Correlator with
a list-collecting emit, as the pipeline thread does. Nothing may raise, every emitted span is a valid
exportable span, and spans never mix sessions.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon import otlp
from addon.correlate import Correlator
from addon.events import BadEvents, parse_batch
from addon.export import sanitize
from addon.model import Exchange
from addon.pipeline import Pipeline
from addon.spans import Content, Span, trace_id_for

SESSIONS = ["ses_a", "ses_b", "ses_c", "ses_d"]
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1beta/models/gemini-x:streamGenerateContent",
         "/v1beta/models/g:generateContent", "/api/v1/chat/completions", "/", "/v1/embeddings", "/%ff/../x"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=20)


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {"role": draw(st.sampled_from(["user", "assistant", "tool", "system", "developer", "x"]))}
    m["content"] = draw(st.one_of(st.text(max_size=40), st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "tool_result"]), "text": st.text(max_size=20)}), max_size=3),
        json_value))
    if draw(st.booleans()):
        m["tool_calls"] = [{"id": draw(st.text(min_size=1, max_size=8)), "type": "function",
                            "function": {"name": draw(st.text(max_size=10)), "arguments": draw(st.text(max_size=30))}}]
    if m["role"] == "tool":
        m["tool_call_id"] = draw(st.text(max_size=8))
    return m


@st.composite
def request_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["chat", "json", "bytes", "empty"]))
    if kind == "chat":
        body: dict[str, Any] = {"model": draw(st.one_of(st.text(max_size=15), json_value)),
                                "messages": draw(st.lists(message(), max_size=5)),
                                "stream": draw(st.booleans())}
        if draw(st.booleans()):
            body["tools"] = [{"type": "function", "function": {"name": draw(st.text(max_size=10))}}]
        for key in ("max_tokens", "temperature", "top_p"):
            if draw(st.booleans()):
                body[key] = draw(json_leaf)
        return json.dumps(body, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_value), allow_nan=True).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return b""


def sse_chunk(delta: dict[str, Any], usage: Any = None, finish: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


@st.composite
def response_chunks(draw: st.DrawFn) -> tuple[list[bytes], str, str]:
    """(raw chunks as received, content-type, content-encoding)."""
    kind = draw(st.sampled_from(["sse", "json", "garbage"]))
    if kind == "sse":
        events = [sse_chunk({"content": draw(st.text(max_size=10))}) for _ in range(draw(st.integers(0, 4)))]
        if draw(st.booleans()):
            events.append(sse_chunk({"tool_calls": [{"index": draw(st.integers(-2, 3)), "id": draw(st.text(max_size=5)),
                                                     "function": {"name": draw(st.text(max_size=5)),
                                                                  "arguments": draw(st.text(max_size=10))}}]}))
        events.append(sse_chunk({}, usage=draw(json_value), finish=draw(st.one_of(st.none(), st.text(max_size=6)))))
        text = "".join(f"data: {json.dumps(e, allow_nan=True)}\n\n" for e in events)
        if draw(st.booleans()):
            text += draw(st.text(max_size=40))  # garbage lines
        if draw(st.booleans()):
            text += "data: [DONE]\n\n"
        data, ctype = text.encode(), "text/event-stream"
    elif kind == "json":
        data, ctype = json.dumps(draw(json_value), allow_nan=True).encode(), "application/json"
    else:
        data, ctype = draw(st.binary(max_size=200)), draw(st.sampled_from(["text/event-stream", "application/json",
                                                                           "text/html", ""]))
    encoding = draw(st.sampled_from(["", "", "gzip", "br", "zstd", "bogus"]))
    if encoding == "gzip" and draw(st.booleans()):
        data = gzip.compress(data)
    cut = sorted(draw(st.lists(st.integers(0, max(len(data), 1)), max_size=4)))
    chunks, prev = [], 0
    for c in [*cut, len(data)]:
        if c > prev:
            chunks.append(data[prev:c])
            prev = c
    return chunks, ctype, encoding


@st.composite
def exchange(draw: st.DrawFn) -> Exchange:
    chunks, ctype, encoding = draw(response_chunks())
    start = time.time_ns() - draw(st.integers(0, 10**10))
    headers = {"content-type": ctype}
    if encoding:
        headers["content-encoding"] = encoding
    status = draw(st.one_of(st.none(), st.sampled_from([200, 200, 200, 400, 401, 429, 500, 503]),
                            st.integers(100, 599)))
    ex = Exchange(
        flow_id=draw(st.text(max_size=5)), route=draw(st.sampled_from(["fake", "openai", "anthropic", "google"])),
        upstream="http://127.0.0.1:1", method=draw(st.sampled_from(["POST", "GET", "PUT"])),
        path=draw(st.sampled_from(PATHS)), query=draw(st.text(max_size=10)),
        request_headers={"content-type": "application/json"}, request_body=draw(request_body()),
        request_body_truncated=draw(st.booleans()), start_ns=start,
        status=status, response_headers=headers if status is not None else {},
        chunks=[(start + i, c) for i, c in enumerate(chunks)] if status is not None else [],
        response_truncated=draw(st.booleans()), end_ns=start + draw(st.integers(0, 10**9)),
        error=draw(st.one_of(st.none(), st.sampled_from(["Client disconnected.", "server closed connection"]))),
        session_id=draw(st.one_of(st.sampled_from(SESSIONS), st.none())),
        agent=draw(st.one_of(st.none(), st.sampled_from(["build", "title", "plan"]))),
    )
    ex.cancelled = bool(ex.error and "client" in ex.error.lower())
    return ex


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    t = draw(st.sampled_from(["chat.message", "chat.params", "tool.start", "tool.end", "message.completed",
                              "session.info", "session.idle", "session.deleted", "bogus"]))
    e: dict[str, Any] = {"type": t, "session_id": draw(st.sampled_from(SESSIONS)),
                         "ts": draw(st.one_of(st.floats(0, 2e12), st.integers(0, 2 * 10**12)))}
    if t in ("tool.start", "tool.end"):
        e.update(call_id=draw(st.text(min_size=1, max_size=6)), tool=draw(st.text(max_size=8)),
                 args=draw(json_value))
    if t == "tool.end":
        e.update(output=draw(json_value), metadata=draw(json_value), error=draw(st.one_of(st.none(), st.text())),
                 title=draw(st.one_of(st.none(), st.text(max_size=10))),
                 start_ts=draw(st.one_of(st.none(), st.floats(0, 2e12))), end_ts=draw(st.one_of(st.none(),
                                                                                                  st.floats(0, 2e12))))
    if t == "message.completed":
        e.update(message_id=draw(st.text(max_size=6)), cost=draw(st.one_of(st.none(), st.floats(0, 100))),
                 tokens={"input": draw(st.integers(0, 10**6)), "output": draw(st.integers(0, 10**6)),
                         "cache": {"read": draw(st.integers(0, 10**6))}})
    if t in ("chat.message", "chat.params"):
        e.update(agent=draw(st.sampled_from(["build", "title", None])), text=draw(st.text(max_size=20)),
                 provider_id=draw(st.one_of(st.none(), st.text(max_size=5))))
    if t == "session.info":
        e.update(title=draw(st.one_of(st.none(), st.text(max_size=20))))
    if draw(st.integers(0, 9)) == 0:  # a broken field now and then
        e[draw(st.sampled_from(list(e)))] = draw(json_value)
    return e


step = st.one_of(exchange().map(lambda x: ("exchange", x)),
                 st.lists(event(), min_size=1, max_size=4).map(lambda x: ("events", x)),
                 st.integers(0, 20).map(lambda x: ("tick", x)))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[Span]] = []

    def __call__(self, spans: list[Span], key: str | None) -> None:
        self.calls.append(list(spans))


def check_span(s: Span) -> None:
    sid = s.attributes["neatlogs.conversation.id"]
    assert s.session_id == sid
    assert s.trace_id == trace_id_for(sid)  # no subagents here: every session is its own trace
    assert s.end_ns >= s.start_ns
    otlp.encode(sanitize([s.model_copy(deep=True)]), "opencode")  # always exportable once sanitized


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(step, max_size=12))
def test_random_traffic_never_raises_and_never_mixes_sessions(steps: list[tuple[str, Any]]) -> None:
    rec = Recorder()
    c = Correlator(rec, Content(2048, None), idle_timeout=0.5)
    llm_ids: set[str] = set()
    for kind, payload in steps:
        before = len(rec.calls)
        if kind == "exchange":
            c.on_exchange(payload)
            emitted = [s for call in rec.calls[before:] for s in call]
            if payload.session_id:  # only that session's spans come out of its exchange
                assert {s.session_id for s in emitted} <= {payload.session_id}
                new = {s.span_id for s in emitted if s.name.startswith("opencode.llm.")} - llm_ids
                assert len(new) == 1  # its own call (earlier calls may be re-shipped with updates)
            llm_ids |= {s.span_id for s in emitted if s.name.startswith("opencode.llm.")}
        elif kind == "events":
            try:
                batch = parse_batch(json.dumps({"events": payload}, allow_nan=True).encode())
            except BadEvents:
                continue  # the endpoint answers 400; nothing reaches the correlator
            c.on_events(list(batch.events), None)
            emitted = [s for call in rec.calls[before:] for s in call]
            assert {s.session_id for s in emitted} <= {e.session_id for e in batch.events}
        else:
            c.tick(time.time_ns() + payload * 10**9)
    c.tick(time.time_ns() + 10**12)
    c.flush()
    for call in rec.calls:
        assert len({s.session_id for s in call}) == 1  # one emit, one session
        for s in call:
            check_span(s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(exchange(), max_size=6))
def test_pipeline_thread_survives_anything(exchanges: list[Exchange]) -> None:
    """Through the real Pipeline thread: a failure is counted, never raised, and the thread keeps going."""
    rec = Recorder()
    stats: dict[str, int] = {}
    c = Correlator(rec, Content(2048, None), idle_timeout=0.5)
    broken = Exchange(flow_id="x", route="fake", upstream="u", method="POST", path="/v1/chat/completions", query="",
                      request_headers={}, request_body=b"{}", request_body_truncated=False, start_ns=1)
    broken.chunks = None  # type: ignore[assignment]  # a capture bug: must be contained
    p = Pipeline(c, stats)
    p.start()
    for ex in [*exchanges, broken]:
        p.submit_exchange(ex)
    p.submit_events([], None)
    p.stop(10)
    assert not p._thread.is_alive()
    n_llm = sum(1 for call in rec.calls for s in call if s.name.startswith("opencode.llm."))
    assert n_llm + stats.get("capture_errors", 0) >= len(exchanges) + 1
