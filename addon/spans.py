"""The exported span model and the attribute builders for each span kind of the span contract.

Builders are pure: they take normalized records and return attribute dicts. The correlator decides
which span to build when; `addon.otlp` turns `Span`s into protobuf.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from addon.model import LLMRequest, LLMResponse, Message, ToolCall, Usage

AttrValue = str | bool | int | float | list[str]

STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
KIND_INTERNAL = 1


class Span(BaseModel):
    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    span_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    parent_span_id: str | None = None
    name: str
    kind: int = KIND_INTERNAL
    start_ns: int
    end_ns: int
    attributes: dict[str, AttrValue] = Field(default_factory=dict)
    status_code: int = STATUS_UNSET
    status_message: str = ""
    session_id: str = ""  # the opencode session this span belongs to (local store index)


# --- ids -----------------------------------------------------------------------------------------

def _hash(kind: str, *parts: str, size: int) -> str:
    h = hashlib.sha256("\x1f".join((kind, *parts)).encode()).hexdigest()[: size * 2]
    return h if int(h, 16) else "1".rjust(size * 2, "0")  # all-zero ids are invalid in OTLP


def trace_id_for(session_id: str) -> str:
    return _hash("trace", session_id, size=16)


def root_span_id_for(session_id: str) -> str:
    return _hash("root", session_id, size=8)


def tool_span_id_for(session_id: str, call_id: str) -> str:
    return _hash("tool", session_id, call_id, size=8)


def marker_span_id_for(session_id: str, turn: int) -> str:
    return _hash("marker", session_id, str(turn), size=8)


def new_span_id() -> str:
    while True:
        sid = os.urandom(8).hex()
        if int(sid, 16):
            return sid


# --- attribute helpers ---------------------------------------------------------------------------

class Content:
    """Applies the content policy to string attributes: secret scrubbing, then truncation.

    Every LLM request repeats the whole conversation so far, so the same message texts come back call
    after call; their scrubbed, truncated form is cached (bounded) so each text is scanned once.
    """

    CACHE_ENTRIES = 4096
    CACHE_MAX_VALUE = 256 * 1024

    def __init__(self, max_bytes: int, scrub: Callable[[str], tuple[str, dict[str, int]]] | None) -> None:
        self.max_bytes = max_bytes
        self.scrub = scrub
        self._cache: OrderedDict[str, tuple[str, int, bool]] = OrderedDict()

    def put(self, attrs: dict[str, AttrValue], key: str, value: str | None) -> None:
        if value is None:
            return
        text, redacted, truncated = self._apply(value)
        if redacted:
            attrs["neatlogs.redaction.count"] = int(attrs.get("neatlogs.redaction.count", 0)) + redacted  # type: ignore[arg-type]
        if truncated:
            attrs[f"{key}.truncated"] = True
        attrs[key] = text

    def _apply(self, value: str) -> tuple[str, int, bool]:
        cacheable = len(value) <= self.CACHE_MAX_VALUE
        if cacheable:
            hit = self._cache.get(value)
            if hit is not None:
                self._cache.move_to_end(value)
                return hit
        redacted = 0
        if self.scrub is not None and value:
            value_out, counts = self.scrub(value)
            redacted = sum(counts.values())
        else:
            value_out = value
        truncated = False
        if len(value_out) * 4 > self.max_bytes:  # cheap check first: only encode what might be too long
            raw = value_out.encode("utf-8", "replace")
            if len(raw) > self.max_bytes:
                value_out = raw[: self.max_bytes].decode("utf-8", "ignore")
                truncated = True
        result = (value_out, redacted, truncated)
        if cacheable:
            self._cache[value] = result
            if len(self._cache) > self.CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return result


def put_io(c: Content, attrs: dict[str, AttrValue], kind: str, inp: str | None, out: str | None) -> None:
    """The official plugin's triple: input.value, neatlogs.input.value, neatlogs.<kind>.input."""
    if inp is not None:
        for key in ("input.value", "neatlogs.input.value", f"neatlogs.{kind}.input"):
            c.put(attrs, key, inp)
    if out is not None:
        for key in ("output.value", "neatlogs.output.value", f"neatlogs.{kind}.output"):
            c.put(attrs, key, out)


def base_attrs(kind: str, session_id: str) -> dict[str, AttrValue]:
    return {
        "neatlogs.span.kind": kind,
        "neatlogs.conversation.id": session_id,
        "neatlogs.session.id": session_id,
        "gen_ai.conversation.id": session_id,
    }


def render_tool_calls(calls: list[ToolCall]) -> str:
    return "\n".join(f"→ {tc.name}({tc.arguments or '{}'})" for tc in calls)


def token_attrs(attrs: dict[str, AttrValue], prefix: str, u: Usage) -> None:
    """neatlogs counts follow opencode: prompt excludes cache, completion excludes reasoning."""
    attrs[f"{prefix}.prompt"] = u.prompt_tokens
    attrs[f"{prefix}.completion"] = u.completion_tokens
    attrs[f"{prefix}.total"] = u.prompt_tokens + u.completion_tokens
    attrs[f"{prefix}.reasoning"] = u.reasoning_tokens
    attrs[f"{prefix}.cache_read"] = u.cache_read_tokens
    attrs[f"{prefix}.cache_write"] = u.cache_write_tokens


# --- LLM -----------------------------------------------------------------------------------------

def llm_attrs(
    c: Content,
    *,
    session_id: str,
    req: LLMRequest,
    res: LLMResponse,
    provider: str,
    gen_ai_provider: str,
    turn_prompt: str | None,
    capture_system: bool,
    purpose: str | None,
    status: int | None,
    start_ns: int,
    cost: float | None,
    cost_source: str | None,
    method: str | None = None,
    path: str | None = None,
    request_headers: dict[str, str] | None = None,
) -> dict[str, AttrValue]:
    a = base_attrs("LLM", session_id)
    if method:
        a["http.request.method"] = method
    if path:
        a["url.path"] = path
    if request_headers:
        a["neatlogs.http.request.headers"] = to_json(request_headers)
    model = req.model or res.model or "unknown"
    a["neatlogs.llm.model_name"] = model
    a["neatlogs.llm.provider"] = provider
    a["neatlogs.llm.api"] = req.api
    a["gen_ai.operation.name"] = "chat"
    a["gen_ai.provider.name"] = gen_ai_provider
    a["gen_ai.request.model"] = model
    if res.model:
        a["gen_ai.response.model"] = res.model
    if purpose:
        a["neatlogs.llm.purpose"] = purpose

    i = 0
    if capture_system:
        for text in req.system:
            a[f"neatlogs.llm.input_messages.{i}.role"] = "system"
            c.put(a, f"neatlogs.llm.input_messages.{i}.content", text)
            i += 1
    for m in req.messages:
        _put_message(c, a, f"neatlogs.llm.input_messages.{i}", m)
        i += 1

    out_text = res.text or (render_tool_calls(res.tool_calls) if res.tool_calls else "")
    if out_text or res.tool_calls:
        a["neatlogs.llm.output_messages.0.role"] = "assistant"
        c.put(a, "neatlogs.llm.output_messages.0.content", out_text)
    if res.reasoning:
        c.put(a, "neatlogs.llm.output_messages.0.reasoning", res.reasoning)
    for j, tc in enumerate(res.tool_calls):
        a[f"neatlogs.llm.tool_calls.{j}.name"] = tc.name
        a[f"neatlogs.llm.tool_calls.{j}.id"] = tc.id
        c.put(a, f"neatlogs.llm.tool_calls.{j}.arguments", tc.arguments)
    put_io(c, a, "llm", turn_prompt, out_text or None)

    if res.usage is not None:
        u = res.usage
        token_attrs(a, "neatlogs.llm.token_count", u)
        a["gen_ai.usage.input_tokens"] = u.input_tokens
        a["gen_ai.usage.output_tokens"] = u.output_tokens
        a["gen_ai.usage.cache_read.input_tokens"] = u.cache_read_tokens
        a["gen_ai.usage.cache_creation.input_tokens"] = u.cache_write_tokens
    if cost is not None:
        a["neatlogs.llm.cost_usd"] = float(cost)
        if cost_source:
            a["neatlogs.llm.cost_source"] = cost_source
    if res.finish_reason:
        a["neatlogs.llm.finish_reason"] = res.finish_reason
        a["gen_ai.response.finish_reasons"] = [res.finish_reason]
    if res.response_id:
        a["neatlogs.llm.response_id"] = res.response_id
        a["gen_ai.response.id"] = res.response_id
    if res.first_token_ns and res.first_token_ns >= start_ns:
        a["neatlogs.llm.time_to_first_token_ms"] = round((res.first_token_ns - start_ns) / 1e6, 3)
    for key in ("temperature", "max_tokens", "top_p", "stream"):
        if key in req.params and isinstance(req.params[key], bool | int | float):
            a[f"neatlogs.llm.request.{key}"] = req.params[key]
    if req.tools:
        a["neatlogs.llm.tool_names"] = json.dumps(req.tools)
    if status is not None:
        a["http.response.status_code"] = status
    if res.truncated:
        a["neatlogs.llm.stream.truncated"] = True
    if req.error:
        a["neatlogs.llm.request.capture_error"] = req.error
    if res.error is not None:
        a["error.type"] = res.error.type
        c.put(a, "error.message", res.error.message)
    return a


def _put_message(c: Content, a: dict[str, AttrValue], key: str, m: Message) -> None:
    a[f"{key}.role"] = m.role
    content = m.content
    if not content and m.tool_calls:
        content = render_tool_calls(m.tool_calls)
    c.put(a, f"{key}.content", content)
    if m.tool_call_id:
        a[f"{key}.tool_call_id"] = m.tool_call_id
    for j, tc in enumerate(m.tool_calls):
        a[f"{key}.tool_calls.{j}.id"] = tc.id
        a[f"{key}.tool_calls.{j}.name"] = tc.name
        c.put(a, f"{key}.tool_calls.{j}.arguments", tc.arguments)


# --- TOOL ----------------------------------------------------------------------------------------

def tool_attrs(
    c: Content,
    *,
    session_id: str,
    call_id: str,
    name: str,
    args: str,
    output: str | None,
    source: str,
    title: str | None = None,
    metadata: Any = None,
    error: str | None = None,
) -> dict[str, AttrValue]:
    a = base_attrs("TOOL", session_id)
    a["neatlogs.tool.name"] = name
    a["neatlogs.tool.call_id"] = call_id
    a["neatlogs.tool.source"] = source
    a["gen_ai.operation.name"] = "execute_tool"
    a["gen_ai.tool.name"] = name
    a["gen_ai.tool.call.id"] = call_id
    c.put(a, "neatlogs.tool.input", args)
    if output is not None:
        c.put(a, "neatlogs.tool.output", output)
    put_io(c, a, "tool", args, output)
    if title:
        c.put(a, "neatlogs.tool.title", title)
    if metadata is not None:
        c.put(a, "neatlogs.tool.metadata", metadata if isinstance(metadata, str) else to_json(metadata))
    if error:
        a["error.type"] = "tool_error"
        c.put(a, "error.message", error)
    return a


def to_json(value: Any) -> str:
    """Attribute text for a JSON-able value; never raises (odd objects fall back to str)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def marker_attrs(session_id: str) -> dict[str, AttrValue]:
    a = base_attrs("Neatlogs.INTERNAL", session_id)
    a["neatlogs.trace.complete"] = True
    a["neatlogs.internal"] = True
    return a
