"""Sliding windows and concurrency slots: in memory on a fake clock, and in a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from gateway.ratelimit import LocalWindows, RateLimiter, Window
from gateway.redisconn import REDIS_BREAKER, RedisConn
from tests.conftest import free_port
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]

RPM = Window("key_rpm", "key:a", 5, 60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_window_slides_instead_of_resetting_at_a_boundary() -> None:
    """A sliding window frees a slot when its oldest request leaves, not at a fixed boundary."""
    clock = Clock()
    windows = LocalWindows(clock)
    for _ in range(5):
        assert windows.take(RPM, 1).allowed
        clock.now += 10  # one every 10 s: the 5th at +40 s
    refused = windows.take(RPM, 1)  # at +50 s: five in the last minute
    assert not refused.allowed and refused.remaining == 0
    assert 9 <= refused.reset <= 11  # the first one leaves the window at +60 s
    clock.now += 10.5
    assert windows.take(RPM, 1).allowed  # it left: one slot free
    assert not windows.take(RPM, 1).allowed


def test_costs_and_settling() -> None:
    """A take books its cost, and settling with the real usage gives the difference back."""
    clock = Clock()
    windows = LocalWindows(clock)
    tpm = Window("key_tpm", "key:a", 1000, 60.0)
    booked = windows.take(tpm, 600)
    assert booked.allowed and booked.remaining == 400
    assert not windows.take(tpm, 600).allowed  # 1200 would exceed the budget
    windows.adjust(tpm, booked.bucket, -500)  # it used 100 tokens, not 600
    assert windows.take(tpm, 600).allowed


def test_subjects_are_independent_and_bounded() -> None:
    """Each subject has its own window, and memory holds at most max_subjects of them."""
    windows = LocalWindows(Clock(), max_subjects=100)
    for n in range(1000):
        assert windows.take(Window("ip_rpm", f"ip:{n}", 1, 60.0), 1).allowed
    assert len(windows._windows) <= 100


def test_local_concurrency_slots() -> None:
    """In memory, a subject holds at most `limit` concurrency slots until one is released."""
    windows = LocalWindows(Clock())
    assert windows.acquire("c", "k", 2) and windows.acquire("c", "k", 2)
    assert not windows.acquire("c", "k", 2)
    windows.release("c", "k")
    assert windows.acquire("c", "k", 2)


async def test_redis_window_is_exact_under_concurrency(redis_url: str, redis_prefix: str) -> None:
    """Four "workers" race 200 takes for 20 units: exactly 20 win, all decided by Redis.

    The Redis timeout is generous here: this test is about exactness, and on a loaded CI machine
    opening 200 connections at once can take longer than the production default of 1 s (a
    timed-out call falls back to per-worker limits, which is a different test below).
    """
    clients = [
        aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(redis_url))
        for _ in range(4)
    ]
    try:
        await _exact_window(clients, redis_prefix)
    finally:
        for each in clients:
            await each.aclose()


async def _exact_window(clients: list[aioredis.Redis], redis_prefix: str) -> None:
    limiters = [RateLimiter(RedisConn(c, prefix=redis_prefix), timeout=30.0) for c in clients]
    client = clients[0]
    window = Window("key_rpm", "key:x", 20, 60.0)
    verdicts = await asyncio.gather(*(limiters[n % 4].take(window, 1) for n in range(200)))
    assert all(v.shared for v in verdicts)
    assert sum(v.allowed for v in verdicts) == 20
    refused = next(v for v in verdicts if not v.allowed)
    assert refused.remaining == 0 and 55 < refused.reset <= 60
    # Another subject is unaffected; a refund frees units.
    assert (await limiters[0].take(Window("key_rpm", "key:y", 20, 60.0), 1)).allowed
    allowed = next(v for v in verdicts if v.allowed)
    await limiters[0].adjust(allowed, -1)
    assert (await limiters[1].take(window, 1)).allowed
    assert not (await limiters[1].take(window, 1)).allowed
    keys = [k.decode() async for k in client.scan_iter(f"{redis_prefix}:*")]
    assert keys and all("{rl:" in k for k in keys)  # hash-tagged: one slot per subject
    ttls = [await client.pttl(k) for k in keys]
    assert all(0 < ttl <= 61_000 for ttl in ttls)  # nothing lives forever


async def test_redis_concurrency_slots(redis_url: str, redis_prefix: str) -> None:
    """In Redis, ten racing acquires get exactly three leased slots; a release frees one."""
    client = aioredis.Redis.from_url(redis_url)
    limiter = RateLimiter(RedisConn(client, prefix=redis_prefix))
    slots = await asyncio.gather(*(limiter.acquire("c", "key:x", 3) for _ in range(10)))
    held = [s for s in slots if s is not None]
    assert len(held) == 3 and all(s.lease for s in held)
    await limiter.release(held[0])
    assert await limiter.acquire("c", "key:x", 3) is not None
    await client.aclose()


async def test_unreachable_redis_falls_back_to_local_limits_without_waiting() -> None:
    """With Redis unreachable, limits are enforced per worker and the breaker stops the waits."""
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limiter = RateLimiter(RedisConn(client), timeout=0.25)
    window = Window("key_rpm", "key:x", 3, 60.0)
    started = time.monotonic()
    verdicts = [await limiter.take(window, 1) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert not any(v.shared for v in verdicts)
    # The first calls failed; the breaker then skipped Redis for the others.
    assert time.monotonic() - started < 1.5
    assert limiter.breaker.state.name == "OPEN"
    await client.aclose()


async def test_redis_stopped_then_back(
    redis_server: RedisServer | None, redis_url: str, redis_prefix: str
) -> None:
    """Redis stopped costs one bounded wait and a local verdict; once back, it decides again."""
    if redis_server is None:
        pytest.fail("this test needs the suite's own redis-server (unset REDIS_URL)")
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2, socket_connect_timeout=0.2)
    limiter = RateLimiter(RedisConn(client, prefix=redis_prefix), timeout=0.25)
    window = Window("key_rpm", "key:z", 100, 60.0)
    assert (await limiter.take(window, 1)).shared
    redis_server.stop()
    try:
        started = time.monotonic()
        local = await limiter.take(window, 1)
        assert local.allowed and not local.shared
        assert time.monotonic() - started < 0.6  # one bounded wait, never a hang
    finally:
        redis_server.start()
    limiter.breaker._opened_at -= 10  # the recovery time has passed
    assert (await limiter.take(window, 1)).shared
    await client.aclose()


async def test_redis_failures_are_warned_about_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limiter falling back to local limits warns, naming Redis, without a line per request."""
    from gateway import trail

    monkeypatch.setattr(trail, "LIMITER", trail.WarningLimiter(burst=2))
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limiter = RateLimiter(RedisConn(client), timeout=0.25)
    window = Window("key_rpm", "key:w", 100, 60.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(REDIS_BREAKER.failures + 3):
            await limiter.take(window, 1)
    await client.aclose()
    fallbacks = [r for r in caplog.records if r.__dict__.get("event") == "limiter_fallback"]
    assert len(fallbacks) == 2 and fallbacks[0].__dict__["subject"] == "redis"
    assert any("enforcing limits per worker" in r.getMessage() for r in caplog.records)
