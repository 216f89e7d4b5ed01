"""The fake upstreams (tests/fakes/fake_providers.py): framing, recording, and what our parsers read."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from addon.model import Exchange, Usage
from addon.parsers import parse_exchange
from tests.fakes.fake_providers import FakeProvider, Step, StepUsage, text, tool, tools

REQUESTS = {
    "openai": ("/v1/responses", {"model": "gpt-5", "stream": True, "tools": [{"type": "function", "name": "read"}],
                                 "input": [{"role": "user", "content": "hi"}]}),
    "anthropic": ("/v1/messages", {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 100,
                                   "tools": [{"name": "read"}], "messages": [{"role": "user", "content": "hi"}]}),
    "google": ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
               {"tools": [{"functionDeclarations": [{"name": "read"}]}],
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
}


def call(fake: FakeProvider, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict, list[bytes]]:
    """POST and read the raw HTTP/1.1 chunks (http.client undoes chunking; we want the events)."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    chunks = []
    while data := resp.read1(65536):
        chunks.append(data)
    conn.close()
    return resp.status, hdrs, chunks


def to_exchange(path: str, body: dict, status: int, hdrs: dict, chunks: list[bytes]) -> Exchange:
    p, _, q = path.partition("?")
    return Exchange(flow_id="x", route="", upstream="", method="POST", path=p, query=q, request_headers={},
                    request_body=json.dumps(body).encode(), request_body_truncated=False, start_ns=0,
                    status=status, response_headers=hdrs, chunks=[(i + 1, c) for i, c in enumerate(chunks)])


@pytest.mark.parametrize("kind", ["openai", "anthropic", "google"])
def test_streams_parse_to_the_scripted_step(kind):
    # Only Anthropic reports cache writes; it reports no separate thinking-token count.
    usage = StepUsage(input_tokens=1500, output_tokens=60, cache_read_tokens=1100,
                      cache_write_tokens=200 if kind == "anthropic" else 0,
                      reasoning_tokens=0 if kind == "anthropic" else 20)
    steps = [tools(("read", {"filePath": "a"}), ("read", {"filePath": "b"}), usage=usage, reasoning="think"),
             text("All done.", usage=StepUsage(10, 2))]
    path, body = REQUESTS[kind]
    with FakeProvider(kind, steps) as fake:
        status, hdrs, chunks = call(fake, path, body, {"x-api-key": "k"})
        assert status == 200 and hdrs["content-type"] == "text/event-stream"
        assert hdrs["transfer-encoding"] == "chunked"
        _f, _req, res = parse_exchange(to_exchange(path, body, status, hdrs, chunks))
        assert [tc.name for tc in res.tool_calls] == ["read", "read"]
        assert [json.loads(tc.arguments) for tc in res.tool_calls] == [{"filePath": "a"}, {"filePath": "b"}]
        if kind != "google":
            assert [tc.id for tc in res.tool_calls] == fake.main_requests()[0].reply_call_ids
        assert res.reasoning == "think" and res.text == ""
        assert res.usage == Usage(1500, 60, 1100, usage.cache_write_tokens, usage.reasoning_tokens)
        assert res.truncated is False and res.error is None

        status, hdrs, chunks = call(fake, path, body)
        _f, _r, res = parse_exchange(to_exchange(path, body, status, hdrs, chunks))
        assert res.text == "All done." and res.tool_calls == [] and res.usage == Usage(10, 2)

        rec = fake.main_requests()
        assert [r.step_index for r in rec] == [0, 1]
        assert rec[0].headers["x-api-key"] == "k" and rec[0].body == body
        if kind == "google":
            assert rec[0].query == {"alt": ["sse"]} and rec[0].stream is True


def test_title_requests_do_not_consume_steps_and_non_streamed_bodies():
    with FakeProvider("anthropic", [text("main answer")], title="My title") as fake:
        body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "t"}]}
        status, hdrs, chunks = call(fake, "/v1/messages", body)
        assert status == 200 and hdrs["content-type"] == "application/json"
        _f, _r, res = parse_exchange(to_exchange("/v1/messages", body, status, hdrs, chunks))
        assert res.text == "My title"
        assert fake.requests[0].kind == "title" and fake.main_requests() == []


def test_errors_cuts_and_unknown_paths():
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    steps = [Step(status=529, error_body=err), Step(text="abcdef", cut_after=3),
             Step(text="x", stream_error={"error": {"type": "api_error", "message": "boom"}})]
    path, body = REQUESTS["anthropic"]
    with FakeProvider("anthropic", steps) as fake:
        status, hdrs, chunks = call(fake, path, body)
        _f, _r, res = parse_exchange(to_exchange(path, body, status, hdrs, chunks))
        assert status == 529 and res.error.type == "overloaded_error"
        with pytest.raises(http.client.IncompleteRead):
            call(fake, path, body)  # the stream is cut: no terminating chunk
        status, hdrs, chunks = call(fake, path, body)
        _f, _r, res = parse_exchange(to_exchange(path, body, status, hdrs, chunks))
        assert res.error.type == "api_error" and res.text == "x"
        status, _h, _c = call(fake, "/v1/models", {})
        assert status == 404 and fake.requests[-1].kind == "other"


def test_concurrent_requests():
    with FakeProvider("openai", [tool("read", {"n": i}) for i in range(8)]) as fake:
        path, body = REQUESTS["openai"]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: call(fake, path, body), range(8)))
        assert all(r[0] == 200 for r in results)
        assert sorted(r.step_index for r in fake.wait_for_requests(8)) == list(range(8))
