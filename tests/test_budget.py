"""Budgets: parsing, windows, and leases drawn from a local and a Redis ledger (a real server)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import redis.asyncio as aioredis

from gateway.budget import Budget, parse_budget, window
from gateway.ledger import LocalLedger, RedisLedger
from gateway.redisconn import RedisConn
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["RedisServer", "redis_prefix", "redis_server", "redis_url"]

NOW = dt.datetime(2026, 12, 31, 22, 0, tzinfo=dt.UTC)


def test_budgets_parse_from_the_cli_form() -> None:
    """`25/month`, `2/day`, `100000/day` and a bare number (lifetime) parse; nonsense does not."""
    assert parse_budget("25/month", "usd") == Budget(25.0, "month", "usd")
    assert parse_budget("100000/day", "tokens") == Budget(100000.0, "day", "tokens")
    assert parse_budget("5", "usd").period == "lifetime"
    for bad in ("x/day", "5/week", "-1/day", "0/day", "inf/day"):
        with pytest.raises(ValueError):
            parse_budget(bad, "usd")
    with pytest.raises(ValueError):
        parse_budget("1.5/day", "tokens")


def test_windows_reset_at_midnight_and_the_first_of_the_month_utc() -> None:
    """The day and month windows of New Year's Eve end at the new year."""
    assert window("day", NOW) == ("d20261231", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert window("month", NOW) == ("m202612", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert window("lifetime", NOW) == ("life", None)


async def test_a_lease_never_exceeds_what_is_left() -> None:
    """$1 at $0.001 a token: 500, then the 500 left of a 600 ask, then nothing until a refund."""
    ledger = LocalLedger(clock=lambda: NOW)
    budgets = [Budget(1.0, "day", "usd")]
    assert (await ledger.draw("k", budgets, 500, 0.001)).tokens == 500
    assert (await ledger.draw("k", budgets, 600, 0.001)).tokens == 500
    refused = await ledger.draw("k", budgets, 100, 0.001)
    assert refused.tokens == 0 and refused.binding == budgets[0]
    assert refused.resets_at == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    await ledger.settle("k", budgets, -100, -0.1)  # a stream gives back an unused lease
    assert (await ledger.draw("k", budgets, 500, 0.001)).tokens == 100


async def test_the_tightest_budget_binds() -> None:
    """With $10/day and 300 tokens/day, the token budget decides."""
    ledger = LocalLedger(clock=lambda: NOW)
    budgets = [Budget(10.0, "day", "usd"), Budget(300, "day", "tokens")]
    assert (await ledger.draw("k", budgets, 200, 0.001)).tokens == 200
    grant = await ledger.draw("k", budgets, 200, 0.001)
    assert grant.tokens == 100 and grant.binding == budgets[1]


async def test_redis_leases_are_exact_across_workers(redis_url: str, redis_prefix: str) -> None:
    """20 concurrent streams on 4 'workers' drawing 50-token leases from a $1 budget at
    $0.0001 a token are granted exactly 10,000 tokens together, never more."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    ledgers = [
        RedisLedger(RedisConn(c, prefix=redis_prefix), timeout=30.0, clock=lambda: NOW)
        for c in clients
    ]
    budgets = [Budget(1.0, "month", "usd")]
    granted: list[int] = []

    async def stream(ledger: RedisLedger) -> None:
        while (grant := await ledger.draw("k", budgets, 50, 0.0001)).tokens:
            granted.append(grant.tokens)

    try:
        await asyncio.gather(*(stream(ledgers[i % 4]) for i in range(20)))
        assert sum(granted) == 10_000
        assert await ledgers[0].spent("k", budgets[0]) == pytest.approx(1.0)
        key = f"{redis_prefix}:{{b:k}}:usd:m202612"
        assert await clients[0].ttl(key) > 0  # the window's counter expires after it ends
    finally:
        for client in clients:
            await client.aclose()
