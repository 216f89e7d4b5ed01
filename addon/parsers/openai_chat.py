"""OpenAI Chat Completions (`/v1/chat/completions`), what `@ai-sdk/openai-compatible` providers speak."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from addon.model import LLMRequest, LLMResponse, Message, ProviderError, ToolCall, Usage
from addon.parsers.base import WireFormat, as_list, as_text, loads, new_request, to_int
from addon.sse import SSEEvent

_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
           "max_completion_tokens": "max_tokens"}


class OpenAIChat(WireFormat):
    api = "openai.chat"
    provider = "openai"

    def matches(self, path: str) -> bool:
        return path.endswith("/chat/completions")

    def parse_request(self, body: Any, path: str) -> LLMRequest:
        req = new_request(self.api, body, _PARAMS)
        if req.error:
            return req
        for msg in as_list(body.get("messages")):
            if not isinstance(msg, dict):
                continue
            role = str(msg.get("role") or "user")
            if role in ("system", "developer"):
                req.system.append(as_text(msg.get("content")))
                continue
            m = Message(role=role, content=as_text(msg.get("content")))
            if role == "tool":
                m.tool_call_id = msg.get("tool_call_id")
                m.name = msg.get("name")
            for tc in as_list(msg.get("tool_calls")):
                if isinstance(tc, dict):
                    fn = tc.get("function") or {}
                    m.tool_calls.append(ToolCall(str(tc.get("id") or ""), str(fn.get("name") or ""),
                                                 _args(fn.get("arguments"))))
            req.messages.append(m)
        return req

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        res = LLMResponse(truncated=True)
        text: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, ToolCall] = {}
        for ev in events:
            if ev.data == "[DONE]":
                res.truncated = False
                break
            chunk = loads(ev.data)
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                err = chunk["error"]
                res.error = ProviderError(str(err.get("type") or err.get("code") or "stream_error"),
                                          str(err.get("message") or ""))
                res.truncated = False
                continue
            apply_chunk_meta(res, chunk)
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    delta = {}
                content = delta.get("content")
                if isinstance(content, str) and content:
                    text.append(content)
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                rc = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(rc, str) and rc:
                    reasoning.append(rc)
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                for tc in delta.get("tool_calls") or []:
                    if not isinstance(tc, dict):
                        continue
                    res.first_token_ns = res.first_token_ns or ev.time_ns
                    idx = tc.get("index", len(calls))
                    call = calls.get(idx)
                    fn = tc.get("function") or {}
                    if call is None:
                        call = calls[idx] = ToolCall(str(tc.get("id") or ""), str(fn.get("name") or ""))
                    else:
                        call.id = call.id or str(tc.get("id") or "")
                        call.name = call.name or str(fn.get("name") or "")
                    if isinstance(fn.get("arguments"), str):
                        call.arguments += fn["arguments"]
                if choice.get("finish_reason"):
                    res.finish_reason = str(choice["finish_reason"])
        res.text = "".join(text)
        res.reasoning = "".join(reasoning)
        res.tool_calls = [calls[k] for k in sorted(calls, key=_sort_key)]
        return res

    def parse_body(self, body: Any) -> LLMResponse:
        res = LLMResponse()
        if not isinstance(body, dict):
            return res
        apply_chunk_meta(res, body)
        for choice in as_list(body.get("choices"))[:1]:
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                continue
            res.text = as_text(msg.get("content"))
            rc = msg.get("reasoning_content") or msg.get("reasoning")
            res.reasoning = rc if isinstance(rc, str) else ""
            for tc in as_list(msg.get("tool_calls")):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict):
                    continue
                res.tool_calls.append(ToolCall(str(tc.get("id") or ""), str(fn.get("name") or ""),
                                               _args(fn.get("arguments"))))
            res.finish_reason = choice.get("finish_reason")
        return res


def apply_chunk_meta(res: LLMResponse, chunk: dict[str, Any]) -> None:
    """id / model / usage appear on every chunk (usage on the last one); keep the latest."""
    if isinstance(chunk.get("id"), str):
        res.response_id = chunk["id"]
    if isinstance(chunk.get("model"), str):
        res.model = chunk["model"]
    if isinstance(chunk.get("usage"), dict):
        res.usage = chat_usage(chunk["usage"])


def chat_usage(u: dict[str, Any]) -> Usage:
    """`prompt_tokens` includes cached tokens; `completion_tokens` includes reasoning tokens."""
    pd = u.get("prompt_tokens_details") or {}
    cd = u.get("completion_tokens_details") or {}
    cost = u.get("cost")
    return Usage(
        input_tokens=to_int(u.get("prompt_tokens")),
        output_tokens=to_int(u.get("completion_tokens")),
        cache_read_tokens=to_int(pd.get("cached_tokens")),
        cache_write_tokens=to_int(pd.get("cache_write_tokens")),
        reasoning_tokens=to_int(cd.get("reasoning_tokens")),
        provider_cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )



def _args(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def _sort_key(k: Any) -> tuple[int, str]:
    return (k, "") if isinstance(k, int) else (1 << 30, str(k))
