"""Where cache entries live: this worker's memory (aiocache, bounded, LRU) or Redis.

The Redis backend shares the store's connection pool and sits behind a circuit breaker: when Redis
does not answer within ``redis_timeout`` a lookup is a miss and a store is skipped, so no request
waits on a dead Redis.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

import redis.asyncio as aioredis
from aiocache import SimpleMemoryCache
from aiocache.serializers import NullSerializer

from gateway import metrics, trail
from gateway.breaker import BreakerSettings, CircuitBreaker
from gateway.cache.entry import CacheEntry
from gateway.store.redis import REDIS_ERRORS

log = logging.getLogger("gateway.cache")

REDIS_BREAKER = BreakerSettings(failures=3, recovery=5.0, probes=1)


class CacheBackend(Protocol):
    async def get(self, key: str) -> CacheEntry | None: ...

    async def set(self, key: str, entry: CacheEntry, ttl: float) -> bool: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """aiocache's in-memory cache with TTLs, bounded in entries and bytes (least recently used
    entries go first)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._cache = SimpleMemoryCache(serializer=NullSerializer())
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    @property
    def usage(self) -> tuple[int, int]:
        """(entries, bytes) held, expired ones included until they are touched or evicted."""
        return len(self._sizes), self._bytes

    async def get(self, key: str) -> CacheEntry | None:
        entry: CacheEntry | None = await self._cache.get(key)
        if entry is None:
            self._forget(key)
            return None
        self._sizes.move_to_end(key)
        return entry

    async def set(self, key: str, entry: CacheEntry, ttl: float) -> bool:
        size = entry.size
        if size > self._max_bytes:
            return False
        self._forget(key)
        while self._sizes and (
            len(self._sizes) >= self._max_entries or self._bytes + size > self._max_bytes
        ):
            oldest, old_size = self._sizes.popitem(last=False)
            self._bytes -= old_size
            await self._cache.delete(oldest)
            metrics.CACHE_EVICTIONS.inc()
        await self._cache.set(key, entry, ttl=ttl)
        self._sizes[key] = size
        self._bytes += size
        return True

    def _forget(self, key: str) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self._bytes -= size

    async def close(self) -> None:
        await self._cache.close()


class RedisBackend:
    """Entries as JSON strings with a TTL (``P:cache:<scope>:<hash>``)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._timeout = timeout
        self.breaker = CircuitBreaker(REDIS_BREAKER)

    async def get(self, key: str) -> CacheEntry | None:
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(f"{self._prefix}:cache:{key}")
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        return None if raw is None else CacheEntry.loads(raw)

    async def set(self, key: str, entry: CacheEntry, ttl: float) -> bool:
        if not self.breaker.allow():
            return False
        try:
            value = entry.dumps()
        except UnicodeDecodeError:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(
                    f"{self._prefix}:cache:{key}", value, px=max(1, int(ttl * 1000))
                )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self.breaker.success()
        return True

    def _failed(self, exc: BaseException) -> None:
        self.breaker.failure()
        metrics.CACHE_ERRORS.inc()
        trail.warn(
            "cache_fallback",
            "redis",
            "cache: Redis call failed, answered without the cache",
            error=type(exc).__name__,
        )

    async def close(self) -> None:
        return None  # the pool belongs to the store
