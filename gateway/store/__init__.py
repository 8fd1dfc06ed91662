"""Where keys and usage live: a SQLite file (the default), PostgreSQL (the store of record for
several instances) or Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import StoreSettings
from gateway.store.base import (
    KeyCounters,
    KeyRecord,
    StatsEvent,
    Store,
    StoreUnavailable,
    UsageDelta,
    UsageRow,
)

if TYPE_CHECKING:
    from gateway.redisconn import RedisConn

__all__ = [
    "KeyCounters",
    "KeyRecord",
    "StatsEvent",
    "Store",
    "StoreUnavailable",
    "UsageDelta",
    "UsageRow",
    "make_store",
]


def make_store(settings: StoreSettings, redis: RedisConn | None = None) -> Store:
    """PostgreSQL when its URL is configured, else Redis when its URL is, else the SQLite file.

    ``redis``: the worker's Redis connection, shared with the store; without it a Redis store
    connects on its own (the CLI)."""
    if settings.url:
        from gateway.store.postgres import PostgresStore

        return PostgresStore(settings.url, timeout=settings.timeout, pool_size=settings.pool_size)
    if settings.redis_url:
        from gateway.redisconn import connect_redis
        from gateway.store.redis import RedisStore

        return RedisStore(redis or connect_redis(settings))
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(settings.path)


def describe(settings: StoreSettings) -> str:
    """Where the store is, for logs (a URL without its password)."""
    from urllib.parse import urlsplit

    if settings.url:
        parts = urlsplit(settings.url)
        return f"postgresql {parts.hostname}:{parts.port or 5432}{parts.path}"
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        return f"redis {parts.hostname}:{parts.port or 6379}{parts.path}"
    return f"sqlite {settings.path}"
