"""Price-table cost of one LLM call, from the `genai-prices` package (bundled snapshot, no network).

genai-prices counts `input_tokens` the way we do: ALL input, cache reads and writes included (it
prices `input - cache_read - cache_write` at the input rate and the cached parts at their own
rates), and `output_tokens` includes reasoning. So our normalised `Usage` maps field for field.
An unknown model or provider gives None (logged at debug), never a made-up number; nothing raises.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from addon.model import Usage

log = logging.getLogger(__name__)

# gen_ai.provider.name (and a few route-ish spellings) -> genai-prices provider id.
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "google": "google",
    "openrouter": "openrouter",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure": "azure",
    "aws.bedrock": "aws",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "mistral_ai": "mistral",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "groq": "groq",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "together": "together",
    "fireworks": "fireworks",
}


def compute_cost(provider: str | None, model: str | None, usage: Usage | None) -> float | None:
    """USD cost of `usage` on `model` at `provider`'s list prices, or None when we cannot price it."""
    if not model or usage is None:
        return None
    try:
        found = _resolve(_PROVIDER_IDS.get((provider or "").lower()), model.lower())
        if found is None:
            return None
        gp_provider, gp_model = found
        from genai_prices import Usage as GPUsage

        # Clamp so an odd usage report (cached > input) cannot produce a negative uncached count.
        cache_read = min(usage.cache_read_tokens, usage.input_tokens)
        cache_write = min(usage.cache_write_tokens, usage.input_tokens - cache_read)
        gp_usage = GPUsage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_tokens=usage.output_tokens,
        )
        return float(gp_model.calc_price(gp_usage, gp_provider).total_price)
    except Exception as exc:  # pricing must never break a span
        log.debug("no price for %s/%s: %s", provider, model, exc)
        return None


@lru_cache(maxsize=1024)
def _resolve(provider_id: str | None, model: str) -> tuple[Any, Any] | None:
    """(genai-prices Provider, ModelInfo) for a model, cached, misses included."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    # A known provider is searched alone (with genai-prices' own fallbacks, e.g. Azure -> OpenAI):
    # a model an OpenAI-compatible server hosts must not be priced as somebody else's. Without a
    # provider, genai-prices matches the model name against every provider.
    for ref in _refs(model):
        try:
            return snapshot.find_provider_model(ref, None, provider_id, None)
        except LookupError:
            continue
    log.debug("genai-prices knows no model %r (provider %r)", model, provider_id)
    return None


def _refs(model: str) -> list[str]:
    """The model as given, then without a `models/` or `vendor/` prefix (`google/gemini-2.5-pro`)."""
    refs = [model]
    bare = model.removeprefix("models/")
    if "/" in bare:
        bare = bare.rsplit("/", 1)[1]
    if bare != model:
        refs.append(bare)
    return refs
