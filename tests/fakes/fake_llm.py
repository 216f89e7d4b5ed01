"""A scriptable fake OpenAI Chat Completions server for end-to-end tests.

opencode (through ``@ai-sdk/openai-compatible``) talks to it as to any provider. Every request is
recorded (path, all headers, parsed body, arrival time) so tests can assert what opencode sent; the
answers follow a script of *steps* (text or tool calls, with exact usage numbers) so tests can assert
exactly what the proxy must have captured. Title-generation requests (no ``tools``) are answered out
of band with a fixed title, because opencode fires them concurrently with the first turn.

Fault knobs per step: HTTP error status, stream cut mid-way, slow chunks / slow first byte, gzip,
``Connection: close`` framing, and a gate event to hold the answer until the test releases it.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import secrets
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from .util import LoopbackServer, TrackedHandler, read_http_body, wait_until

DEFAULT_TITLE = "Fake session title"


@dataclass
class Usage:
    """Token counts reported for one answer (``total_tokens`` is derived)."""

    prompt_tokens: int = 100
    completion_tokens: int = 20
    cached_tokens: int = 0
    reasoning_tokens: int | None = None
    cost: float | None = None  # OpenRouter's in-band `usage.cost` (USD), sent only when set

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if self.reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        if self.cost is not None:
            out["cost"] = self.cost
        return out


@dataclass
class ToolCall:
    """One tool call the fake model makes; ``id`` is assigned by the server when left empty."""

    name: str
    args: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments(self) -> str:
        return self.args if isinstance(self.args, str) else json.dumps(self.args)


@dataclass
class Step:
    """One scripted answer: text and/or tool calls, usage numbers and optional faults."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    # --- faults / timing ---
    status: int = 200  # != 200: answer with this status and ``error_body`` instead
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (e.g. Retry-After)
    cut_after: int | None = None  # drop the connection after this many SSE events (no terminator)
    header_delay: float = 0.0  # seconds before the status line is sent
    first_chunk_delay: float = 0.0  # seconds between the headers and the first SSE event (TTFT)
    chunk_delay: float = 0.0  # seconds between SSE events
    gzip: bool = False  # Content-Encoding: gzip (streamed with sync flushes)
    framing: str = "chunked"  # "chunked" or "close" (no length, Connection: close)
    text_chunks: int = 4  # how many content deltas the text is split into
    arg_chunks: int = 3  # how many fragments each tool call's arguments are split into
    usage_chunk: bool | None = None  # streamed usage chunk: None = when requested, False/True = never/always
    gate: threading.Event | None = None  # if set, wait for it (max 60 s) before answering

    def resolved_finish_reason(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


# --- scenario builders -------------------------------------------------------------------------


def text_step(text: str, usage: Usage | None = None, **kw: Any) -> Step:
    return Step(text=text, usage=usage or Usage(), **kw)


def tool_step(*calls: ToolCall | tuple[str, dict[str, Any]], usage: Usage | None = None, **kw: Any) -> Step:
    tcs = [c if isinstance(c, ToolCall) else ToolCall(c[0], c[1]) for c in calls]
    return Step(tool_calls=tcs, usage=usage or Usage(), **kw)


def tool_then_answer(
    tool: str = "read",
    args: dict[str, Any] | None = None,
    answer: str = "I read the file. It says hello.",
    usages: tuple[Usage, Usage] | None = None,
) -> list[Step]:
    """The default scenario: step 1 calls one tool, step 2 answers with text."""
    u1, u2 = usages or (
        Usage(prompt_tokens=1200, completion_tokens=40, cached_tokens=100),
        Usage(prompt_tokens=1500, completion_tokens=25, cached_tokens=1100),
    )
    return [tool_step((tool, args or {}), usage=u1), text_step(answer, usage=u2)]


def parallel_tools_then_tool_then_answer(
    parallel: list[tuple[str, dict[str, Any]]],
    then: tuple[str, dict[str, Any]],
    answer: str = "All done.",
    usages: tuple[Usage, Usage, Usage] | None = None,
) -> list[Step]:
    """Step 1: two (or more) parallel tool calls; step 2: one more tool call; step 3: text."""
    u1, u2, u3 = usages or (
        Usage(prompt_tokens=1200, completion_tokens=60, cached_tokens=0),
        Usage(prompt_tokens=1800, completion_tokens=30, cached_tokens=1200),
        Usage(prompt_tokens=2100, completion_tokens=15, cached_tokens=1800),
    )
    return [tool_step(*parallel, usage=u1), tool_step(then, usage=u2), text_step(answer, usage=u3)]


# --- records -----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """What the fake received, and what it decided to answer."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names; the last value wins
    header_list: list[tuple[str, str]]  # as received, in order
    raw_body: bytes
    body: Any  # parsed JSON (None when not JSON)
    t_ns: int  # arrival time, time.time_ns()
    kind: str  # "title", "main" or "other"
    step_index: int | None = None  # index into the scenario; None for title/other/exhausted
    reply_tool_call_ids: list[str] = field(default_factory=list)
    chunk_t_ns: list[int] = field(default_factory=list)  # when each SSE event was written
    done_t_ns: int | None = None  # when the answer was complete (or cut)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", []) if isinstance(self.body, dict) else []

    @property
    def stream(self) -> bool:
        return bool(isinstance(self.body, dict) and self.body.get("stream"))


# --- server ------------------------------------------------------------------------------------


class FakeLLM(LoopbackServer):
    """The fake provider. Start it, ``script()`` a scenario, point opencode at ``base_url``."""

    thread_name = "fake-llm"

    def __init__(self, scenario: list[Step] | None = None, title: str = DEFAULT_TITLE) -> None:
        super().__init__()
        self._scenario: list[Step] = list(scenario or [])
        self._next = 0
        self._ids = 0
        self._id_prefix = secrets.token_hex(3)
        self.title_step = Step(text=title, usage=Usage(prompt_tokens=300, completion_tokens=6))
        self._requests: list[RecordedRequest] = []
        self.exhausted = 0  # main requests that arrived after the scenario ran out

    def handler_class(self) -> type[TrackedHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        """What to put in an OpenAI-compatible provider's ``baseURL``."""
        return self.url + "/v1"

    # scripting
    def script(self, steps: list[Step]) -> None:
        """Replace the scenario; main requests are answered by these steps in arrival order."""
        with self._lock:
            self._scenario = list(steps)
            self._next = 0

    @property
    def steps_used(self) -> int:
        with self._lock:
            return self._next

    # records
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def main_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "main"]

    def title_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "title"]

    def wait_for_requests(self, n: int, kind: str = "main", timeout: float = 30.0) -> list[RecordedRequest]:
        def enough() -> list[RecordedRequest] | None:
            rs = [r for r in self.requests if r.kind == kind]
            return rs if len(rs) >= n else None

        return wait_until(enough, timeout, message=f"{n} {kind} request(s) at the fake LLM")

    @staticmethod
    def is_title_request(body: Any) -> bool:
        """opencode's title generation sends no tools; every agent turn does."""
        return isinstance(body, dict) and not body.get("tools")

    # internals used by the handler
    def _record_and_pick(self, rec: RecordedRequest) -> Step | None:
        with self._lock:
            self._requests.append(rec)
            if rec.kind == "title":
                step = copy.copy(self.title_step)
            elif rec.kind == "main":
                if self._next < len(self._scenario):
                    rec.step_index = self._next
                    step = copy.copy(self._scenario[self._next])
                    self._next += 1
                else:
                    self.exhausted += 1
                    step = Step(text="fake-llm: scenario exhausted")
            else:
                return None
            step.tool_calls = [copy.copy(tc) for tc in step.tool_calls]
            for tc in step.tool_calls:
                if not tc.id:
                    self._ids += 1
                    tc.id = f"call_{self._id_prefix}_{self._ids}"
            rec.reply_tool_call_ids = [tc.id for tc in step.tool_calls if tc.id]
            return step


def _split(s: str, n: int) -> list[str]:
    """Split ``s`` into at most ``n`` non-empty pieces (at least one piece, possibly empty)."""
    if not s:
        return [""]
    n = max(1, min(n, len(s)))
    size = -(-len(s) // n)
    return [s[i : i + size] for i in range(0, len(s), size)]


def build_events(step: Step, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The chat.completion.chunk objects for a streamed answer, in order (without ``[DONE]``)."""
    cid = "chatcmpl-" + secrets.token_hex(8)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    if step.text:
        events += [chunk({"content": piece}) for piece in _split(step.text, step.text_chunks)]
    for i, tc in enumerate(step.tool_calls):
        head = {"index": i, "id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
        events.append(chunk({"tool_calls": [head]}))
        for frag in _split(tc.arguments(), step.arg_chunks):
            events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}))
    events.append(chunk({}, step.resolved_finish_reason()))
    if include_usage:
        events.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": step.usage.to_json(),
            }
        )
    return events


def build_completion(step: Step, model: str) -> dict[str, Any]:
    """A non-streamed chat.completion object."""
    message: dict[str, Any] = {"role": "assistant", "content": step.text}
    if step.tool_calls:
        message["tool_calls"] = [
            {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments()}}
            for tc in step.tool_calls
        ]
    return {
        "id": "chatcmpl-" + secrets.token_hex(8),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": step.resolved_finish_reason()}],
        "usage": step.usage.to_json(),
    }


class _Handler(TrackedHandler):
    @property
    def fake(self) -> FakeLLM:
        return self.owner

    def _read_body(self) -> bytes:
        body = read_http_body(self.rfile, self.headers)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        t_ns = time.time_ns()
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        if self.command == "POST" and path.endswith("/chat/completions"):
            kind = "title" if FakeLLM.is_title_request(body) else "main"
        else:
            kind = "other"
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            header_list=list(self.headers.items()),
            raw_body=raw,
            body=body,
            t_ns=t_ns,
            kind=kind,
        )
        step = self.fake._record_and_pick(rec)
        try:
            if step is None:
                self._send_json(404, {"error": {"message": f"fake-llm: no route for {self.path}"}}, rec)
            else:
                self._answer(step, rec)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            rec.done_t_ns = time.time_ns()

    def _send_json(self, status: int, obj: Any, rec: RecordedRequest, step: Step | None = None) -> None:
        data = json.dumps(obj).encode()
        headers = {"Content-Type": "application/json"}
        if step is not None:
            headers.update(step.headers)
            if step.gzip:
                data = gzip.compress(data)
                headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        rec.chunk_t_ns.append(time.time_ns())

    def _answer(self, step: Step, rec: RecordedRequest) -> None:
        if step.gate is not None:
            step.gate.wait(60)
        if step.header_delay:
            time.sleep(step.header_delay)
        body = rec.body if isinstance(rec.body, dict) else {}
        model = str(body.get("model") or "fake-model")
        if step.status != 200:
            err = step.error_body or {
                "error": {"message": f"fake-llm error {step.status}", "type": "fake", "code": step.status}
            }
            self._send_json(step.status, err, rec, step)
            return
        if not body.get("stream"):
            self._send_json(200, build_completion(step, model), rec, step)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if step.usage_chunk is not None:
            include_usage = step.usage_chunk
        self._stream(step, rec, build_events(step, model, include_usage))

    def _stream(self, step: Step, rec: RecordedRequest, events: list[dict[str, Any]]) -> None:
        chunked = step.framing == "chunked"
        comp = zlib.compressobj(wbits=31) if step.gzip else None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        for k, v in step.headers.items():
            self.send_header(k, v)
        if comp is not None:
            self.send_header("Content-Encoding", "gzip")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        def write(data: bytes) -> None:
            if comp is not None:
                data = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
            if chunked:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            self.wfile.write(data)
            rec.chunk_t_ns.append(time.time_ns())

        payloads = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        if step.first_chunk_delay:
            time.sleep(step.first_chunk_delay)
        for i, payload in enumerate(payloads):
            if step.cut_after is not None and i >= step.cut_after:
                self._drop()
                return
            if i and step.chunk_delay:
                time.sleep(step.chunk_delay)
            write(payload)
        tail = comp.flush() if comp is not None else b""
        if chunked:
            self.wfile.write((b"%x\r\n%s\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n")
        else:
            self.wfile.write(tail)

    def _drop(self) -> None:
        """Close the connection abruptly, without the chunked terminator or ``[DONE]``."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
