"""Fake upstreams for opencode's BUILT-IN providers: OpenAI Responses, Anthropic Messages, Gemini.

Standalone (stdlib only): a threading HTTP server on 127.0.0.1 with an ephemeral port, answering
from a scripted scenario and recording every request (method, path, query, headers, JSON body).
Streams are properly framed (`Transfer-Encoding: chunked`, one HTTP chunk per SSE event): opencode
hangs on SSE that is neither chunked nor length-delimited.

    with FakeProvider("anthropic", [tool("read", {"filePath": "x.txt"}), text("done")]) as fake:
        opencode.json: {"provider": {"anthropic": {"options": {"baseURL": fake.base_url, ...}}}}

`base_url` is what the built-in provider's `options.baseURL` takes (`.../v1`, or `.../v1beta` for
google). Requests without tools (opencode's title generation) are answered out of band with
`title`, so they never consume a scenario step. Usage numbers in a `Step` are given in the
NORMALISED convention of `addon.model.Usage` (input includes cache reads+writes, output includes
reasoning); each wire format converts them to its own convention, so tests can compare the proxy's
normalised numbers to the `Step` directly.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .util import LoopbackServer, TrackedHandler, read_http_body

KINDS = ("openai", "anthropic", "google")
DEFAULT_TITLE = "Fake provider title"


@dataclass
class StepUsage:
    """Normalised token counts (see module doc)."""

    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class Call:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # assigned by the server when empty (Gemini has no ids on the wire)


@dataclass
class Step:
    text: str | None = None
    calls: list[Call] = field(default_factory=list)
    reasoning: str | None = None
    usage: StepUsage = field(default_factory=StepUsage)
    status: int = 200  # != 200: answer this status with `error_body`
    error_body: dict[str, Any] | None = None
    stream_error: dict[str, Any] | None = None  # in-band error event sent after the content
    cut_after: int | None = None  # close the connection after this many events (no terminal event)
    chunk_delay: float = 0.0
    text_chunks: int = 3


def text(t: str, usage: StepUsage | None = None, **kw: Any) -> Step:
    return Step(text=t, usage=usage or StepUsage(), **kw)


def tool(name: str, args: dict[str, Any] | None = None, usage: StepUsage | None = None, **kw: Any) -> Step:
    return Step(calls=[Call(name, args or {})], usage=usage or StepUsage(), **kw)


def tools(*calls: tuple[str, dict[str, Any]], usage: StepUsage | None = None, **kw: Any) -> Step:
    return Step(calls=[Call(n, a) for n, a in calls], usage=usage or StepUsage(), **kw)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased
    body: Any
    kind: str  # main | title | other
    t_ns: int
    step_index: int | None = None
    reply_call_ids: list[str] = field(default_factory=list)

    @property
    def stream(self) -> bool:
        if ":streamGenerateContent" in self.path:
            return True
        return bool(isinstance(self.body, dict) and self.body.get("stream"))


def _split(s: str, n: int) -> list[str]:
    if not s:
        return []
    n = max(1, min(n, len(s)))
    size = -(-len(s) // n)
    return [s[i : i + size] for i in range(0, len(s), size)]


class FakeProvider(LoopbackServer):
    def __init__(self, kind: str, scenario: list[Step] | None = None, title: str = DEFAULT_TITLE,
                 model: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        super().__init__()
        self.thread_name = f"fake-{kind}"
        self.kind = kind
        self.model = model
        self.title = title
        self._scenario = list(scenario or [])
        self._next = 0
        self._ids = 0
        self._requests: list[Recorded] = []
        self.exhausted = 0

    # --- lifecycle -----------------------------------------------------------------------------
    def handler_class(self) -> type[TrackedHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return self.url + ("/v1beta" if self.kind == "google" else "/v1")

    def script(self, steps: list[Step]) -> None:
        with self._lock:
            self._scenario = list(steps)
            self._next = 0

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def main_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "main"]

    def wait_for_requests(self, n: int, kind: str = "main", timeout: float = 30.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while True:
            got = [r for r in self.requests if r.kind == kind]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {n} {kind} request(s) at the fake {self.kind}")
            time.sleep(0.05)

    # --- internals -----------------------------------------------------------------------------
    def _classify(self, method: str, path: str, body: Any) -> str:
        if method != "POST":
            return "other"
        if self.kind == "openai" and not path.endswith("/responses"):
            return "other"
        if self.kind == "anthropic" and not path.endswith("/messages"):
            return "other"
        if self.kind == "google" and ":" not in path.rsplit("/", 1)[-1]:
            return "other"
        return "title" if isinstance(body, dict) and not body.get("tools") else "main"

    def _pick(self, rec: Recorded) -> Step | None:
        with self._lock:
            self._requests.append(rec)
            if rec.kind == "title":
                step = Step(text=self.title, usage=StepUsage(300, 6))
            elif rec.kind == "main":
                if self._next < len(self._scenario):
                    rec.step_index = self._next
                    step = copy.deepcopy(self._scenario[self._next])
                    self._next += 1
                else:
                    self.exhausted += 1
                    step = Step(text="fake provider: scenario exhausted")
            else:
                return None
            for c in step.calls:
                if not c.id:
                    self._ids += 1
                    c.id = {"openai": "call_", "anthropic": "toolu_", "google": "g_"}[self.kind] + \
                        f"{secrets.token_hex(4)}{self._ids}"
            rec.reply_call_ids = [c.id for c in step.calls if c.id]
            return step

    def _model(self, rec: Recorded) -> str:
        if self.model:
            return self.model
        if isinstance(rec.body, dict) and isinstance(rec.body.get("model"), str):
            return rec.body["model"]
        tail = rec.path.rsplit("/models/", 1)[-1]
        return tail.split(":", 1)[0] or "fake-model"

    def events(self, step: Step, model: str) -> list[tuple[str | None, dict[str, Any]]]:
        return {"openai": responses_events, "anthropic": anthropic_events, "google": gemini_events}[
            self.kind](step, model)

    def body(self, step: Step, model: str) -> dict[str, Any]:
        return {"openai": responses_body, "anthropic": anthropic_body, "google": gemini_body}[self.kind](
            step, model)


# --- OpenAI Responses --------------------------------------------------------------------------


def _responses_usage(u: StepUsage) -> dict[str, Any]:
    return {"input_tokens": u.input_tokens, "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.input_tokens + u.output_tokens}


def _responses_output(step: Step) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if step.reasoning:
        out.append({"id": "rs_" + secrets.token_hex(6), "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": step.reasoning}]})
    if step.text:
        out.append({"id": "msg_" + secrets.token_hex(6), "type": "message", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": step.text, "annotations": [], "logprobs": []}]})
    for c in step.calls:
        out.append({"id": "fc_" + secrets.token_hex(6), "type": "function_call", "status": "completed",
                    "call_id": c.id, "name": c.name, "arguments": json.dumps(c.args)})
    return out


def _responses_obj(rid: str, model: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": None, "model": model, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage,
            "service_tier": "default", "store": False}


def responses_events(step: Step, model: str) -> list[tuple[str | None, dict[str, Any]]]:
    rid = "resp_" + secrets.token_hex(8)
    evs: list[dict[str, Any]] = [
        {"type": "response.created", "response": _responses_obj(rid, model, "in_progress", [], None)},
        {"type": "response.in_progress", "response": _responses_obj(rid, model, "in_progress", [], None)},
    ]
    output = _responses_output(step)
    for idx, item in enumerate(output):
        iid = item["id"]
        if item["type"] == "reasoning":
            evs.append({"type": "response.output_item.added", "output_index": idx,
                        "item": {"id": iid, "type": "reasoning", "summary": []}})
            evs.append({"type": "response.reasoning_summary_part.added", "item_id": iid, "output_index": idx,
                        "summary_index": 0, "part": {"type": "summary_text", "text": ""}})
            for piece in _split(step.reasoning or "", step.text_chunks):
                evs.append({"type": "response.reasoning_summary_text.delta", "item_id": iid,
                            "output_index": idx, "summary_index": 0, "delta": piece})
            evs.append({"type": "response.reasoning_summary_text.done", "item_id": iid, "output_index": idx,
                        "summary_index": 0, "text": step.reasoning})
            evs.append({"type": "response.reasoning_summary_part.done", "item_id": iid, "output_index": idx,
                        "summary_index": 0, "part": {"type": "summary_text", "text": step.reasoning}})
        elif item["type"] == "message":
            evs.append({"type": "response.output_item.added", "output_index": idx,
                        "item": {**item, "status": "in_progress", "content": []}})
            evs.append({"type": "response.content_part.added", "item_id": iid, "output_index": idx,
                        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})
            for piece in _split(step.text or "", step.text_chunks):
                evs.append({"type": "response.output_text.delta", "item_id": iid, "output_index": idx,
                            "content_index": 0, "delta": piece, "logprobs": []})
            evs.append({"type": "response.output_text.done", "item_id": iid, "output_index": idx,
                        "content_index": 0, "text": step.text, "logprobs": []})
            evs.append({"type": "response.content_part.done", "item_id": iid, "output_index": idx,
                        "content_index": 0, "part": item["content"][0]})
        else:
            evs.append({"type": "response.output_item.added", "output_index": idx,
                        "item": {**item, "status": "in_progress", "arguments": ""}})
            for piece in _split(item["arguments"], 3):
                evs.append({"type": "response.function_call_arguments.delta", "item_id": iid,
                            "output_index": idx, "delta": piece})
            evs.append({"type": "response.function_call_arguments.done", "item_id": iid, "output_index": idx,
                        "arguments": item["arguments"]})
        evs.append({"type": "response.output_item.done", "output_index": idx, "item": item})
    if step.stream_error:
        evs.append({"type": "error", **step.stream_error})
    else:
        evs.append({"type": "response.completed",
                    "response": _responses_obj(rid, model, "completed", output, _responses_usage(step.usage))})
    for i, ev in enumerate(evs):
        ev["sequence_number"] = i
    return [(ev["type"], ev) for ev in evs]


def responses_body(step: Step, model: str) -> dict[str, Any]:
    return _responses_obj("resp_" + secrets.token_hex(8), model, "completed", _responses_output(step),
                          _responses_usage(step.usage))


# --- Anthropic Messages ------------------------------------------------------------------------


def _anthropic_usage(u: StepUsage, output: int) -> dict[str, Any]:
    return {"input_tokens": max(u.input_tokens - u.cache_read_tokens - u.cache_write_tokens, 0),
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cache_read_tokens, "output_tokens": output}


def _stop_reason(step: Step) -> str:
    return "tool_use" if step.calls else "end_turn"


def anthropic_events(step: Step, model: str) -> list[tuple[str | None, dict[str, Any]]]:
    mid = "msg_" + secrets.token_hex(10)
    evs: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _anthropic_usage(step.usage, 1)}}]
    idx = 0
    if step.reasoning:
        evs.append({"type": "content_block_start", "index": idx,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        for piece in _split(step.reasoning, step.text_chunks):
            evs.append({"type": "content_block_delta", "index": idx,
                        "delta": {"type": "thinking_delta", "thinking": piece}})
        evs.append({"type": "content_block_delta", "index": idx,
                    "delta": {"type": "signature_delta", "signature": "sig" + secrets.token_hex(8)}})
        evs.append({"type": "content_block_stop", "index": idx})
        idx += 1
    if step.text:
        evs.append({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}})
        for piece in _split(step.text, step.text_chunks):
            evs.append({"type": "content_block_delta", "index": idx,
                        "delta": {"type": "text_delta", "text": piece}})
        evs.append({"type": "content_block_stop", "index": idx})
        idx += 1
    for c in step.calls:
        evs.append({"type": "content_block_start", "index": idx,
                    "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}})
        evs.append({"type": "content_block_delta", "index": idx,
                    "delta": {"type": "input_json_delta", "partial_json": ""}})
        for piece in _split(json.dumps(c.args), 3):
            evs.append({"type": "content_block_delta", "index": idx,
                        "delta": {"type": "input_json_delta", "partial_json": piece}})
        evs.append({"type": "content_block_stop", "index": idx})
        idx += 1
    if step.stream_error:
        evs.append({"type": "error", **step.stream_error})
    else:
        evs.append({"type": "message_delta", "delta": {"stop_reason": _stop_reason(step), "stop_sequence": None},
                    "usage": {"output_tokens": step.usage.output_tokens}})
        evs.append({"type": "message_stop"})
    out: list[tuple[str | None, dict[str, Any]]] = [(ev["type"], ev) for ev in evs]
    out.insert(1, ("ping", {"type": "ping"}))
    return out


def anthropic_body(step: Step, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if step.reasoning:
        content.append({"type": "thinking", "thinking": step.reasoning, "signature": "sig"})
    if step.text:
        content.append({"type": "text", "text": step.text})
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.args} for c in step.calls]
    return {"id": "msg_" + secrets.token_hex(10), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop_reason(step), "stop_sequence": None,
            "usage": _anthropic_usage(step.usage, step.usage.output_tokens)}


# --- Gemini ------------------------------------------------------------------------------------


def _gemini_usage(u: StepUsage) -> dict[str, Any]:
    out = {"promptTokenCount": u.input_tokens,
           "candidatesTokenCount": max(u.output_tokens - u.reasoning_tokens, 0),
           "totalTokenCount": u.input_tokens + u.output_tokens}
    if u.cache_read_tokens:
        out["cachedContentTokenCount"] = u.cache_read_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    return out


def gemini_events(step: Step, model: str) -> list[tuple[str | None, dict[str, Any]]]:
    rid = secrets.token_urlsafe(12)
    parts: list[list[dict[str, Any]]] = []
    if step.reasoning:
        parts += [[{"text": p, "thought": True}] for p in _split(step.reasoning, step.text_chunks)]
    if step.text:
        parts += [[{"text": p}] for p in _split(step.text, step.text_chunks)]
    if step.calls:
        parts.append([{"functionCall": {"name": c.name, "args": c.args}} for c in step.calls])
    if not parts:
        parts.append([{"text": ""}])
    evs: list[dict[str, Any]] = []
    for i, p in enumerate(parts):
        last = i == len(parts) - 1 and not step.stream_error
        cand: dict[str, Any] = {"content": {"parts": p, "role": "model"}, "index": 0}
        if last:
            cand["finishReason"] = "STOP"
        usage = _gemini_usage(step.usage) if last else {"promptTokenCount": step.usage.input_tokens,
                                                         "totalTokenCount": step.usage.input_tokens}
        evs.append({"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": rid})
    if step.stream_error:
        evs.append(step.stream_error)
    return [(None, ev) for ev in evs]


def gemini_body(step: Step, model: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if step.reasoning:
        parts.append({"text": step.reasoning, "thought": True})
    if step.text:
        parts.append({"text": step.text})
    parts += [{"functionCall": {"name": c.name, "args": c.args}} for c in step.calls]
    return {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": _gemini_usage(step.usage), "modelVersion": model,
            "responseId": secrets.token_urlsafe(12)}


# --- HTTP --------------------------------------------------------------------------------------


class _Handler(TrackedHandler):
    @property
    def fake(self) -> FakeProvider:
        return self.owner

    def _read_body(self) -> bytes:
        return read_http_body(self.rfile, self.headers)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        split = urlsplit(self.path)
        rec = Recorded(self.command, split.path, parse_qs(split.query),
                       {k.lower(): v for k, v in self.headers.items()}, body,
                       self.fake._classify(self.command, split.path, body), time.time_ns())
        step = self.fake._pick(rec)
        if step is None:
            return self._json(404, {"error": {"type": "not_found", "message": f"no route {split.path}"}})
        if step.status != 200:
            return self._json(step.status, step.error_body or {"error": {"message": "fake error"}})
        model = self.fake._model(rec)
        if not rec.stream:
            return self._json(200, self.fake.body(step, model))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, (name, ev) in enumerate(self.fake.events(step, model)):
                if step.cut_after is not None and i >= step.cut_after:
                    self.close_connection = True
                    self.wfile.flush()
                    return  # no terminating chunk: the client sees a cut stream
                frame = (f"event: {name}\n" if name else "") + f"data: {json.dumps(ev)}\n\n"
                self._chunk(frame.encode())
                if step.chunk_delay:
                    time.sleep(step.chunk_delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
