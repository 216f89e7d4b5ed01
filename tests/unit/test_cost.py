"""Price-table cost (`addon.cost.compute_cost`) against hand computations from genai-prices' own prices."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import data_snapshot

from addon.cost import _resolve, compute_cost
from addon.model import Usage


def prices(provider_id: str, model: str):
    """The per-million-token prices genai-prices reports for the model today."""
    _provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    return info.get_prices(datetime.now(tz=UTC))


def mtok(price, tokens: int) -> Decimal:
    return Decimal(price or 0) * tokens / 1_000_000


def test_gpt_4o_with_cached_input():
    u = Usage(input_tokens=10_000, output_tokens=500, cache_read_tokens=4_000, reasoning_tokens=0)
    p = prices("openai", "gpt-4o")
    expected = mtok(p.input_mtok, 6_000) + mtok(p.cache_read_mtok, 4_000) + mtok(p.output_mtok, 500)
    assert compute_cost("openai", "gpt-4o", u) == pytest.approx(float(expected), rel=1e-12)
    assert p.input_mtok == Decimal("2.5") and p.cache_read_mtok == Decimal("1.25")  # sanity: real prices
    # a dated response model resolves to the same prices
    assert compute_cost("openai", "gpt-4o-2024-08-06", u) == compute_cost("openai", "gpt-4o", u)


def test_claude_sonnet_4_cache_reads_and_writes():
    # normalised usage: input includes reads and writes (Anthropic's own input_tokens would be 300)
    u = Usage(input_tokens=32_300, output_tokens=1_000, cache_read_tokens=30_000, cache_write_tokens=2_000)
    p = prices("anthropic", "claude-sonnet-4")
    expected = (mtok(p.input_mtok, 300) + mtok(p.cache_read_mtok, 30_000) + mtok(p.cache_write_mtok, 2_000)
                + mtok(p.output_mtok, 1_000))
    got = compute_cost("anthropic", "claude-sonnet-4-20250514", u)
    assert got == pytest.approx(float(expected), rel=1e-12)
    assert got == pytest.approx(300 * 3e-6 + 30_000 * 0.3e-6 + 2_000 * 3.75e-6 + 1_000 * 15e-6, rel=1e-9)


def test_gemini_2_5_flash_output_includes_thoughts():
    u = Usage(input_tokens=12_000, output_tokens=160, cache_read_tokens=8_000, reasoning_tokens=120)
    p = prices("google", "gemini-2.5-flash")
    expected = mtok(p.input_mtok, 4_000) + mtok(p.cache_read_mtok, 8_000) + mtok(p.output_mtok, 160)
    assert compute_cost("gcp.gemini", "gemini-2.5-flash", u) == pytest.approx(float(expected), rel=1e-12)


def test_openrouter_vendor_prefixed_model():
    u = Usage(input_tokens=1_000, output_tokens=100)
    p = prices("openrouter", "anthropic/claude-sonnet-4")
    expected = mtok(p.input_mtok, 1_000) + mtok(p.output_mtok, 100)
    assert compute_cost("openrouter", "anthropic/claude-sonnet-4", u) == pytest.approx(float(expected))


def test_unknown_model_is_none_and_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="addon.cost")
    assert compute_cost("openai", "my-local-llama-3", Usage(input_tokens=10, output_tokens=1)) is None
    assert "my-local-llama-3" in caplog.text
    # a known provider never borrows another provider's price for a model it does not list
    assert compute_cost("openai", "claude-sonnet-4", Usage(input_tokens=10, output_tokens=1)) is None


def test_missing_inputs_and_odd_usage_never_raise():
    assert compute_cost("openai", None, Usage()) is None
    assert compute_cost(None, "gpt-4o", None) is None
    assert compute_cost("openai", "gpt-4o", Usage()) == 0.0
    # cached > input (a buggy report) is clamped rather than producing a negative uncached count
    odd = compute_cost("openai", "gpt-4o", Usage(input_tokens=10, cache_read_tokens=50))
    assert odd is not None and odd >= 0
    assert compute_cost("weird-provider", "gpt-4o", Usage(input_tokens=1_000_000)) == pytest.approx(2.5)


def test_lookups_are_cached():
    _resolve.cache_clear()
    u = Usage(input_tokens=100, output_tokens=10)
    for _ in range(5):
        compute_cost("openai", "gpt-4o", u)
        compute_cost("openai", "no-such-model", u)
    info = _resolve.cache_info()
    assert info.misses == 2 and info.hits == 8
