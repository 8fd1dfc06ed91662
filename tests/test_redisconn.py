"""The Redis seam: one connection from the store settings, guarded calls that are bounded,
translated, counted per user, and behind a breaker for users with a fallback."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from gateway import metrics
from gateway.breaker import BreakerState
from gateway.config import StoreSettings
from gateway.redisconn import (
    REDIS_BREAKER,
    REDIS_ERRORS,
    RedisConn,
    RedisUnavailable,
    connect_redis,
)
from tests.conftest import free_port
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]


def unreachable() -> RedisConn:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    return RedisConn(client, timeout=0.25)


def failures(user: str) -> float:
    return metrics.REDIS_FAILURES.labels(user)._value.get()


async def test_a_failed_call_is_translated_and_counted_for_its_user() -> None:
    """A refused connection surfaces as RedisUnavailable, counted under the guard's user."""
    conn = unreachable()
    guard = conn.guard("store")
    before = failures("store")
    with pytest.raises(RedisUnavailable) as raised:
        await guard.call(conn.client.ping())
    assert isinstance(raised.value.__cause__, REDIS_ERRORS)
    assert failures("store") == before + 1
    await conn.aclose()


async def test_a_call_is_bounded_by_its_timeout() -> None:
    """A call that does not answer ends at the guard's timeout, not the client's."""
    conn = unreachable()
    guard = conn.guard("cache", timeout=0.1)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        await guard.call(asyncio.sleep(10))
    assert time.monotonic() - started < 1
    await conn.aclose()


async def test_the_breaker_opens_after_repeated_failures_and_tells_the_user() -> None:
    """With a breaker, repeated failures open it (Redis is then skipped); the user's hooks run."""
    conn = unreachable()
    seen: list[BaseException] = []
    states: list[BreakerState] = []
    guard = conn.guard(
        "limiter", timeout=0.25, breaker=REDIS_BREAKER, on_failure=seen.append,
        on_change=states.append,
    )  # fmt: skip
    while guard.allow():
        with pytest.raises(RedisUnavailable):
            await guard.call(conn.client.ping())
    assert len(seen) == REDIS_BREAKER.failures and states == [BreakerState.OPEN]
    assert guard.breaker is not None and guard.breaker.state is BreakerState.OPEN
    await conn.aclose()


async def test_connect_from_the_store_settings(redis_url: str, redis_prefix: str) -> None:
    """connect_redis takes the URL, prefix and timeout from the store settings; a blocking
    reader is a connection of its own; closing twice is harmless."""
    conn = connect_redis(StoreSettings(redis_url=redis_url, redis_prefix=redis_prefix, timeout=1))
    assert conn.prefix == redis_prefix and conn.timeout == 1
    guard = conn.guard("streams")
    assert guard.timeout > conn.timeout  # the store's timeout plus the slack
    assert await guard.call(conn.client.ping())
    reader = conn.blocking_reader()
    assert reader.client is not conn.client and await reader.guard("bus").call(reader.client.ping())
    await reader.aclose()
    await conn.aclose()
    await conn.aclose()


def test_a_blocking_reader_needs_the_url() -> None:
    """A connection built from a bare client cannot open a reader of its own."""
    with pytest.raises(ValueError, match="URL"):
        RedisConn(aioredis.Redis()).blocking_reader()
