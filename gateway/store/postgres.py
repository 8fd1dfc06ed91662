"""The PostgreSQL store: the store of record for keys and usage when several instances share them.

asyncpg with a bounded pool (``pool_size`` connections per worker); every call is bounded by
``timeout`` and any failure to reach the server is StoreUnavailable, never a hang. Every stats event
is kept as one row of ``usage_events`` (its id is the primary key, so a redelivered event is a
no-op) and added to the daily and lifetime rollups in the same transaction.

The schema is versioned (``schema_migrations``): at start-up each worker takes a transaction-level
advisory lock, applies the migrations it does not find, and releases the lock by committing, so
several instances starting at once apply each migration exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from gateway.store.base import (
    KEY_COLUMNS,
    USAGE_COUNTERS,
    KeyCounters,
    KeyRecord,
    StatsEvent,
    StoreUnavailable,
    UsageRow,
    aggregate,
    key_from_row,
    key_row,
)

DEFAULT_POOL_SIZE = 8
# After a failed connect, calls fail at once for this long instead of each waiting to connect.
CONNECT_RETRY_SECONDS = 1.0
# Any 64-bit number of our own: serialises migrations across every process sharing the database.
MIGRATION_LOCK = 0x6C6C6D6777  # "llmgw"

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, models TEXT,
            rpm INTEGER, tpm INTEGER, max_requests INTEGER, expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION
        );
        CREATE TABLE key_counters (
            key_id TEXT PRIMARY KEY, requests BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0, completion_tokens BIGINT NOT NULL DEFAULT 0,
            cache_hits BIGINT NOT NULL DEFAULT 0, errors BIGINT NOT NULL DEFAULT 0,
            last_used DOUBLE PRECISION, taken_requests BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE usage_daily (
            key_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0, prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            estimated_requests BIGINT NOT NULL DEFAULT 0, cache_hits BIGINT NOT NULL DEFAULT 0,
            errors BIGINT NOT NULL DEFAULT 0, last_used DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, model, day)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE usage_events (
            event_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, key_id TEXT NOT NULL,
            model TEXT NOT NULL, deployment TEXT, route TEXT NOT NULL, status INTEGER NOT NULL,
            termination TEXT NOT NULL, prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL, tokens_exact BOOLEAN NOT NULL,
            cache_hit BOOLEAN NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
            ttfb_ms DOUBLE PRECISION, ts DOUBLE PRECISION NOT NULL,
            recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX usage_events_key_ts ON usage_events (key_id, ts);
        """,
    ),
    (3, "ALTER TABLE keys ADD COLUMN budgets TEXT;"),
    (
        4,
        """
        ALTER TABLE usage_daily
            ADD COLUMN cost_nanousd BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN estimated_cost_nanousd BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN unknown_cost_requests BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN hedge_cost_nanousd BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE usage_events
            ADD COLUMN cost_usd DOUBLE PRECISION,
            ADD COLUMN cost_exact BOOLEAN NOT NULL DEFAULT false,
            ADD COLUMN hedge_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
        """,
    ),
)

_EVENT_COLUMNS = (
    ("event_id", "text"), ("request_id", "text"), ("key_id", "text"), ("model", "text"),
    ("deployment", "text"), ("route", "text"), ("status", "int"), ("termination", "text"),
    ("prompt_tokens", "bigint"), ("completion_tokens", "bigint"), ("tokens_exact", "bool"),
    ("cache_hit", "bool"), ("latency_ms", "float8"), ("ttfb_ms", "float8"), ("ts", "float8"),
    ("cost_usd", "float8"), ("cost_exact", "bool"), ("hedge_cost_usd", "float8"),
)  # fmt: skip
# Every event in one statement; RETURNING names the ids that were new.
_ARRAYS = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(_EVENT_COLUMNS, 1))
_INSERT_EVENTS = (
    f"INSERT INTO usage_events ({', '.join(c for c, _ in _EVENT_COLUMNS)}) "
    f"SELECT * FROM unnest({_ARRAYS}) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_UPSERT_DAILY = (
    f"INSERT INTO usage_daily (key_id, model, day, {', '.join(USAGE_COUNTERS)}, last_used) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(USAGE_COUNTERS) + 5))}) "
    "ON CONFLICT (key_id, model, day) DO UPDATE SET "
    + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in USAGE_COUNTERS)
    + ", last_used = greatest(usage_daily.last_used, excluded.last_used)"
)
_UPSERT_COUNTERS = (
    "INSERT INTO key_counters (key_id, requests, prompt_tokens, completion_tokens, cache_hits, "
    "errors, last_used) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (key_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = key_counters.{c} + excluded.{c}"
        for c in ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors")
    )
    + ", last_used = greatest(coalesce(key_counters.last_used, 0), excluded.last_used)"
)
# What failing to reach or use the server looks like: asyncpg's errors, the socket's, our bound.
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresStore:
    """Keys and usage in PostgreSQL."""

    def __init__(
        self, url: str, *, timeout: float = 2.0, pool_size: int = DEFAULT_POOL_SIZE
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._retry_at = 0.0

    async def open(self) -> None:
        await self._connected()

    async def _connected(self) -> asyncpg.Pool:
        """The pool, created (and the schema migrated) on first use, so a store that was down at
        start-up connects once it is back."""
        if self._pool is not None:
            return self._pool
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at or self._opening.locked():
            raise StoreUnavailable("PostgreSQL store: not connected (retrying)")
        async with self._opening:
            if self._pool is None:
                try:
                    async with asyncio.timeout(self._timeout * 3):
                        pool = await asyncpg.create_pool(
                            self._url,
                            min_size=1,
                            max_size=self._pool_size,
                            command_timeout=self._timeout,
                            timeout=self._timeout,
                        )
                        try:
                            await migrate(pool)
                        except BaseException:
                            await pool.close()
                            raise
                except _ERRORS as exc:
                    self._retry_at = loop.time() + CONNECT_RETRY_SECONDS
                    raise _unavailable(exc) from exc
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await _close(pool, self._timeout)

    async def _run(self, method: str, query: str, *args: Any) -> Any:
        """One statement on a pooled connection, bounded and translated."""
        pool = await self._connected()
        try:
            async with asyncio.timeout(self._timeout + 0.5):
                return await getattr(pool, method)(query, *args)
        except asyncpg.UniqueViolationError:
            raise
        except _ERRORS as exc:
            raise _unavailable(exc) from exc

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        await self._run(
            "execute",
            f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
            *key_row(record),
        )

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        query = f"SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = $1"
        row = await self._run("fetchrow", query, key_hash)
        return None if row is None else key_from_row(row)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        row = await self._run("fetchrow", f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        return None if row is None else key_from_row(row)

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._run("fetch", f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id")
        return [key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str, when: float) -> bool:
        status = await self._run(
            "execute",
            "UPDATE keys SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2",
            when,
            key_id,
        )
        return str(status) != "UPDATE 0"

    async def count_keys(self) -> int:
        return int(await self._run("fetchval", "SELECT count(*) FROM keys"))

    async def take_request(self, key_id: str, limit: int) -> bool:
        taken = await self._run(
            "fetchval",
            "INSERT INTO key_counters AS c (key_id, taken_requests) VALUES ($1, 1) "
            "ON CONFLICT (key_id) DO UPDATE SET taken_requests = c.taken_requests + 1 "
            "WHERE c.taken_requests < $2 RETURNING taken_requests",
            key_id,
            limit,
        )
        return taken is not None and int(taken) <= limit

    # -- usage ------------------------------------------------------------------------------------

    async def record_events(self, events: list[StatsEvent]) -> int:
        if not events:
            return 0
        pool = await self._connected()
        try:
            async with (
                asyncio.timeout(self._timeout * 2 + 0.5),
                pool.acquire() as db,
                db.transaction(),
            ):
                return await _record_events(db, events)
        except _ERRORS as exc:
            raise _unavailable(exc) from exc

    async def key_counters(self, key_id: str) -> KeyCounters:
        row = await self._run(
            "fetchrow",
            "SELECT requests, prompt_tokens, completion_tokens, cache_hits, errors, last_used "
            "FROM key_counters WHERE key_id = $1",
            key_id,
        )
        if row is None:
            return KeyCounters()
        return KeyCounters(
            requests=int(row["requests"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cache_hits=int(row["cache_hits"]),
            errors=int(row["errors"]),
            last_used=row["last_used"],
        )

    async def usage(
        self, *, key_id: str | None = None, model: str | None = None, since: str | None = None
    ) -> list[UsageRow]:
        where, args = [], []
        for column, op, value in (("key_id", "=", key_id), ("model", "=", model),
                                  ("day", ">=", since)):  # fmt: skip
            if value is not None:
                args.append(value)
                where.append(f"{column} {op} ${len(args)}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._run(
            "fetch",
            f"SELECT key_id, model, day, {', '.join(USAGE_COUNTERS)}, last_used FROM usage_daily "
            f"{clause} ORDER BY day, key_id, model",
            *args,
        )
        return [
            UsageRow(r["key_id"], r["model"], r["day"], last_used=r["last_used"],
                     **{c: int(r[c]) for c in USAGE_COUNTERS})
            for r in rows
        ]  # fmt: skip


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply the migrations this database has not seen, under an advisory lock; returns them."""
    applied: list[int] = []
    async with pool.acquire() as db, db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await db.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version not in done:
                await db.execute(sql)
                await db.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
    return applied


async def _record_events(db: asyncpg.Connection, events: list[StatsEvent]) -> int:
    # Sorted ids and sorted rollups: two consumers applying overlapping batches lock in one order.
    unique = {e.event_id: e for e in events}  # a batch may repeat an event (a redelivery)
    ordered = [unique[i] for i in sorted(unique)]
    columns = [[getattr(e, name) for e in ordered] for name, _ in _EVENT_COLUMNS]
    new_ids = {r[0] for r in await db.fetch(_INSERT_EVENTS, *columns)}
    fresh = [e for e in ordered if e.event_id in new_ids]
    deltas = aggregate(fresh)
    if deltas:
        await db.executemany(
            _UPSERT_DAILY,
            [(d.key_id, d.model, d.day, *(getattr(d, c) for c in USAGE_COUNTERS), d.last_used)
             for d in deltas],
        )  # fmt: skip
        await db.executemany(
            _UPSERT_COUNTERS,
            [(d.key_id, d.requests, d.prompt_tokens, d.completion_tokens, d.cache_hits, d.errors,
              d.last_used) for d in deltas],
        )  # fmt: skip
    return len(fresh)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL store: {type(exc).__name__}: {exc}")


async def _close(pool: asyncpg.Pool, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await pool.close()
    except _ERRORS:
        pool.terminate()
