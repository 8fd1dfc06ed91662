"""Model prices and what a request cost. No I/O.

Prices are USD per million tokens, keyed by the *upstream* model name: ``input`` for prompt tokens,
``cached_input`` for prompt tokens the provider served from its prompt cache, ``output`` for
completion tokens. The built-in table holds the providers' published list prices for well-known
models as of :data:`TABLE_DATE`; a ``prices:`` entry in the config overrides or extends it. A dated
model name (``gpt-4o-2024-08-06``) takes the price of its longest listed prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TABLE_DATE = "2025-08"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached prompt tokens cost what others do

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What these tokens cost, in USD."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (prompt_tokens - cached) * self.input
            + cached * cached_rate
            + completion_tokens * self.output
        ) / 1_000_000


BUILT_IN: dict[str, Price] = {
    # OpenAI
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "o3": Price(2.00, 8.00, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    # Anthropic (cached_input: cache reads)
    "claude-opus-4": Price(15.00, 75.00, 1.50),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30),
    "claude-3-7-sonnet": Price(3.00, 15.00, 0.30),
    "claude-3-5-haiku": Price(0.80, 4.00, 0.08),
    # Google (Gemini 2.5 Pro at its price for prompts up to 200k tokens)
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
}


class PriceTable:
    """The built-in prices with the config's on top; looks a model up by name or prefix."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._prices = {**BUILT_IN, **(overrides or {})}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._found: dict[str, Price | None] = {}

    def __contains__(self, model: str) -> bool:
        return self.get(model) is not None

    def get(self, model: str) -> Price | None:
        """The price of ``model``: exact, else its longest listed prefix, else None."""
        if model in self._found:
            return self._found[model]
        price = self._prices.get(model)
        if price is None:
            for name in self._by_length:
                if model.startswith(name) and model[len(name) : len(name) + 1] in ("-", "@", ""):
                    price = self._prices[name]
                    break
        if len(self._found) < 10_000:  # client-chosen names must not grow it without bound
            self._found[model] = price
        return price

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """The cost in USD, or None for a model without a price."""
        price = self.get(model)
        if price is None:
            return None
        return price.cost(prompt_tokens, completion_tokens, cached_tokens)
