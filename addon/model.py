"""Normalized records shared by every provider parser and the correlator.

Plain slotted dataclasses: they are built on the pipeline thread for every call, so they stay cheap.
Pydantic models live at the boundaries only (settings, plugin events, exported spans).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # raw JSON text as the model produced it


@dataclass(slots=True)
class Message:
    role: str  # system | developer | user | assistant | tool
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # for role=tool: which call this is the result of
    name: str | None = None  # tool name on tool results, when the format carries it
    is_error: bool = False  # tool result flagged as an error by the format


@dataclass(slots=True)
class Usage:
    """Token usage as the provider reported it, normalised.

    `input_tokens` counts ALL input tokens, cached ones included (OpenAI/Gemini convention);
    parsers of formats that exclude cache reads/writes (Anthropic) add them back.
    `output_tokens` includes reasoning tokens.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    provider_cost_usd: float | None = None  # cost reported in-band (OpenRouter `usage.cost`)

    @property
    def prompt_tokens(self) -> int:
        """Input tokens excluding cached ones, as opencode counts `tokens.input`."""
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    @property
    def completion_tokens(self) -> int:
        """Output tokens excluding reasoning, as opencode counts `tokens.output`."""
        return max(self.output_tokens - self.reasoning_tokens, 0)


@dataclass(slots=True)
class LLMRequest:
    api: str  # openai.chat | openai.responses | anthropic.messages | google.generate_content | unknown
    model: str | None = None
    stream: bool = False
    system: list[str] = field(default_factory=list)  # system / developer instructions, in order
    messages: list[Message] = field(default_factory=list)  # everything but system, in order
    tools: list[str] = field(default_factory=list)  # names of the offered tools
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p (where sent)
    error: str | None = None  # why the body could not be read (not JSON, truncated...)


@dataclass(slots=True)
class ProviderError:
    type: str  # e.g. rate_limit_error, overloaded_error, http_500, stream_error
    message: str


@dataclass(slots=True)
class LLMResponse:
    model: str | None = None
    response_id: str | None = None
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ProviderError | None = None
    truncated: bool = False  # stream ended without its terminal event
    first_token_ns: int | None = None  # wall clock of the first content/tool/reasoning delta


@dataclass(slots=True)
class Exchange:
    """One HTTP exchange as the tap saw it; handed from the event loop to the pipeline thread."""

    flow_id: str
    route: str
    upstream: str  # scheme://host[:port] of the route
    method: str
    path: str  # path after the route prefix, without query
    query: str  # query string; credentials masked by `addon.headers.unpack` on the pipeline thread
    request_headers: dict[str, str]  # lower-cased names, secrets already removed
    request_body: bytes | None
    request_body_truncated: bool
    start_ns: int
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (time_ns, raw bytes) as received
    response_truncated: bool = False  # capture limit reached (the client still got everything)
    end_ns: int | None = None
    error: str | None = None  # connection error / client disconnect / upstream unreachable
    cancelled: bool = False  # the client went away before the end
    # Correlation hints copied from headers before they are stripped.
    session_id: str | None = None
    parent_session_id: str | None = None
    agent: str | None = None
    neatlogs_api_key: str | None = None  # per-user key (x-neatlogs-api-key); never exported
    # Raw header fields as mitmproxy holds them; the tap only keeps references, and the pipeline thread
    # derives request_headers/response_headers and the hints above from them (`addon.headers.unpack`).
    raw_request_fields: tuple[tuple[bytes, bytes], ...] | None = None
    raw_response_fields: tuple[tuple[bytes, bytes], ...] | None = None
