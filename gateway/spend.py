"""What a request cost in money: its usage at the price of the model that served it. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.openai import Usage
from gateway.prices import PriceTable


@dataclass(frozen=True, slots=True)
class Cost:
    """USD, ``exact`` when the upstream reported the tokens (else they were estimated)."""

    usd: float
    exact: bool


def request_cost(prices: PriceTable, upstream_model: str | None, usage: Usage) -> Cost | None:
    """The cost of ``usage`` on ``upstream_model``; None when the model has no price."""
    if upstream_model is None:
        return None
    usd = prices.cost(
        upstream_model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
    )
    return None if usd is None else Cost(usd, usage.exact)


def usd_per_output_token(prices: PriceTable, upstream_model: str | None) -> float:
    """An output token's price (what a budget lease is drawn at); 0 for a model without one."""
    price = prices.get(upstream_model) if upstream_model else None
    return 0.0 if price is None else price.output / 1_000_000
