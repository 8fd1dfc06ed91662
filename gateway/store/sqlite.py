"""The default store: one SQLite file in WAL mode, shared safely by several worker processes.

sqlite3 blocks, so every call runs in a thread. Writes go through one connection on a thread of
their own and use ``BEGIN IMMEDIATE``, so concurrent processes queue on the file lock (bounded by
``busy_timeout``) instead of failing halfway through a transaction. Reads run on a separate small
pool of threads, each with its own connection: in WAL mode a reader never waits for a writer, so a
stats flush stuck behind another process's lock does not hold up key lookups (issue 12, item 13).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

READ_THREADS = 4

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
    created_at REAL NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER, max_requests INTEGER,
    expires_at REAL, revoked_at REAL, budgets TEXT
);
CREATE TABLE IF NOT EXISTS key_counters (
    key_id TEXT PRIMARY KEY, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    last_used REAL, taken_requests INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, estimated_requests INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL DEFAULT 0, cost_nanousd INTEGER NOT NULL DEFAULT 0,
    estimated_cost_nanousd INTEGER NOT NULL DEFAULT 0,
    unknown_cost_requests INTEGER NOT NULL DEFAULT 0,
    hedge_cost_nanousd INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model, day)
);
CREATE TABLE IF NOT EXISTS usage_events (
    event_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
    deployment TEXT, route TEXT NOT NULL, status INTEGER NOT NULL, termination TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    tokens_exact INTEGER NOT NULL, cache_hit INTEGER NOT NULL, latency_ms REAL NOT NULL,
    ttfb_ms REAL, ts REAL NOT NULL, cost_usd REAL, cost_exact INTEGER NOT NULL DEFAULT 0,
    hedge_cost_usd REAL NOT NULL DEFAULT 0
);
"""
# Columns added after a table was first created: a file made by an older gateway gets them at
# open (CREATE TABLE IF NOT EXISTS leaves an existing table as it is). Its old rows read as 0.
_ADDED_COLUMNS = {
    "keys": ("budgets TEXT",),
    "usage_daily": (
        "cost_nanousd INTEGER NOT NULL DEFAULT 0",
        "estimated_cost_nanousd INTEGER NOT NULL DEFAULT 0",
        "unknown_cost_requests INTEGER NOT NULL DEFAULT 0",
        "hedge_cost_nanousd INTEGER NOT NULL DEFAULT 0",
    ),
    "usage_events": (
        "cost_usd REAL",
        "cost_exact INTEGER NOT NULL DEFAULT 0",
        "hedge_cost_usd REAL NOT NULL DEFAULT 0",
    ),
}
EVENT_COLUMNS = (
    "event_id", "request_id", "key_id", "model", "deployment", "route", "status", "termination",
    "prompt_tokens", "completion_tokens", "tokens_exact", "cache_hit", "latency_ms", "ttfb_ms",
    "ts", "cost_usd", "cost_exact", "hedge_cost_usd",
)  # fmt: skip
_INSERT_EVENT = (
    f"INSERT OR IGNORE INTO usage_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)

_UPSERT_DAILY = (
    f"INSERT INTO usage_daily (key_id, model, day, {', '.join(USAGE_COUNTERS)}, last_used) "
    f"VALUES ({', '.join('?' * (len(USAGE_COUNTERS) + 4))}) "
    "ON CONFLICT (key_id, model, day) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COUNTERS)
    + ", last_used = max(last_used, excluded.last_used)"
)
_UPSERT_COUNTERS = (
    "INSERT INTO key_counters (key_id, requests, prompt_tokens, completion_tokens, cache_hits, "
    "errors, last_used) VALUES (?,?,?,?,?,?,?) ON CONFLICT (key_id) DO UPDATE SET "
    "requests = requests + excluded.requests, "
    "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = completion_tokens + excluded.completion_tokens, "
    "cache_hits = cache_hits + excluded.cache_hits, errors = errors + excluded.errors, "
    "last_used = max(coalesce(last_used, 0), excluded.last_used)"
)


class SQLiteStore:
    """Keys and usage in a SQLite file."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._timeout = timeout
        self._connection: sqlite3.Connection | None = None  # the writer's
        # One writer thread (writes queue here, never on the readers' threads) and a few readers.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._read_connections: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._open)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path, timeout=self._timeout, check_same_thread=False, isolation_level=None
        )
        connection.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        return connection

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            connection = self._connect()
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            _add_columns(connection)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self._path}: {exc}") from exc
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.get_running_loop().run_in_executor(self._writer, connection.close)
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for connection in self._read_connections:
            connection.close()
        self._read_connections.clear()

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write (or a read that must see the latest writes) on the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._write, work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on a reader thread: in WAL mode it never waits for a writer's lock."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._reading, work)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._guarded(work, self._connection)

    def _reading(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            raise StoreUnavailable("the SQLite store is not open")
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = self._local.connection = self._connect()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite store {self._path}: {exc}") from exc
            with self._read_lock:
                self._read_connections.append(connection)
        return self._guarded(work, connection)

    def _guarded(self, work: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
        try:
            return work(db)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self._path}: {exc}") from exc

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        row = key_row(record)
        await self._call(
            lambda db: db.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row
            )
        )

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._one("key_hash = ?", key_hash)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        return await self._one("id = ?", key_id)

    async def _one(self, where: str, value: str) -> KeyRecord | None:
        rows = await self._read(
            lambda db: db.execute(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE {where}", (value,)
            ).fetchall()
        )
        return key_from_row(rows[0]) if rows else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._read(
            lambda db: db.execute(
                f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"
            ).fetchall()
        )
        return [key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str, when: float) -> bool:
        cursor = await self._call(
            lambda db: db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (when, key_id)
            )
        )
        if cursor.rowcount:
            return True
        return await self.key_by_id(key_id) is not None

    async def count_keys(self) -> int:
        rows = await self._read(lambda db: db.execute("SELECT COUNT(*) FROM keys").fetchall())
        return int(rows[0][0])

    async def take_request(self, key_id: str, limit: int) -> bool:
        def take(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR IGNORE INTO key_counters (key_id) VALUES (?)", (key_id,))
                cursor = db.execute(
                    "UPDATE key_counters SET taken_requests = taken_requests + 1 "
                    "WHERE key_id = ? AND taken_requests < ?",
                    (key_id, limit),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return cursor.rowcount == 1

        return await self._call(take)

    # -- usage ------------------------------------------------------------------------------------

    async def record_events(self, events: list[StatsEvent]) -> int:
        return await self._call(lambda db: _record_events(db, events))

    async def key_counters(self, key_id: str) -> KeyCounters:
        rows = await self._read(
            lambda db: db.execute(
                "SELECT requests, prompt_tokens, completion_tokens, cache_hits, errors, last_used "
                "FROM key_counters WHERE key_id = ?",
                (key_id,),
            ).fetchall()
        )
        if not rows:
            return KeyCounters()
        requests, prompt, completion, hits, errors, last_used = rows[0]
        return KeyCounters(requests, prompt, completion, hits, errors, last_used)

    async def usage(
        self, *, key_id: str | None = None, model: str | None = None, since: str | None = None
    ) -> list[UsageRow]:
        where, args = [], []
        for column, value in (("key_id", key_id), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("day >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        query = (
            f"SELECT key_id, model, day, {', '.join(USAGE_COUNTERS)}, last_used FROM usage_daily "
            f"{clause} ORDER BY day, key_id, model"
        )
        rows = await self._read(lambda db: db.execute(query, args).fetchall())
        return [UsageRow(*row) for row in rows]


def _record_events(db: sqlite3.Connection, events: list[StatsEvent]) -> int:
    """One transaction: each new event is kept and added to the rollups; known ids are skipped."""
    db.execute("BEGIN IMMEDIATE")
    try:
        ordered = sorted(events, key=_event_id)
        fresh = [e for e in ordered if db.execute(_INSERT_EVENT, _row(e)).rowcount]
        for d in aggregate(fresh):
            counts = tuple(getattr(d, c) for c in USAGE_COUNTERS)
            db.execute(_UPSERT_DAILY, (d.key_id, d.model, d.day, *counts, d.last_used))
            db.execute(
                _UPSERT_COUNTERS,
                (d.key_id, d.requests, d.prompt_tokens, d.completion_tokens, d.cache_hits,
                 d.errors, d.last_used),
            )  # fmt: skip
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(fresh)


def _add_columns(db: sqlite3.Connection) -> None:
    """Bring a table created by an older gateway up to the current columns (in one write
    transaction: workers opening the file at once add each column once)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _event_id(event: StatsEvent) -> str:
    return event.event_id


def _row(e: StatsEvent) -> tuple[Any, ...]:
    return (
        e.event_id, e.request_id, e.key_id, e.model, e.deployment, e.route, e.status,
        e.termination, e.prompt_tokens, e.completion_tokens, int(e.tokens_exact),
        int(e.cache_hit), e.latency_ms, e.ttfb_ms, e.ts, e.cost_usd, int(e.cost_exact),
        e.hedge_cost_usd,
    )  # fmt: skip
