"""OpenAI Responses API (`/v1/responses`), what opencode's built-in `openai` provider speaks.

Request: `instructions` + `input` items (messages, `function_call`, `function_call_output`,
`reasoning`). Stream: typed events (`response.output_text.delta`, ...) ending with
`response.completed` / `response.incomplete` / `response.failed`. Function-call argument deltas are
keyed by the output *item* id; tool calls are reported with their `call_id` (what the next request's
`function_call_output` refers to).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from addon.model import LLMRequest, LLMResponse, Message, ProviderError, ToolCall, Usage
from addon.parsers.base import WireFormat, as_list, as_text, loads, new_request, to_int
from addon.sse import SSEEvent

_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_output_tokens": "max_tokens"}
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class OpenAIResponses(WireFormat):
    api = "openai.responses"
    provider = "openai"

    def matches(self, path: str) -> bool:
        return path.endswith("/responses")

    def parse_request(self, body: Any, path: str) -> LLMRequest:
        req = new_request(self.api, body, _PARAMS)
        if req.error:
            return req
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            req.system.append(instructions)
        items = body.get("input")
        if isinstance(items, str):
            req.messages.append(Message(role="user", content=items))
            return req
        assistant: Message | None = None  # the assistant message function calls attach to
        for item in as_list(items):
            if not isinstance(item, dict):
                continue
            kind = item.get("type") or "message"
            if kind == "message":
                role = str(item.get("role") or "user")
                content = as_text(item.get("content"))
                if role in ("system", "developer"):
                    req.system.append(content)
                    assistant = None
                    continue
                m = Message(role=role, content=content)
                req.messages.append(m)
                assistant = m if role == "assistant" else None
            elif kind == "function_call":
                call = ToolCall(str(item.get("call_id") or item.get("id") or ""), str(item.get("name") or ""),
                                _args(item.get("arguments")))
                if assistant is None:
                    assistant = Message(role="assistant")
                    req.messages.append(assistant)
                assistant.tool_calls.append(call)
            elif kind == "function_call_output":
                out = item.get("output")
                content = out if isinstance(out, str) else as_text(out)
                call_id = _str(item.get("call_id"))
                req.messages.append(Message(role="tool", content=content, tool_call_id=call_id))
                assistant = None
            # `reasoning`, `item_reference` and built-in tool items carry no conversation text.
        return req

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        res = LLMResponse(truncated=True)
        text: list[str] = []
        reasoning: list[str] = []
        reasoning_key: Any = None
        calls: dict[str, ToolCall] = {}  # by output item id, in order of appearance
        for ev in events:
            data = loads(ev.data)
            if not isinstance(data, dict):
                continue
            kind = data.get("type") or ev.event
            if kind == "response.output_text.delta":
                delta = data.get("delta")
                if isinstance(delta, str) and delta:
                    text.append(delta)
                    res.first_token_ns = res.first_token_ns or ev.time_ns
            elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                delta = data.get("delta")
                if isinstance(delta, str) and delta:
                    key = (data.get("item_id"), data.get("summary_index"), data.get("content_index"))
                    if reasoning and key != reasoning_key:
                        reasoning.append("\n\n")
                    reasoning_key = key
                    reasoning.append(delta)
                    res.first_token_ns = res.first_token_ns or ev.time_ns
            elif kind in ("response.output_item.added", "response.output_item.done"):
                item = data.get("item")
                if isinstance(item, dict) and item.get("type") == "function_call":
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                    _call_item(calls, item, final=kind.endswith(".done"))
            elif kind == "response.function_call_arguments.delta":
                delta = data.get("delta")
                if isinstance(delta, str):
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                    _call(calls, data.get("item_id")).arguments += delta
            elif kind == "response.function_call_arguments.done":
                if isinstance(data.get("arguments"), str):
                    _call(calls, data.get("item_id")).arguments = data["arguments"]
            elif kind in ("response.created", "response.in_progress") or kind in _TERMINAL:
                resp = data.get("response")
                if isinstance(resp, dict):
                    _apply_response_meta(res, resp)
                if kind in _TERMINAL:
                    res.truncated = False
                    if kind == "response.failed" and res.error is None:
                        res.error = _failed(resp)
            elif kind == "error":
                res.error = _error_event(data)
                res.truncated = False
        res.text = "".join(text)
        res.reasoning = "".join(reasoning)
        res.tool_calls = list(calls.values())
        if res.finish_reason is None and not res.truncated and res.error is None:
            res.finish_reason = "tool_calls" if res.tool_calls else "stop"
        elif res.finish_reason == "stop" and res.tool_calls:
            res.finish_reason = "tool_calls"
        return res

    def parse_body(self, body: Any) -> LLMResponse:
        res = LLMResponse()
        if not isinstance(body, dict):
            return res
        _apply_response_meta(res, body)
        text: list[str] = []
        reasoning: list[str] = []
        for item in as_list(body.get("output")):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "message":
                for part in as_list(item.get("content")):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        text.append(part["text"])
                    elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
                        text.append(part["refusal"])
            elif kind == "function_call":
                res.tool_calls.append(ToolCall(str(item.get("call_id") or item.get("id") or ""),
                                               str(item.get("name") or ""), _args(item.get("arguments"))))
            elif kind == "reasoning":
                parts = as_list(item.get("summary")) or as_list(item.get("content"))
                reasoning.extend(p["text"] for p in parts
                                 if isinstance(p, dict) and isinstance(p.get("text"), str))
        res.text = "".join(text)
        res.reasoning = "\n\n".join(reasoning)
        if body.get("status") == "failed" or isinstance(body.get("error"), dict):
            res.error = _failed(body)
        elif res.finish_reason in (None, "stop"):
            res.finish_reason = "tool_calls" if res.tool_calls else "stop"
        return res


def _apply_response_meta(res: LLMResponse, resp: dict[str, Any]) -> None:
    if isinstance(resp.get("id"), str):
        res.response_id = resp["id"]
    if isinstance(resp.get("model"), str):
        res.model = resp["model"]
    if isinstance(resp.get("usage"), dict):
        res.usage = responses_usage(resp["usage"])
    status = resp.get("status")
    if status == "completed":
        res.finish_reason = "stop"
    elif status == "incomplete":
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        res.finish_reason = _INCOMPLETE.get(reason, reason) if isinstance(reason, str) else "incomplete"


def responses_usage(u: dict[str, Any]) -> Usage:
    """`input_tokens` includes cached tokens; `output_tokens` includes reasoning tokens."""
    idet = u.get("input_tokens_details")
    odet = u.get("output_tokens_details")
    return Usage(
        input_tokens=to_int(u.get("input_tokens")),
        output_tokens=to_int(u.get("output_tokens")),
        cache_read_tokens=to_int(idet.get("cached_tokens")) if isinstance(idet, dict) else 0,
        reasoning_tokens=to_int(odet.get("reasoning_tokens")) if isinstance(odet, dict) else 0,
    )


def _call(calls: dict[str, ToolCall], item_id: Any) -> ToolCall:
    key = str(item_id or "")
    call = calls.get(key)
    if call is None:  # arguments before the item was announced: keep them, the id comes later
        call = calls[key] = ToolCall("", "")
    return call


def _call_item(calls: dict[str, ToolCall], item: dict[str, Any], final: bool) -> None:
    call = _call(calls, item.get("id") or item.get("call_id"))
    call.id = str(item.get("call_id") or call.id or item.get("id") or "")
    call.name = str(item.get("name") or call.name)
    args = item.get("arguments")
    if isinstance(args, str) and (final or not call.arguments):
        call.arguments = args


def _failed(resp: Any) -> ProviderError:
    err = resp.get("error") if isinstance(resp, dict) else None
    if isinstance(err, dict):
        return ProviderError(str(err.get("code") or err.get("type") or "response_failed"),
                             str(err.get("message") or ""))
    return ProviderError("response_failed", "the response failed without an error object")


def _error_event(data: dict[str, Any]) -> ProviderError:
    inner = data.get("error")
    err: dict[str, Any] = inner if isinstance(inner, dict) else data
    return ProviderError(str(err.get("code") or err.get("type") or "stream_error"),
                         str(err.get("message") or ""))



def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _args(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)
