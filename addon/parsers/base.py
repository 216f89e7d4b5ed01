"""The one small interface every provider wire format implements.

A parser is a stateless object with four pure functions. Everything common (decompression, JSON
decoding, SSE framing, HTTP error handling, unknown formats) lives in `addon.parsers.parse_exchange`,
so a new wire format is one module that turns JSON into the normalized records of `addon.model`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from addon import fastjson
from addon.model import LLMRequest, LLMResponse, ProviderError
from addon.sse import SSEEvent


class WireFormat:
    api: ClassVar[str] = "unknown"  # neatlogs.llm.api
    provider: ClassVar[str] = "unknown"  # gen_ai.provider.name default (the route may refine it)

    def matches(self, path: str) -> bool:
        """True when this format serves `path` (the path after the route prefix, no query)."""
        return False

    def parse_request(self, body: Any, path: str) -> LLMRequest:
        """`body` is the decoded JSON request. Must not raise on odd shapes: skip what it can't read."""
        return LLMRequest(api=self.api)

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        """Reassemble a streamed response. Set `truncated` when the terminal event never came,
        `first_token_ns` from the first event carrying text, reasoning or a tool call."""
        return LLMResponse()

    def parse_body(self, body: Any) -> LLMResponse:
        """A non-streamed success response (decoded JSON)."""
        return LLMResponse()

    def parse_error(self, status: int, body: Any) -> ProviderError:
        """An HTTP error response; `body` is decoded JSON, or the text when it was not JSON."""
        return error_from_body(status, body)


def as_list(value: Any) -> list[Any]:
    """Request and response fields that should be lists, tolerating anything else as empty."""
    return value if isinstance(value, list) else []


def new_request(api: str, body: Any, params: dict[str, str]) -> LLMRequest:
    """The prologue JSON request formats share: model, stream flag, the sampling parameters in `params`
    (source key → our name). Sets `error` when the body is not an object; callers return early then."""
    req = LLMRequest(api=api)
    if not isinstance(body, dict):
        req.error = "request body is not a JSON object"
        return req
    req.model = body.get("model") if isinstance(body.get("model"), str) else None
    req.stream = body.get("stream") is True
    req.params = {dst: body[src] for src, dst in params.items() if src in body}
    if "stream" in body:
        req.params["stream"] = req.stream
    for tool in as_list(body.get("tools")):
        name = tool.get("name") if isinstance(tool, dict) else None
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict):  # Chat Completions nests the name under `function`
            name = fn.get("name")
        if isinstance(name, str):
            req.tools.append(name)
    return req


def error_from_body(status: int, body: Any) -> ProviderError:
    """Most providers answer `{"error": {"type"|"code"|"status", "message"}}`; fall back to the text."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        etype = err.get("type") or err.get("code") or err.get("status") or f"http_{status}"
        return ProviderError(str(etype), str(err.get("message") or json.dumps(err)[:2000]))
    if isinstance(err, str):
        return ProviderError(f"http_{status}", err)
    text = body if isinstance(body, str) else json.dumps(body)
    return ProviderError(f"http_{status}", text[:2000])


def as_text(content: Any) -> str:
    """Flatten the content shapes formats use (string, list of parts with `text`) into text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type") in ("image_url", "image", "input_image"):
                    out.append("[image]")
        return "\n".join(out)
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    return json.dumps(content)


def to_int(value: Any) -> int:
    """Usage numbers as ints; absurd or odd values become 0 rather than breaking a span."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value < 10**12 else 0
    if isinstance(value, float) and value == value:
        return int(value) if 0 <= value < 1e12 else 0
    return 0


def loads(data: str) -> Any:
    """json.loads that answers None instead of raising: garbage in a stream is skipped, not fatal."""
    try:
        return fastjson.loads(data)
    except (ValueError, RecursionError):
        return None
