"""Budgets in the request pipeline: which ledger, and a request's spend from admission to settling.

Only keys that carry budgets pay for this: every other request skips it with one attribute test.
With Redis configured the ledger is Redis (exact across workers and instances); without it each
worker keeps its own, so ``--workers N`` on the embedded store lets a key spend up to N times its
budget (the README says so).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.background import BackgroundTasks
from gateway.budget import Budget
from gateway.config import Config, ModelRoute
from gateway.guard import MAX_SETTLING, BudgetGuard, KeySpend
from gateway.ledger import LocalLedger, RedisLedger, stored_spend
from gateway.openai import ParsedRequest, estimate_prompt_tokens
from gateway.redisconn import RedisConn
from gateway.source import EventSource
from gateway.stats import StatsEvent
from gateway.web.accounting import RequestRecord
from gateway.web.state import API_KEY, CONFIG, LEDGER, PRICES, SETTLING, STORE

SETTLE_SECONDS = 5.0  # at shutdown, settlements under way get this long


def install(app: web.Application, config: Config, redis: RedisConn | None) -> None:
    """The ledger: Redis when configured, else this worker's memory, started from the store."""
    store = app[STORE]

    async def seed(key_id: str, budget: Budget) -> float:
        return await stored_spend(store, key_id, budget)

    app[LEDGER] = (
        RedisLedger(redis, timeout=config.limits.redis_timeout)
        if redis is not None
        else LocalLedger(seed=seed)
    )
    app[SETTLING] = BackgroundTasks(MAX_SETTLING)


async def settle_at_shutdown(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context, inside the store's: settlements under way finish before it closes."""
    yield
    await app[SETTLING].wait(SETTLE_SECONDS)


def key_spend(request: web.Request, route: ModelRoute, parsed: ParsedRequest) -> KeySpend | None:
    """The request's account with its key's budgets; None when the key has none."""
    key = request.get(API_KEY)
    if key is None or not key.budgets:
        return None
    app = request.app
    price = app[PRICES].get(route.upstream_name(parsed.model))
    return KeySpend(
        app[LEDGER],
        key_id=key.id,
        budgets=key.budgets,
        input_usd_per_token=0.0 if price is None else price.input / 1_000_000,
        output_usd_per_token=0.0 if price is None else price.output / 1_000_000,
        lease_tokens=app[CONFIG].limits.budget_lease_tokens,
        settling=app[SETTLING],
    )


async def admit(spend: KeySpend, parsed: ParsedRequest) -> int:
    """Draw the prompt and the first lease (429 budget_exceeded when they do not fit)."""
    return await spend.admit(estimate_prompt_tokens(parsed.body))


def guard(spend: KeySpend, source: EventSource, granted: int) -> None:
    """Keep a stream inside its leases from its very first event (each attempt of a request
    gets one; the router cancels the attempts it does not choose before they deliver)."""
    source.guard(BudgetGuard(source, spend, granted=granted))


def settle_with(record: RequestRecord, spend: KeySpend) -> None:
    """Settle when the request's stats event is made, with its tokens and cost: the figures the
    store keeps (a request that failed or delivered nothing gives everything back)."""

    def settle(event: StatsEvent) -> None:
        spend.settle_later(event.prompt_tokens + event.completion_tokens, event.cost_usd)

    record.finishers.append(settle)
