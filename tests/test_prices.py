"""Prices and costs: the built-in table, overrides, dated model names, cached prompt tokens."""

from __future__ import annotations

import pytest

from gateway.prices import BUILT_IN, Price, PriceTable


def test_cost_of_prompt_and_completion_tokens() -> None:
    """1M prompt tokens at the input price plus 1M completion tokens at the output price."""
    assert Price(2.5, 10.0).cost(1_000_000, 1_000_000) == pytest.approx(12.5)


def test_cached_prompt_tokens_cost_the_cached_rate() -> None:
    """Of 1,000 prompt tokens, the 400 served from the provider's cache cost the cached rate."""
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    assert price.cost(1000, 0, cached_tokens=400) == pytest.approx((600 * 2.0 + 400 * 0.5) / 1e6)
    assert price.cost(100, 0, cached_tokens=500) == pytest.approx(100 * 0.5 / 1e6)  # capped


def test_a_dated_model_name_takes_its_family_price() -> None:
    """gpt-4o-2024-08-06 is priced as gpt-4o, gpt-4o-mini-2024-07-18 as gpt-4o-mini."""
    table = PriceTable()
    assert table.get("gpt-4o-2024-08-06") == BUILT_IN["gpt-4o"]
    assert table.get("gpt-4o-mini-2024-07-18") == BUILT_IN["gpt-4o-mini"]
    assert table.get("gpt-4omega") is None


def test_the_config_overrides_and_extends_the_table() -> None:
    """A config price replaces the built-in one and adds models the table does not know."""
    table = PriceTable({"gpt-4o": Price(1.0, 1.0), "mock-gpt": Price(1.0, 2.0)})
    assert table.cost("gpt-4o", 1_000_000, 0) == pytest.approx(1.0)
    assert table.cost("mock-gpt", 0, 1_000_000) == pytest.approx(2.0)
    assert table.cost("unknown-model", 10, 10) is None
