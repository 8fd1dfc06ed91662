"""Where keys and usage live: a SQLite file (the default), PostgreSQL (the store of record for
several instances) or Redis."""

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


def make_store(settings: StoreSettings) -> Store:
    """PostgreSQL when its URL is configured, else Redis when its URL is, else the SQLite file."""
    if settings.url:
        from gateway.store.postgres import PostgresStore

        return PostgresStore(settings.url, timeout=settings.timeout, pool_size=settings.pool_size)
    if settings.redis_url:
        from gateway.store.redis import RedisStore

        return RedisStore(
            settings.redis_url, prefix=settings.redis_prefix, timeout=settings.timeout
        )
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
