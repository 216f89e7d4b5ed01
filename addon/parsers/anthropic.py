"""Anthropic Messages (`/v1/messages`), what opencode's built-in `anthropic` provider speaks.

Usage trap: Anthropic's `input_tokens` EXCLUDES cache reads and cache writes; the normalised
`Usage.input_tokens` adds both back. In a stream, `message_start` carries the input side and
`message_delta` the cumulative output (and may repeat the input numbers): the latest non-null wins.
Thinking blocks go to `LLMResponse.reasoning`, never into the answer text. `finish_reason` is
Anthropic's own `stop_reason` (`end_turn`, `tool_use`, `max_tokens`, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from addon.model import LLMRequest, LLMResponse, Message, ProviderError, ToolCall, Usage
from addon.parsers.base import WireFormat, as_list, as_text, loads, new_request, to_int
from addon.sse import SSEEvent

_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens"}
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class AnthropicMessages(WireFormat):
    api = "anthropic.messages"
    provider = "anthropic"

    def matches(self, path: str) -> bool:
        return path.endswith("/messages")

    def parse_request(self, body: Any, path: str) -> LLMRequest:
        req = new_request(self.api, body, _PARAMS)
        if req.error:
            return req
        system = body.get("system")
        if isinstance(system, str):
            if system:
                req.system.append(system)
        else:
            for block in as_list(system):
                text = block.get("text") if isinstance(block, dict) else block
                if isinstance(text, str):
                    req.system.append(text)
        for msg in as_list(body.get("messages")):
            if isinstance(msg, dict):
                _message(req.messages, msg)
        return req

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        res = LLMResponse(truncated=True)
        blocks: dict[Any, list[Any]] = {}  # index -> [type, parts, ToolCall | None, start input]
        usage: dict[str, int] = {}
        for ev in events:
            data = loads(ev.data)
            if not isinstance(data, dict):
                continue
            kind = data.get("type") or ev.event
            if kind == "content_block_delta":
                delta = data.get("delta")
                block = blocks.get(_key(data.get("index")))
                if not isinstance(delta, dict):
                    continue
                dtype = delta.get("type")
                piece = (delta.get("text") if dtype == "text_delta" else
                         delta.get("thinking") if dtype == "thinking_delta" else
                         delta.get("partial_json") if dtype == "input_json_delta" else None)
                if not isinstance(piece, str):
                    continue
                if block is None:  # a delta without its block start: infer the block from the delta
                    btype = {"text_delta": "text", "thinking_delta": "thinking"}.get(str(dtype), "tool_use")
                    block = blocks[_key(data.get("index"))] = [btype, [], None, None]
                    if btype == "tool_use":
                        block[2] = ToolCall("", "")
                block[1].append(piece)
                if piece:
                    res.first_token_ns = res.first_token_ns or ev.time_ns
            elif kind == "content_block_start":
                cb = data.get("content_block")
                if not isinstance(cb, dict):
                    continue
                btype = str(cb.get("type") or "")
                block = [btype, [], None, None]
                if btype == "text" and isinstance(cb.get("text"), str):
                    block[1].append(cb["text"])
                elif btype == "thinking" and isinstance(cb.get("thinking"), str):
                    block[1].append(cb["thinking"])
                elif btype == "tool_use":
                    block[2] = ToolCall(str(cb.get("id") or ""), str(cb.get("name") or ""))
                    block[3] = cb.get("input")
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                if block[1] and block[1][0]:
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                blocks[_key(data.get("index"))] = block
            elif kind == "message_start":
                msg = data.get("message")
                if isinstance(msg, dict):
                    if isinstance(msg.get("id"), str):
                        res.response_id = msg["id"]
                    if isinstance(msg.get("model"), str):
                        res.model = msg["model"]
                    _merge_usage(usage, msg.get("usage"))
            elif kind == "message_delta":
                delta = data.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    res.finish_reason = delta["stop_reason"]
                _merge_usage(usage, data.get("usage"))
            elif kind == "message_stop":
                res.truncated = False
            elif kind == "error":
                res.error = _error(data)
                res.truncated = False
        text: list[str] = []
        reasoning: list[str] = []
        for btype, parts, call, start_input in (blocks[k] for k in sorted(blocks, key=_sort_key)):
            if call is not None:
                call.arguments = "".join(parts) or _input_json(start_input)
                res.tool_calls.append(call)
            elif btype == "text":
                text.append("".join(parts))
            elif btype == "thinking":
                reasoning.append("".join(parts))
        res.text = "".join(text)
        res.reasoning = "\n\n".join(r for r in reasoning if r)
        if usage:
            res.usage = anthropic_usage(usage)
        return res

    def parse_body(self, body: Any) -> LLMResponse:
        res = LLMResponse()
        if not isinstance(body, dict):
            return res
        if body.get("type") == "error":
            res.error = _error(body)
            return res
        res.response_id = body.get("id") if isinstance(body.get("id"), str) else None
        res.model = body.get("model") if isinstance(body.get("model"), str) else None
        res.finish_reason = body.get("stop_reason") if isinstance(body.get("stop_reason"), str) else None
        text: list[str] = []
        reasoning: list[str] = []
        for block in as_list(body.get("content")):
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text" and isinstance(block.get("text"), str):
                text.append(block["text"])
            elif btype == "thinking" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
            elif btype == "tool_use":
                res.tool_calls.append(ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                                               _input_json(block.get("input"))))
        res.text = "".join(text)
        res.reasoning = "\n\n".join(reasoning)
        if isinstance(body.get("usage"), dict):
            usage: dict[str, int] = {}
            _merge_usage(usage, body["usage"])
            res.usage = anthropic_usage(usage)
        return res


def anthropic_usage(u: dict[str, int]) -> Usage:
    """Normalise: input = uncached input + cache reads + cache writes (Anthropic reports them apart)."""
    read = u.get("cache_read_input_tokens", 0)
    write = u.get("cache_creation_input_tokens", 0)
    return Usage(
        input_tokens=u.get("input_tokens", 0) + read + write,
        output_tokens=u.get("output_tokens", 0),
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def _merge_usage(acc: dict[str, int], u: Any) -> None:
    if not isinstance(u, dict):
        return
    for k in _USAGE_KEYS:
        if u.get(k) is not None:
            acc[k] = to_int(u[k])


def _message(out: list[Message], msg: dict[str, Any]) -> None:
    role = str(msg.get("role") or "user")
    content = msg.get("content")
    if isinstance(content, str):
        out.append(Message(role=role, content=content))
        return
    m = Message(role=role)
    rest: list[Any] = []
    results: list[Message] = []
    for block in as_list(content):
        if not isinstance(block, dict):
            rest.append(block)
            continue
        btype = block.get("type")
        if btype == "tool_use":
            m.tool_calls.append(ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                                         _input_json(block.get("input"))))
        elif btype == "tool_result":
            rc = block.get("content")
            results.append(Message(role="tool", content=rc if isinstance(rc, str) else as_text(rc),
                                   tool_call_id=_str(block.get("tool_use_id")),
                                   is_error=block.get("is_error") is True))
        elif btype not in ("thinking", "redacted_thinking"):
            rest.append(block)
    m.content = as_text(rest)
    out.extend(results)  # tool results come first in a user turn (the API requires it)
    if rest or m.tool_calls or not results:
        out.append(m)


def _error(data: dict[str, Any]) -> ProviderError:
    err = data.get("error")
    if isinstance(err, dict):
        return ProviderError(str(err.get("type") or "stream_error"), str(err.get("message") or ""))
    return ProviderError("stream_error", str(err or "error event without details"))


def _input_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "{}" if value is None else json.dumps(value)


def _key(index: Any) -> Any:
    return index if isinstance(index, int | str) and not isinstance(index, bool) else -1


def _sort_key(k: Any) -> tuple[int, str]:
    return (k, "") if isinstance(k, int) else (1 << 30, str(k))



def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
