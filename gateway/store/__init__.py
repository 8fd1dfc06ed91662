"""Where keys and usage live: a SQLite file (the default) or Redis (several instances)."""

from gateway.config import StoreSettings
from gateway.store.base import KeyCounters, KeyRecord, Store, StoreUnavailable, UsageDelta, UsageRow

__all__ = [
    "KeyCounters",
    "KeyRecord",
    "Store",
    "StoreUnavailable",
    "UsageDelta",
    "UsageRow",
    "make_store",
]


def make_store(settings: StoreSettings) -> Store:
    """Redis when a URL is configured, else the SQLite file."""
    if settings.redis_url:
        from gateway.store.redis import RedisStore

        return RedisStore(
            settings.redis_url, prefix=settings.redis_prefix, timeout=settings.timeout
        )
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(settings.path)


def describe(settings: StoreSettings) -> str:
    """Where the store is, for logs (a Redis URL without its password)."""
    if settings.redis_url:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.redis_url)
        return f"redis {parts.hostname}:{parts.port or 6379}{parts.path}"
    return f"sqlite {settings.path}"
