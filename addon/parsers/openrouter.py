"""OpenRouter: Chat Completions plus a few extras, selected by route/upstream (see `refine`).

What `OpenAIChat` already handles for us: `usage.cost` (-> `Usage.provider_cost_usd`),
`usage.prompt_tokens_details.cache_write_tokens`, `delta.reasoning`, in-band `error` chunks in a
stream, and `: OPENROUTER PROCESSING` keep-alives (comments, dropped by the SSE decoder).
What this subclass adds:
* the provider name `openrouter`;
* BYOK calls: `usage.cost` is only OpenRouter's fee, the upstream bill is
  `usage.cost_details.upstream_inference_cost`; the provider cost is their sum;
* in-band errors in a non-streamed HTTP 200 body (top-level `error` or `choices[0].error`);
* numeric error codes (OpenRouter uses HTTP statuses) become `http_<code>` like the driver's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from addon.model import LLMResponse, ProviderError
from addon.parsers.base import WireFormat, error_from_body, loads
from addon.parsers.openai_chat import OpenAIChat
from addon.sse import SSEEvent


class OpenRouter(OpenAIChat):
    provider = "openrouter"

    def parse_stream(self, events: Iterable[SSEEvent]) -> LLMResponse:
        evs = events if isinstance(events, list) else list(events)
        res = super().parse_stream(evs)
        for ev in reversed(evs):  # usage rides on the last chunk; only BYOK needs a second look
            if '"usage"' in ev.data:
                chunk = loads(ev.data)
                if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                    _byok(res, chunk["usage"])
                    break
        if res.error is not None:
            res.error = _typed(res.error)
        return res

    def parse_body(self, body: Any) -> LLMResponse:
        res = super().parse_body(body)
        if not isinstance(body, dict):
            return res
        if isinstance(body.get("usage"), dict):
            _byok(res, body["usage"])
        err = body.get("error")
        if not isinstance(err, dict):
            choices = body.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            err = first.get("error") if isinstance(first, dict) else None
        if isinstance(err, dict):
            res.error = _typed(ProviderError(str(err.get("type") or err.get("code") or "provider_error"),
                                             str(err.get("message") or "")))
        return res

    def parse_error(self, status: int, body: Any) -> ProviderError:
        return _typed(error_from_body(status, body))


OPENROUTER = OpenRouter()


def refine(fmt: WireFormat, route: str, upstream: str) -> WireFormat | None:
    """Chat Completions sent to OpenRouter (route named `openrouter`, or upstream host openrouter.ai)."""
    if fmt.api != OpenAIChat.api or isinstance(fmt, OpenRouter):
        return None
    host = (urlsplit(upstream).hostname or "") if "://" in upstream else upstream.split("/")[0]
    if route.lower() == "openrouter" or host == "openrouter.ai" or host.endswith(".openrouter.ai"):
        return OPENROUTER
    return None


def _byok(res: LLMResponse, usage: dict[str, Any]) -> None:
    details = usage.get("cost_details")
    upstream = details.get("upstream_inference_cost") if isinstance(details, dict) else None
    if (usage.get("is_byok") is True and res.usage is not None
            and isinstance(upstream, int | float) and not isinstance(upstream, bool)):
        res.usage.provider_cost_usd = (res.usage.provider_cost_usd or 0.0) + float(upstream)


def _typed(err: ProviderError) -> ProviderError:
    if err.type.isdigit():
        err.type = f"http_{err.type}"
    return err
