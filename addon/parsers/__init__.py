"""Provider wire formats behind one interface, and the format-independent driver.

`parse_exchange` turns one captured HTTP exchange into (LLMRequest, LLMResponse): it picks the
format by path, decodes content-encoding, JSON and SSE, and maps HTTP errors. It never raises.
"""

from __future__ import annotations

import logging
from typing import Any

from addon import fastjson
from addon.decode import decode_body, decode_chunks
from addon.model import Exchange, LLMRequest, LLMResponse, ProviderError
from addon.parsers import openrouter
from addon.parsers.anthropic import AnthropicMessages
from addon.parsers.base import WireFormat
from addon.parsers.gemini import Gemini
from addon.parsers.openai_chat import OpenAIChat
from addon.parsers.openai_responses import OpenAIResponses
from addon.sse import decode_events

log = logging.getLogger(__name__)

# Order matters: the first format whose `matches` accepts the path wins.
FORMATS: list[WireFormat] = [OpenAIChat(), OpenAIResponses(), AnthropicMessages(), Gemini()]
UNKNOWN = WireFormat()


def register(fmt: WireFormat, first: bool = False) -> None:
    if first:
        FORMATS.insert(0, fmt)
    else:
        FORMATS.append(fmt)


def select(path: str, route: str = "", upstream: str = "") -> WireFormat:
    for fmt in FORMATS:
        if fmt.matches(path):
            return refine(fmt, route, upstream)
    return UNKNOWN


def refine(fmt: WireFormat, route: str, upstream: str) -> WireFormat:
    """Hook for formats that share a path but differ by upstream (OpenRouter speaks Chat Completions)."""
    for special in _REFINERS:
        picked = special(fmt, route, upstream)
        if picked is not None:
            return picked
    return fmt


_REFINERS: list[Any] = [openrouter.refine]


def is_streaming(ex: Exchange) -> bool:
    return ex.response_headers.get("content-type", "").startswith("text/event-stream")


def parse_exchange(ex: Exchange) -> tuple[WireFormat, LLMRequest, LLMResponse]:
    fmt = select(ex.path, ex.route, ex.upstream)
    try:
        return fmt, _request(fmt, ex), _response(fmt, ex)
    except Exception as exc:  # a parser bug must never lose the call: record what we have
        log.warning("parser %s failed on %s: %s", fmt.api, ex.path, exc, exc_info=log.isEnabledFor(10))
        req = LLMRequest(api=fmt.api, error=f"parser error: {exc}")
        return fmt, req, LLMResponse(error=ProviderError("capture_error", str(exc)))


def _request(fmt: WireFormat, ex: Exchange) -> LLMRequest:
    body = ex.request_body
    if ex.request_body_truncated:
        req = LLMRequest(api=fmt.api, error="request body larger than the capture limit")
        return req
    if not body:
        return LLMRequest(api=fmt.api, error=None if ex.method == "GET" else "empty request body")
    try:
        data = fastjson.loads(body)
    except (ValueError, RecursionError):
        return LLMRequest(api=fmt.api, error="request body is not JSON")
    req = fmt.parse_request(data, ex.path)
    if req.model is None:
        req.model = model_from_path(ex.path)
    return req


def model_from_path(path: str) -> str | None:
    """Gemini (and Vertex) keep the model only in the URL: `/models/<model>:generateContent`."""
    marker = "/models/"
    i = path.find(marker)
    if i < 0:
        return None
    rest = path[i + len(marker):]
    return rest.split(":", 1)[0].split("/", 1)[0] or None


def _response(fmt: WireFormat, ex: Exchange) -> LLMResponse:
    encoding = ex.response_headers.get("content-encoding", "")
    if ex.status is None:
        return LLMResponse(error=ProviderError("connection_error", ex.error or "no response"))
    if is_streaming(ex) and ex.status < 400:
        chunks, decode_error = decode_chunks(ex.chunks, encoding)
        res = fmt.parse_stream(decode_events(chunks))
        if decode_error:
            res.error = res.error or ProviderError("decode_error", decode_error)
        if ex.response_truncated:
            res.truncated = True
        _mark_cut(res, ex)
        return res
    raw, decode_error = decode_body(ex.chunks, encoding)
    if decode_error:
        return LLMResponse(error=ProviderError("decode_error", decode_error))
    try:
        body: Any = fastjson.loads(raw)
    except (ValueError, RecursionError):
        body = raw.decode("utf-8", "replace")
    if ex.status >= 400:
        return LLMResponse(error=fmt.parse_error(ex.status, body))
    if not isinstance(body, dict | list):  # a list: Gemini's streamGenerateContent without alt=sse
        return LLMResponse(error=ProviderError("invalid_response", "response body is not JSON"))
    res = fmt.parse_body(body)
    _mark_cut(res, ex)
    return res


def _mark_cut(res: LLMResponse, ex: Exchange) -> None:
    if ex.error and res.error is None:
        res.truncated = True
        res.error = ProviderError("cancelled" if ex.cancelled else "stream_interrupted", ex.error)
