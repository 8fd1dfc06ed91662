"""Where cache entries live: this worker's memory (aiocache, bounded, LRU) or Redis.

The Redis backend shares the worker's Redis connection and sits behind the seam's circuit breaker:
when Redis does not answer within ``redis_timeout`` a lookup is a miss and a store is skipped, so
no request waits on a dead Redis.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Protocol

from aiocache import SimpleMemoryCache
from aiocache.serializers import NullSerializer

from gateway import metrics, trail
from gateway.cache.entry import CacheEntry
from gateway.redisconn import REDIS_BREAKER, RedisConn, RedisUnavailable

log = logging.getLogger("gateway.cache")


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


# One script per store, atomic: write the entry, index it by expiry with its size, forget index
# entries that expired, then evict the entries closest to expiry until the budget holds.
_STORE_SCRIPT = """
local entry, index, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, ttl_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_entries, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local size = string.len(ARGV[1])
local old = tonumber(redis.call('HGET', sizes, entry) or '0')
redis.call('SET', entry, ARGV[1], 'PX', ttl_ms)
redis.call('ZADD', index, now + ttl_ms, entry)
redis.call('HSET', sizes, entry, size)
local bytes = redis.call('INCRBY', total, size - old)
local function drop(members)
  for _, member in ipairs(members) do
    bytes = redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, member) or '0'))
    redis.call('HDEL', sizes, member)
    redis.call('ZREM', index, member)
    redis.call('UNLINK', member)
  end
  return #members
end
drop(redis.call('ZRANGEBYSCORE', index, '-inf', now))
local evicted = 0
local over = redis.call('ZCARD', index) - max_entries
if over > 0 then evicted = evicted + drop(redis.call('ZRANGE', index, 0, over - 1)) end
while bytes > max_bytes and redis.call('ZCARD', index) > 0 do
  evicted = evicted + drop(redis.call('ZRANGE', index, 0, 0))
end
return evicted
"""


class RedisBackend:
    """Entries as JSON strings with a TTL, bounded in entries and bytes like the memory tier.

    Every key of the cache is under ``P:cache`` with one hash tag (``{P:cache}:e:<scope>:<hash>``,
    an index sorted by expiry, the sizes and the byte total), so the store script is atomic on
    Redis Cluster too. Beyond ``max_entries`` or ``max_bytes`` the entries closest to expiry go
    first: the cache can never take the memory the limiter, keys and stats need.
    """

    def __init__(
        self,
        redis: RedisConn,
        *,
        timeout: float,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._redis = redis.client
        self._root = "{" + redis.prefix + ":cache}"
        self._keys = [f"{self._root}:{name}" for name in ("index", "sizes", "bytes")]
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._store = redis.client.register_script(_STORE_SCRIPT)
        self._guard = redis.guard(
            "cache", timeout=timeout, breaker=REDIS_BREAKER, on_failure=self._failed
        )
        self.breaker = self._guard.breaker

    def entry_key(self, key: str) -> str:
        """The Redis key of one entry."""
        return f"{self._root}:e:{key}"

    async def get(self, key: str) -> CacheEntry | None:
        if not self._guard.allow():
            return None
        try:
            raw = await self._guard.call(self._redis.get(self.entry_key(key)))
        except RedisUnavailable:
            return None  # counted and warned about by the guard: a miss
        return None if raw is None else CacheEntry.loads(raw)

    async def set(self, key: str, entry: CacheEntry, ttl: float) -> bool:
        if not self._guard.allow():
            return False
        try:
            value = entry.dumps()
        except UnicodeDecodeError:
            return False
        if len(value) > self._max_bytes:
            return False
        ttl_ms = max(1, int(ttl * 1000))
        now_ms = int(time.time() * 1000)
        try:
            evicted = await self._guard.call(
                self._store(
                    keys=[self.entry_key(key), *self._keys],
                    args=[value, now_ms, ttl_ms, self._max_entries, self._max_bytes],
                )
            )
        except RedisUnavailable:
            return False  # counted and warned about by the guard: not stored
        if evicted:
            metrics.CACHE_EVICTIONS.inc(int(evicted))
        return True

    def _failed(self, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.inc()
        trail.warn(
            "cache_fallback",
            "redis",
            "cache: Redis call failed, answered without the cache",
            error=type(exc).__name__,
        )

    async def close(self) -> None:
        return None  # the connection belongs to the app
