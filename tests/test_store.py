"""Both stores behave alike: keys, max-requests, idempotent usage batches, queries, outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.keys import new_key
from gateway.store import Store, StoreUnavailable, UsageDelta
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = SQLiteStore(tmp_path / "store.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        opened = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"), timeout=1.0)
    await opened.open()
    yield opened
    await opened.close()


def delta(
    key: str = "key_a", model: str = "m", day: str = "2026-11-22", **counts: int
) -> UsageDelta:
    return UsageDelta(key, model, day, last_used=1000.0, **counts)


async def test_keys_round_trip(store: Store) -> None:
    """A created key is found by hash and id, listed, counted and revoked."""
    assert await store.count_keys() == 0
    secret, record = new_key("alice", models=("m1", "m2"), rpm=10, max_requests=5, expires_at=2e9)
    await store.create_key(record)
    assert await store.key_by_hash(record.key_hash) == record
    assert await store.key_by_id(record.id) == record
    assert await store.key_by_hash("0" * 64) is None
    assert [r.id for r in await store.list_keys()] == [record.id]
    assert await store.count_keys() == 1
    assert await store.revoke_key(record.id, 1234.5)
    revoked = await store.key_by_id(record.id)
    assert revoked is not None and revoked.revoked_at == 1234.5
    assert not await store.revoke_key("key_missing", 1.0)
    assert secret not in repr(await store.list_keys())


async def test_take_request_is_exact_under_concurrency(store: Store) -> None:
    """50 concurrent takes against a limit of 20 grant exactly 20."""
    results = await asyncio.gather(*(store.take_request("key_x", 20) for _ in range(50)))
    assert sum(results) == 20
    assert not await store.take_request("key_x", 20)


async def test_batches_apply_once(store: Store) -> None:
    """A batch adds its counts once; the same batch id again changes nothing."""
    batch = [delta(requests=2, prompt_tokens=10, completion_tokens=5, errors=1),
             delta(model="m2", requests=1, cache_hits=1)]  # fmt: skip
    assert await store.apply_usage("b1", batch)
    assert not await store.apply_usage("b1", batch)
    counters = await store.key_counters("key_a")
    assert (counters.requests, counters.prompt_tokens, counters.completion_tokens) == (3, 10, 5)
    assert (counters.cache_hits, counters.errors, counters.last_used) == (1, 1, 1000.0)
    assert (await store.key_counters("key_none")).requests == 0


async def test_usage_filters_and_order(store: Store) -> None:
    """usage() filters by key, model and first day, ordered by day, key, model."""
    await store.apply_usage("b1", [delta(day="2026-11-21", requests=1),
                                   delta(key="key_b", requests=2, completion_tokens=7),
                                   delta(model="m0", requests=3)])  # fmt: skip
    rows = await store.usage()
    assert [(r.day, r.key_id, r.model) for r in rows] == [
        ("2026-11-21", "key_a", "m"), ("2026-11-22", "key_a", "m0"), ("2026-11-22", "key_b", "m")
    ]  # fmt: skip
    assert [r.requests for r in await store.usage(key_id="key_b")] == [2]
    assert [r.day for r in await store.usage(model="m")] == ["2026-11-21", "2026-11-22"]
    assert len(await store.usage(since="2026-11-22")) == 2


def _apply_many(path: str, worker: int) -> None:
    async def run() -> None:
        store = SQLiteStore(path)
        await store.open()
        for i in range(200):
            await store.apply_usage(f"w{worker}-{i}", [delta(requests=1, prompt_tokens=3)])
        await store.close()

    asyncio.run(run())


async def test_sqlite_is_exact_with_two_processes(tmp_path: Path) -> None:
    """Two processes writing the same SQLite file at once lose nothing."""
    path = str(tmp_path / "shared.sqlite3")
    first = SQLiteStore(path)
    await first.open()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_apply_many, args=(path, n)) for n in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
    counters = await first.key_counters("key_a")
    assert (counters.requests, counters.prompt_tokens) == (400, 1200)
    await first.close()


async def test_redis_outage_fails_fast_then_recovers(
    redis_server: RedisServer | None, redis_url: str, redis_prefix: str
) -> None:
    """With Redis stopped every call raises StoreUnavailable quickly; after a restart it works."""
    if redis_server is None:
        pytest.fail("this test needs the suite's own redis-server (unset REDIS_URL)")
    store = RedisStore(redis_url, prefix=redis_prefix, timeout=0.5)
    await store.open()
    redis_server.stop()
    for call in (store.count_keys(), store.apply_usage("b", [delta(requests=1)]),
                 store.key_by_hash("x"), store.take_request("k", 1)):  # fmt: skip
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call
        assert time.monotonic() - started < 3
    redis_server.start()
    assert await store.apply_usage("b", [delta(requests=1)])
    assert (await store.key_counters("key_a")).requests == 1
    await store.close()
