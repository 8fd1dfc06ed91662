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
from gateway.openai import (
    ParsedRequest,
    Usage,
    estimate_answer_tokens,
    estimate_prompt_tokens,
    usage_in_body,
)
from gateway.redisconn import RedisConn
from gateway.source import EventSource
from gateway.spend import request_cost
from gateway.web import access
from gateway.web.state import API_KEY, CONFIG, LEDGER, PRICES, RECORD, SETTLING, STORE

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


def settle_stream(request: web.Request, spend: KeySpend, source: EventSource) -> None:
    """Settle when the chosen stream ends: the upstream's usage, else what was delivered."""
    record = request[RECORD]

    def ended(done: EventSource) -> None:
        usage = done.usage or Usage(record.prompt_estimate(), done.content_events)
        settle(request, spend, usage)

    source.watch(ended)


def settle_answer(request: web.Request, spend: KeySpend, status: int, body: bytes) -> None:
    """Settle a JSON answer: its reported usage, an estimate without one, nothing on an error."""
    if status >= 400:
        spend.settle_later(0, 0.0)
        return
    usage = usage_in_body(body) or Usage(
        request[RECORD].prompt_estimate(), estimate_answer_tokens(body)
    )
    settle(request, spend, usage)


def settle(request: web.Request, spend: KeySpend, usage: Usage) -> None:
    """Charge ``usage`` at the price of the model that served it (a fallback's, if one did)."""
    record = request[RECORD]
    upstream = access.upstream_model(request.app[CONFIG], record.model, record.trail.served_by)
    cost = request_cost(request.app[PRICES], upstream, usage)
    spend.settle_later(usage.total_tokens, None if cost is None else cost.usd)
