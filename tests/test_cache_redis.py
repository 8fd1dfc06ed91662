"""The Redis cache tier against a real redis-server: bounded in entries and bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.cache.backends import RedisBackend
from gateway.cache.entry import CacheEntry
from gateway.redisconn import RedisConn
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the suite's Redis."""
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def entry(size: int) -> CacheEntry:
    return CacheEntry(kind="json", body=b'{"x":"' + b"a" * size + b'"}', created=0.0)


async def test_entries_beyond_the_budget_are_evicted(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Past max_entries the entries closest to expiry go, so the cache's Redis use is bounded."""
    backend = RedisBackend(RedisConn(client, prefix=redis_prefix), timeout=1.0, max_entries=3)
    for index in range(6):
        assert await backend.set(f"k{index}", entry(10), ttl=100 + index)
    names = [k.decode() async for k in client.scan_iter(match=f"{{{redis_prefix}:cache}}:e:*")]
    assert sorted(names) == [backend.entry_key(f"k{i}") for i in (3, 4, 5)]
    assert await backend.get("k0") is None and await backend.get("k5") is not None
    assert await client.zcard(f"{{{redis_prefix}:cache}}:index") == 3


async def test_bytes_beyond_the_budget_are_evicted(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Past max_bytes entries go too, and the byte total stays true to what is stored."""
    backend = RedisBackend(RedisConn(client, prefix=redis_prefix), timeout=1.0, max_bytes=2000)
    for index in range(10):
        assert await backend.set(f"k{index}", entry(400), ttl=100 + index)
    total = int(await client.get(f"{{{redis_prefix}:cache}}:bytes"))
    stored = [
        await client.strlen(k)
        async for k in client.scan_iter(match=f"{{{redis_prefix}:cache}}:e:*")
    ]
    assert total == sum(stored) <= 2000 and len(stored) >= 3
    assert not await backend.set("huge", entry(5000), ttl=100)
