"""The one Redis seam: the worker's connection, what a Redis call can fail with, guarded calls.

Every Redis user (the store, the rate limiter, the cache, the resumable event logs, the usage bus)
takes a :class:`RedisConn` rather than a client. It connects from the store settings
(``store.redis_url``, ``redis_prefix``, ``timeout``), and each user draws a :class:`Guard` of its
own from it: a call through the guard is bounded by a timeout, translated into
:class:`RedisUnavailable` when it fails, counted in ``llm_gateway_redis_failures_total{user}``
and, for a user with a fallback (limiter, cache), kept behind a circuit breaker so a dead Redis
costs one bounded wait, not one per request.

The redis-py errors stay in this module: the users catch :class:`RedisUnavailable` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import metrics
from gateway.breaker import BreakerSettings, BreakerState, CircuitBreaker
from gateway.config import StoreSettings

T = TypeVar("T")

# What a Redis call can fail with: the client's errors, the socket's, and our own time bound.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
MAX_CONNECTIONS = 32  # per worker, shared by the store, the key cache, limits, cache and streams
# A guarded call without a timeout of its own gets the store's timeout plus this: the pool may
# wait ``timeout`` for a connection, so the client's own error gets the chance to come first.
CALL_SLACK = 0.5
# The breaker of a user that has somewhere else to go (local limits, a cache miss).
REDIS_BREAKER = BreakerSettings(failures=3, recovery=5.0, probes=1)


class RedisUnavailable(Exception):
    """A Redis call failed or did not answer in time; the cause is chained."""


class RedisConn:
    """The worker's Redis: one bounded pool, its key prefix, and the store's timeout."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "llmgw",
        timeout: float = 2.0,
        url: str | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self._url = url  # for a blocking reader's own connection; never logged
        self._closed = False

    def guard(
        self,
        user: str,
        *,
        timeout: float | None = None,
        breaker: BreakerSettings | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> Guard:
        """Guarded calls for one user (a closed set of names: they label the failure metric).

        ``timeout`` defaults to the store's timeout plus :data:`CALL_SLACK`; ``breaker`` gives the
        user a circuit breaker of its own; ``on_failure`` is the user's own reaction to a failed
        call (its metric, its warning).
        """
        bound = self.timeout + CALL_SLACK if timeout is None else timeout
        tripper = None if breaker is None else CircuitBreaker(breaker, on_change=on_change)
        return Guard(user, timeout=bound, breaker=tripper, on_failure=on_failure)

    def blocking_reader(self) -> RedisConn:
        """A connection of its own without a socket timeout, for ``XREADGROUP BLOCK``: a blocking
        read outlives redis-py's socket timeout (PITFALLS.md), so each call is bounded by its
        guard instead. The caller closes it."""
        if self._url is None:
            raise ValueError("a blocking reader needs the Redis URL (connect with connect_redis)")
        client = aioredis.Redis.from_url(
            self._url, decode_responses=True, socket_connect_timeout=self.timeout,
            max_connections=2,
        )  # fmt: skip
        return RedisConn(client, prefix=self.prefix, timeout=self.timeout, url=self._url)

    async def aclose(self) -> None:
        """Close the pool (once: the store and the app may both ask)."""
        if not self._closed:
            self._closed = True
            await self.client.aclose()


class Guard:
    """One user's calls: bounded, translated, counted, and with a breaker when it has one."""

    __slots__ = ("_failed", "_on_failure", "breaker", "timeout", "user")

    def __init__(
        self,
        user: str,
        *,
        timeout: float,
        breaker: CircuitBreaker | None,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self.user = user
        self.timeout = timeout
        self.breaker = breaker
        self._on_failure = on_failure
        self._failed = metrics.REDIS_FAILURES.labels(user)  # the series exists from the start

    def allow(self) -> bool:
        """Whether to try Redis now (False while the breaker is open: use the fallback)."""
        return self.breaker is None or self.breaker.allow()

    async def call(self, call: Awaitable[T], *, extra: float = 0.0) -> T:
        """Await one Redis call within the timeout (plus ``extra``: a blocking read's block)."""
        try:
            async with asyncio.timeout(self.timeout + extra):
                result = await call
        except REDIS_ERRORS as exc:
            self.failed(exc)
            raise RedisUnavailable(f"Redis ({self.user}): {type(exc).__name__}: {exc}") from exc
        if self.breaker is not None:
            self.breaker.success()
        return result

    def failed(self, exc: BaseException) -> None:
        """Count a failure, tell the breaker and the user."""
        self._failed.inc()
        if self.breaker is not None:
            self.breaker.failure()
        if self._on_failure is not None:
            self._on_failure(exc)


def connect_redis(settings: StoreSettings) -> RedisConn:
    """The worker's Redis pool from the store settings (``store.redis_url`` must be set)."""
    if not settings.redis_url:
        raise ValueError("connect_redis needs store.redis_url")
    timeout = settings.timeout
    # Bounded: a burst of requests waits for one of the pooled connections (within the
    # timeout) instead of opening a connection each.
    pool: Any = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        decode_responses=True,
        health_check_interval=30,
    )
    client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    return RedisConn(client, prefix=settings.redis_prefix, timeout=timeout, url=settings.redis_url)
