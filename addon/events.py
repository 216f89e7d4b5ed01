"""Plugin → proxy events (API v1, see docs/design.md): validated with pydantic at the boundary.

Unknown extra fields are ignored (a newer plugin must not be rejected by an older proxy); missing or
wrongly typed required fields give a 400 that names the event index and field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from addon import fastjson

MAX_EVENTS_BODY = 1024 * 1024
MAX_EVENTS_PER_BATCH = 1000


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    session_id: str = Field(min_length=1, max_length=256)
    ts: float = Field(0, ge=0)


class ChatMessage(_Event):
    type: Literal["chat.message"]
    message_id: str | None = None
    agent: str | None = None
    provider_id: str | None = None
    model_id: str | None = None
    text: str = ""


class ChatParams(_Event):
    type: Literal["chat.params"]
    agent: str | None = None
    provider_id: str | None = None
    model_id: str | None = None
    message_id: str | None = None


class ToolStart(_Event):
    type: Literal["tool.start"]
    call_id: str = Field(min_length=1)
    tool: str = "tool"
    args: Any = None


class ToolEnd(_Event):
    type: Literal["tool.end"]
    call_id: str = Field(min_length=1)
    tool: str = "tool"
    args: Any = None
    title: str | None = None
    output: Any = None
    metadata: Any = None
    error: str | None = None
    start_ts: float | None = Field(None, ge=0)
    end_ts: float | None = Field(None, ge=0)


class TokenCache(BaseModel):
    read: int = Field(0, ge=0)
    write: int = Field(0, ge=0)


class Tokens(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: int = Field(0, ge=0)
    output: int = Field(0, ge=0)
    reasoning: int = Field(0, ge=0)
    cache: TokenCache = Field(default_factory=TokenCache)


class MessageCompleted(_Event):
    type: Literal["message.completed"]
    message_id: str
    parent_id: str | None = None
    provider_id: str | None = None
    model_id: str | None = None
    agent: str | None = None
    tokens: Tokens | None = None
    cost: float | None = Field(None, ge=0)
    finish: str | None = None
    time_created: float | None = None
    time_completed: float | None = None
    error: str | None = None


class SessionInfo(_Event):
    type: Literal["session.info"]
    parent_id: str | None = None
    title: str | None = None


class SessionIdle(_Event):
    type: Literal["session.idle"]


class SessionDeleted(_Event):
    type: Literal["session.deleted"]


PluginEvent = Annotated[
    ChatMessage | ChatParams | ToolStart | ToolEnd | MessageCompleted | SessionInfo | SessionIdle
    | SessionDeleted,
    Field(discriminator="type"),
]


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source: str = "opencode-plugin"
    plugin_version: str | None = None
    events: list[PluginEvent] = Field(max_length=MAX_EVENTS_PER_BATCH)


_BATCH = TypeAdapter(EventBatch)


class BadEvents(ValueError):
    """A batch the proxy refuses, with a message meant for the plugin author."""


def parse_batch(body: bytes) -> EventBatch:
    if len(body) > MAX_EVENTS_BODY:
        raise BadEvents(f"body larger than {MAX_EVENTS_BODY} bytes")
    try:
        data = fastjson.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadEvents(f"body is not valid JSON: {exc}") from None
    try:
        return _BATCH.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadEvents(f"invalid event batch at {where}: {first['msg']}") from None
