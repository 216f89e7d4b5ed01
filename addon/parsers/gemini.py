"""Google Gemini `generateContent` / `streamGenerateContent` (opencode's built-in `google` provider).

The model is only in the URL (`/v1beta/models/<model>:streamGenerateContent?alt=sse`); the driver
fills `LLMRequest.model` from the path. Each stream event is a whole `GenerateContentResponse`:
parts are appended in order, `usageMetadata` is a running snapshot (the last one wins), the terminal
event is the one carrying a `finishReason`. `candidatesTokenCount` EXCLUDES `thoughtsTokenCount`:
normalised output = candidates + thoughts, reasoning = thoughts. `finish_reason` is Gemini's own
(`STOP`, `MAX_TOKENS`, `SAFETY`, ...).

Tool-call ids. Gemini's `functionCall` / `functionResponse` parts carry no ids, so we synthesise
them, deterministically, with one rule used on both sides of the wire:

* a `functionCall` gets `gemini_call_<h>`, where `h` is a short hash of (name, canonical JSON of
  args, n) and n counts earlier calls with the same name and args *in the same model turn* (one
  response = one model turn). The same stream therefore always gives the same ids, and when the
  client echoes that model turn back in the next request (`contents[].role == "model"`), the echoed
  `functionCall` parts get the very same ids;
* a `functionResponse` gets the id of the call it answers: the first not-yet-answered call with the
  same name in the closest preceding model turn, in order (so the k-th result for `read` answers
  the k-th `read` call). A result with no such call gets `gemini_call_<hash of (name, None, k)>`.

Limitation: the same tool called with byte-identical arguments in two different turns of one
conversation gets the same id in both turns (the response alone says nothing that tells them apart).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from addon.model import LLMRequest, LLMResponse, Message, ProviderError, ToolCall, Usage
from addon.parsers.base import WireFormat, as_list, loads, to_int
from addon.sse import SSEEvent

_PARAMS = {"temperature": "temperature", "topP": "top_p", "maxOutputTokens": "max_tokens"}


class Gemini(WireFormat):
    api = "google.generate_content"
    provider = "gcp.gemini"

    def matches(self, path: str) -> bool:
        return path.endswith((":generateContent", ":streamGenerateContent"))

    def parse_request(self, body: Any, path: str) -> LLMRequest:
        req = LLMRequest(api=self.api)
        req.stream = path.endswith(":streamGenerateContent")
        req.params["stream"] = req.stream
        if not isinstance(body, dict):
            req.error = "request body is not a JSON object"
            return req
        if isinstance(body.get("model"), str):  # Vertex batch shapes; normally only in the path
            req.model = body["model"].removeprefix("models/")
        config = body.get("generationConfig") or body.get("generation_config")
        if isinstance(config, dict):
            req.params.update({dst: config[src] for src, dst in _PARAMS.items() if src in config})
        for tool in as_list(body.get("tools")):
            decls = (tool.get("functionDeclarations") or tool.get("function_declarations")
                     if isinstance(tool, dict) else None)
            for decl in as_list(decls):
                if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                    req.tools.append(decl["name"])
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, str):
            req.system.append(system)
        elif isinstance(system, dict):
            for part in as_list(system.get("parts")):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    req.system.append(part["text"])
        pending: dict[str, list[str]] = {}  # name -> ids of unanswered calls of the last model turn
        for content in as_list(body.get("contents")):
            if not isinstance(content, dict):
                continue
            role = content.get("role")
            parts = [p for p in as_list(content.get("parts")) if isinstance(p, dict)]
            if role == "model":
                m = Message(role="assistant", content=_text(parts))
                m.tool_calls = _calls(parts)
                pending = {}
                for call in m.tool_calls:
                    pending.setdefault(call.name, []).append(call.id)
                req.messages.append(m)
                continue
            unmatched: dict[str, int] = {}
            for part in parts:
                fr = part.get("functionResponse") or part.get("function_response")
                if not isinstance(fr, dict):
                    continue
                name = str(fr.get("name") or "")
                ids = pending.get(name)
                if ids:
                    call_id = ids.pop(0)
                else:
                    n = unmatched[name] = unmatched.get(name, -1) + 1
                    call_id = call_id_for(name, None, n)
                req.messages.append(Message(role="tool", content=_response_text(fr.get("response")),
                                            tool_call_id=call_id, name=name))
            text = _text(parts)
            if text or not any("functionResponse" in p or "function_response" in p for p in parts):
                req.messages.append(Message(role=str(role or "user"), content=text))
        return req

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        res = LLMResponse(truncated=True)
        text: list[str] = []
        reasoning: list[str] = []
        parts_seen: list[dict[str, Any]] = []
        for ev in events:
            data = loads(ev.data)
            chunks = data if isinstance(data, list) else [data]  # a JSON-array stream framed as one event
            for chunk in chunks:
                if not isinstance(chunk, dict):
                    continue
                if isinstance(chunk.get("error"), dict):
                    res.error = gemini_error(chunk["error"], "stream_error")
                    res.truncated = False
                    continue
                got = _apply_chunk(res, chunk, text, reasoning, parts_seen)
                if got:
                    res.first_token_ns = res.first_token_ns or ev.time_ns
        res.text = "".join(text)
        res.reasoning = "".join(reasoning)
        res.tool_calls = _calls(parts_seen)
        return res

    def parse_body(self, body: Any) -> LLMResponse:
        res = LLMResponse()
        text: list[str] = []
        reasoning: list[str] = []
        parts_seen: list[dict[str, Any]] = []
        for chunk in body if isinstance(body, list) else [body]:  # streamGenerateContent without alt=sse
            if isinstance(chunk, dict):
                if isinstance(chunk.get("error"), dict):
                    res.error = gemini_error(chunk["error"], "error")
                    continue
                _apply_chunk(res, chunk, text, reasoning, parts_seen)
        res.text = "".join(text)
        res.reasoning = "".join(reasoning)
        res.tool_calls = _calls(parts_seen)
        res.truncated = False  # a complete JSON body is complete, finishReason or not
        return res

    def parse_error(self, status: int, body: Any) -> ProviderError:
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]  # some Google endpoints wrap the error in a one-element array
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return gemini_error(err, f"http_{status}")
        return super().parse_error(status, body)


def gemini_error(err: dict[str, Any], default: str) -> ProviderError:
    etype = err.get("status") or err.get("code") or default
    return ProviderError(str(etype), str(err.get("message") or json.dumps(err)[:2000]))


def _apply_chunk(res: LLMResponse, chunk: dict[str, Any], text: list[str], reasoning: list[str],
                 parts_seen: list[dict[str, Any]]) -> bool:
    """Fold one GenerateContentResponse into `res`; True when it carried content."""
    if isinstance(chunk.get("responseId"), str):
        res.response_id = chunk["responseId"]
    if isinstance(chunk.get("modelVersion"), str):
        res.model = chunk["modelVersion"]
    if isinstance(chunk.get("usageMetadata"), dict):
        res.usage = gemini_usage(chunk["usageMetadata"])
    got = False
    candidates = as_list(chunk.get("candidates"))
    cand = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    content = cand.get("content")
    for part in as_list(content.get("parts")) if isinstance(content, dict) else []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str) and part["text"]:
            (reasoning if part.get("thought") is True else text).append(part["text"])
            got = True
        elif isinstance(part.get("functionCall"), dict):
            parts_seen.append(part)
            got = True
    if isinstance(cand.get("finishReason"), str) and cand["finishReason"]:
        res.finish_reason = cand["finishReason"]
        res.truncated = False
    feedback = chunk.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        res.finish_reason = res.finish_reason or feedback["blockReason"]
        res.error = res.error or ProviderError("prompt_blocked", feedback["blockReason"])
        res.truncated = False
    return got


def gemini_usage(u: dict[str, Any]) -> Usage:
    """`promptTokenCount` includes cached tokens; candidates exclude thoughts, so add them back."""
    thoughts = to_int(u.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=to_int(u.get("promptTokenCount")),
        output_tokens=to_int(u.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=to_int(u.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def call_id_for(name: str, args: Any, n: int) -> str:
    """The synthetic id of the n-th call of `name` with `args` in one model turn (see module doc)."""
    key = json.dumps([name, _canonical(args), n], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "gemini_call_" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """Make args survive a JS round trip: 2.0 and 2 are the same number once echoed back."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _calls(parts: list[dict[str, Any]]) -> list[ToolCall]:
    out: list[ToolCall] = []
    seen: dict[str, int] = {}
    for part in parts:
        fc = part.get("functionCall") or part.get("function_call")
        if not isinstance(fc, dict):
            continue
        name = str(fc.get("name") or "")
        args = fc.get("args")
        if args is None:
            args = {}
        key = json.dumps([name, _canonical(args)], sort_keys=True, default=str)
        n = seen[key] = seen.get(key, -1) + 1
        try:
            arguments = json.dumps(args, ensure_ascii=False)
        except (TypeError, ValueError):
            arguments = str(args)
        out.append(ToolCall(call_id_for(name, args, n), name, arguments))
    return out


def _text(parts: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part.get("text"), str):
            if part.get("thought") is not True:
                out.append(part["text"])
        elif "inlineData" in part or "fileData" in part or "inline_data" in part:
            out.append("[file]")
    return "".join(out)


def _response_text(response: Any) -> str:
    """ai-sdk sends `{"name": ..., "content": <output>}`; show the output itself when it is there."""
    if isinstance(response, dict) and "content" in response:
        content = response["content"]
        return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    if isinstance(response, str):
        return response
    return "" if response is None else json.dumps(response, ensure_ascii=False)

