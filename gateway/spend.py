"""What a request cost in money: its usage at the price of the model that served it. No I/O.

Spend is priced at the *upstream* model (what the provider bills), from the price table (the
built-in list prices with the config's ``prices:`` on top). A cost is ``exact`` when the upstream
reported the tokens and estimated otherwise. A model without a price has no cost (None), which
the rollups count as ``unknown_cost_requests`` rather than as a free request; a request that used
no tokens (refused, or failed before the upstream produced anything) costs 0 whatever its model.
"""

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
    if usage.prompt_tokens == 0 and usage.completion_tokens == 0:
        return Cost(0.0, usage.exact)
    if upstream_model is None:
        return None
    usd = prices.cost(
        upstream_model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
    )
    return None if usd is None else Cost(usd, usage.exact)


def hedge_cost(prices: PriceTable, upstream_model: str | None, prompt_tokens: int) -> float:
    """What the prompts of cancelled hedges cost (estimated tokens, none cached): they were sent
    whole and paid for, their answers never used. Priced at the model that served the request
    (a hedge to a fallback model's deployment is priced the same); 0 for a model without a price."""
    if upstream_model is None or prompt_tokens <= 0:
        return 0.0
    return prices.cost(upstream_model, prompt_tokens, 0) or 0.0
