"""The three stores behave alike: keys, max-requests, events applied once, queries, outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.budget import parse_budget
from gateway.config import StoreSettings
from gateway.keys import new_key
from gateway.redisconn import connect_redis
from gateway.store import StatsEvent, Store, StoreUnavailable
from gateway.store.postgres import MIGRATIONS, PostgresStore, migrate
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.postgres_server import PostgresServer, fetch, postgres_server, postgres_url
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["postgres_server", "postgres_url", "redis_prefix", "redis_server", "redis_url"]

DAY_TS = 1795305600.0  # 2026-11-22 00:00 UTC


def redis_store(url: str, prefix: str, *, timeout: float) -> RedisStore:
    """A Redis store on a connection of its own, as the CLI opens one."""
    return RedisStore(
        connect_redis(StoreSettings(redis_url=url, redis_prefix=prefix, timeout=timeout))
    )


@pytest.fixture(params=["sqlite", "redis", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = SQLiteStore(tmp_path / "store.sqlite3")
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        opened = redis_store(url, prefix, timeout=1.0)
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_url"), timeout=2.0)
    await opened.open()
    yield opened
    await opened.close()


def event(
    key: str = "key_a", model: str = "m", ts: float = DAY_TS + 1000, *,
    prompt: int = 0, completion: int = 0, termination: str = "completed",
    exact: bool = True, cache_hit: bool = False, cost: float | None = None,
    hedge_cost: float = 0.0,
) -> StatsEvent:  # fmt: skip
    return StatsEvent(
        request_id="r", key_id=key, model=model, deployment="d", route="/v1/chat/completions",
        status=200, prompt_tokens=prompt, completion_tokens=completion, tokens_exact=exact,
        cache_hit=cache_hit, latency_ms=1.0, ttfb_ms=None, termination=termination, ts=ts,
        cost_usd=cost, cost_exact=exact and cost is not None, hedge_cost_usd=hedge_cost,
    )  # fmt: skip


async def test_keys_round_trip(store: Store) -> None:
    """A created key is found by hash and id (budgets and all), listed, counted and revoked."""
    assert await store.count_keys() == 0
    budgets = (parse_budget("25/month", "usd"), parse_budget("100000/day", "tokens"))
    secret, record = new_key(
        "alice", models=("m1", "m2"), rpm=10, max_requests=5, expires_at=2e9, budgets=budgets
    )
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


async def test_sqlite_file_from_before_budgets_gains_the_column(tmp_path: Path) -> None:
    """A store file made before key budgets existed opens, keeps its keys, and stores budgets."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL"
            " UNIQUE, prefix TEXT NOT NULL, created_at REAL NOT NULL, models TEXT, rpm INTEGER,"
            " tpm INTEGER, max_requests INTEGER, expires_at REAL, revoked_at REAL)"
        )
        db.execute("INSERT INTO keys (id, name, key_hash, prefix, created_at) "
                   "VALUES ('key_old', 'old', 'h', 'sk-gw-abc', 1.0)")  # fmt: skip
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.key_by_id("key_old")
        assert old is not None and old.budgets == ()
        _, record = new_key("new", budgets=(parse_budget("2/day", "usd"),))
        await store.create_key(record)
        assert await store.key_by_id(record.id) == record
    finally:
        await store.close()


async def test_take_request_is_exact_under_concurrency(store: Store) -> None:
    """50 concurrent takes against a limit of 20 grant exactly 20."""
    results = await asyncio.gather(*(store.take_request("key_x", 20) for _ in range(50)))
    assert sum(results) == 20
    assert not await store.take_request("key_x", 20)


async def test_events_apply_once(store: Store) -> None:
    """Each event id adds its counts once: a batch again, or regrouped with new ones, adds only
    the new events."""
    batch = [event(prompt=4, completion=5), event(prompt=6, termination="upstream_error"),
             event(model="m2", cache_hit=True, exact=False)]  # fmt: skip
    assert await store.record_events(batch) == 3
    assert await store.record_events(batch) == 0
    assert await store.record_events([batch[1], event(ts=DAY_TS + 2000)]) == 1
    counters = await store.key_counters("key_a")
    assert (counters.requests, counters.prompt_tokens, counters.completion_tokens) == (4, 10, 5)
    assert (counters.cache_hits, counters.errors, counters.last_used) == (1, 1, DAY_TS + 2000)
    rows = {r.model: r for r in await store.usage()}
    assert rows["m2"].estimated_requests == 1 and rows["m"].requests == 3
    assert (await store.key_counters("key_none")).requests == 0


async def test_usage_filters_and_order(store: Store) -> None:
    """usage() filters by key, model and first day, ordered by day, key, model."""
    await store.record_events([event(ts=DAY_TS - 10), event(key="key_b"),
                               event(key="key_b", completion=7), event(model="m0")])  # fmt: skip
    rows = await store.usage()
    assert [(r.day, r.key_id, r.model) for r in rows] == [
        ("2026-11-21", "key_a", "m"), ("2026-11-22", "key_a", "m0"), ("2026-11-22", "key_b", "m")
    ]  # fmt: skip
    assert [r.requests for r in await store.usage(key_id="key_b")] == [2]
    assert [r.day for r in await store.usage(model="m")] == ["2026-11-21", "2026-11-22"]
    assert len(await store.usage(since="2026-11-22")) == 2


async def test_costs_roll_up_per_key_model_and_day_once(store: Store) -> None:
    """Costs add up per (key, model, day) in nano-USD, once per event id: the estimated part,
    requests of unknown cost and hedge cost each in their own counter."""
    batch = [
        event(prompt=10, completion=5, cost=0.000_125),
        event(prompt=3, completion=2, cost=0.000_031_5, exact=False),
        event(prompt=4, completion=4),  # a model without a price: cost unknown
        event(cache_hit=True, cost=0.0, hedge_cost=0.000_01),
        event(key="key_b", cost=1.5),
        event(ts=DAY_TS + 86400, cost=0.25),
    ]
    assert await store.record_events(batch) == 6
    assert await store.record_events(batch[:3]) == 0
    rows = {(r.key_id, r.day): r for r in await store.usage()}
    first = rows[("key_a", "2026-11-22")]
    assert first.cost_nanousd == 125_000 + 31_500
    assert (first.estimated_cost_nanousd, first.unknown_cost_requests) == (31_500, 1)
    assert first.hedge_cost_nanousd == 10_000
    view = first.view()
    assert view["cost_usd"] == pytest.approx(0.000_156_5)
    assert view["estimated_cost_usd"] == pytest.approx(0.000_031_5)
    assert view["hedge_cost_usd"] == pytest.approx(0.000_01)
    assert rows[("key_b", "2026-11-22")].view()["cost_usd"] == 1.5
    assert rows[("key_a", "2026-11-23")].cost_nanousd == 250_000_000


async def test_sqlite_file_of_an_older_gateway_gets_the_cost_columns(tmp_path: Path) -> None:
    """A store file made before costs existed opens (columns added), keeps its rows (at cost
    0) and takes new events with costs."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SQLITE_SCHEMA)
    db.execute("INSERT INTO usage_daily (key_id, model, day, requests) VALUES "
               "('key_a', 'm', '2026-11-22', 7)")  # fmt: skip
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    assert await store.record_events([event(cost=0.5)]) == 1
    [row] = await store.usage()
    assert (row.requests, row.cost_nanousd, row.unknown_cost_requests) == (8, 500_000_000, 0)
    await store.close()


OLD_SQLITE_SCHEMA = """
CREATE TABLE usage_daily (
    key_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, estimated_requests INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model, day)
);
CREATE TABLE usage_events (
    event_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
    deployment TEXT, route TEXT NOT NULL, status INTEGER NOT NULL, termination TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    tokens_exact INTEGER NOT NULL, cache_hit INTEGER NOT NULL, latency_ms REAL NOT NULL,
    ttfb_ms REAL, ts REAL NOT NULL
);
"""


def _apply_many(path: str, worker: int) -> None:
    async def run() -> None:
        store = SQLiteStore(path)
        await store.open()
        for _ in range(200):
            await store.record_events([event(prompt=3)])
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
    store = redis_store(redis_url, redis_prefix, timeout=0.5)
    await store.open()
    redis_server.stop()
    for call in (store.count_keys(), store.record_events([event()]),
                 store.key_by_hash("x"), store.take_request("k", 1)):  # fmt: skip
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call
        assert time.monotonic() - started < 3
    redis_server.start()
    assert await store.record_events([event()]) == 1
    assert (await store.key_counters("key_a")).requests == 1
    await store.close()


async def test_postgres_keeps_one_row_per_event(postgres_url: str) -> None:
    """PostgreSQL keeps each event as a row of its own: the store of record."""
    store = PostgresStore(postgres_url)
    await store.open()
    events = [event(completion=n) for n in range(5)]
    assert await store.record_events(events + events[:2]) == 5
    rows = await fetch(postgres_url, "SELECT event_id, completion_tokens FROM usage_events")
    assert sorted((r[0], r[1]) for r in rows) == sorted((e.event_id, e.completion_tokens)
                                                        for e in events)  # fmt: skip
    await store.close()


async def test_postgres_database_of_an_older_gateway_is_migrated_to_costs(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at schema 2 (before costs) gets migration 3 at open: its rollups and events
    keep loading (cost 0, unknown for the old events) and new events carry their cost."""
    import asyncpg

    from gateway.store import postgres

    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=1)
    with monkeypatch.context() as patch:
        patch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:2])
        assert await migrate(pool) == [1, 2]
    await pool.execute("INSERT INTO usage_daily (key_id, model, day, requests) "
                       "VALUES ('key_a', 'm', '2026-11-22', 7)")  # fmt: skip
    await pool.close()
    store = PostgresStore(postgres_url)
    await store.open()
    assert await store.record_events([event(cost=0.5, hedge_cost=0.25)]) == 1
    [row] = await store.usage()
    assert (row.requests, row.cost_nanousd, row.hedge_cost_nanousd) == (8, 5 * 10**8, 25 * 10**7)
    rows = await fetch(
        postgres_url, "SELECT cost_usd, cost_exact, hedge_cost_usd FROM usage_events"
    )
    assert [tuple(r) for r in rows] == [(0.5, True, 0.25)]
    await store.close()


async def test_postgres_migrations_once_under_concurrent_starts(postgres_url: str) -> None:
    """Eight stores opening one new database at once apply each migration exactly once."""
    stores = [PostgresStore(postgres_url) for _ in range(8)]
    await asyncio.gather(*(s.open() for s in stores))
    versions = await fetch(postgres_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert [r[0] for r in versions] == [version for version, _ in MIGRATIONS]
    import asyncpg

    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=1)
    assert await migrate(pool) == []  # nothing left to apply
    await pool.close()
    for s in stores:
        await s.close()


async def test_postgres_outage_fails_fast_then_recovers(
    postgres_server: PostgresServer | None, postgres_url: str
) -> None:
    """With PostgreSQL stopped every call raises StoreUnavailable quickly; after a restart the
    same store object works again."""
    if postgres_server is None:
        pytest.fail("this test needs the suite's own PostgreSQL (unset DATABASE_URL)")
    store = PostgresStore(postgres_url, timeout=0.5)
    await store.open()
    postgres_server.stop()
    for call in (store.count_keys(), store.record_events([event()]), store.key_by_hash("x")):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call
        assert time.monotonic() - started < 3
    postgres_server.start()
    deadline = time.monotonic() + 10
    while True:  # the pool notices the restart on its next use of each connection
        try:
            assert await store.record_events([event()]) == 1
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert (await store.key_counters("key_a")).requests == 1
    await store.close()
