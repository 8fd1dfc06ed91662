"""The default store: one SQLite file in WAL mode, shared safely by several worker processes.

sqlite3 blocks, so every call runs in a thread (``asyncio.to_thread``) on one connection guarded by
a lock. Writes use ``BEGIN IMMEDIATE`` so concurrent processes queue on the file lock (bounded by
``busy_timeout``) instead of failing halfway through a transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.store.base import (
    USAGE_COUNTERS,
    KeyCounters,
    KeyRecord,
    StoreUnavailable,
    UsageDelta,
    UsageRow,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
    created_at REAL NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER, max_requests INTEGER,
    expires_at REAL, revoked_at REAL
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
    last_used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model, day)
);
CREATE TABLE IF NOT EXISTS applied_batches (batch_id TEXT PRIMARY KEY, applied_at REAL NOT NULL);
"""
_KEY_COLUMNS = (
    "id, name, key_hash, prefix, created_at, models, rpm, tpm, max_requests, expires_at, revoked_at"
)

_UPSERT_DAILY = (
    f"INSERT INTO usage_daily (key_id, model, day, {', '.join(USAGE_COUNTERS)}, last_used) "
    "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key_id, model, day) DO UPDATE SET "
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
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self._path, timeout=self._timeout, check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            connection.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self._path}: {exc}") from exc
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.to_thread(connection.close)

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            raise StoreUnavailable("the SQLite store is not open")
        with self._lock:
            try:
                return work(self._connection)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite store {self._path}: {exc}") from exc

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        models = None if record.models is None else orjson.dumps(list(record.models)).decode()
        row = (
            record.id, record.name, record.key_hash, record.prefix, record.created_at, models,
            record.rpm, record.tpm, record.max_requests, record.expires_at, record.revoked_at,
        )  # fmt: skip
        await self._call(
            lambda db: db.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row
            )
        )

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._one("key_hash = ?", key_hash)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        return await self._one("id = ?", key_id)

    async def _one(self, where: str, value: str) -> KeyRecord | None:
        rows = await self._call(
            lambda db: db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE {where}", (value,)
            ).fetchall()
        )
        return _record(rows[0]) if rows else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._call(
            lambda db: db.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, id"
            ).fetchall()
        )
        return [_record(row) for row in rows]

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
        rows = await self._call(lambda db: db.execute("SELECT COUNT(*) FROM keys").fetchall())
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

    async def apply_usage(self, batch_id: str, deltas: list[UsageDelta]) -> bool:
        return await self._call(lambda db: _apply(db, batch_id, deltas))

    async def key_counters(self, key_id: str) -> KeyCounters:
        rows = await self._call(
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
        rows = await self._call(lambda db: db.execute(query, args).fetchall())
        return [UsageRow(*row) for row in rows]


def _apply(db: sqlite3.Connection, batch_id: str, deltas: list[UsageDelta]) -> bool:
    """One transaction: the batch id first (a repeat changes nothing), then every delta."""
    db.execute("BEGIN IMMEDIATE")
    try:
        inserted = db.execute(
            "INSERT OR IGNORE INTO applied_batches (batch_id, applied_at) "
            "VALUES (?, strftime('%s','now'))",
            (batch_id,),
        ).rowcount
        if not inserted:
            db.execute("ROLLBACK")
            return False
        for d in deltas:
            db.execute(
                _UPSERT_DAILY,
                (d.key_id, d.model, d.day, d.requests, d.prompt_tokens, d.completion_tokens,
                 d.estimated_requests, d.cache_hits, d.errors, d.last_used),
            )  # fmt: skip
            db.execute(
                _UPSERT_COUNTERS,
                (d.key_id, d.requests, d.prompt_tokens, d.completion_tokens, d.cache_hits,
                 d.errors, d.last_used),
            )  # fmt: skip
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True


def _record(row: Any) -> KeyRecord:
    (key_id, name, key_hash, prefix, created, models, rpm, tpm, max_requests, expires,
     revoked) = row  # fmt: skip
    return KeyRecord(
        id=key_id,
        name=name,
        key_hash=key_hash,
        prefix=prefix,
        created_at=created,
        models=None if models is None else tuple(orjson.loads(models)),
        rpm=rpm,
        tpm=tpm,
        max_requests=max_requests,
        expires_at=expires,
        revoked_at=revoked,
    )
