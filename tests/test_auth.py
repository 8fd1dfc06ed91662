"""Key lookups: concurrent lookups of one key share one store query."""

from __future__ import annotations

import asyncio

from gateway.config import AuthSettings, StoreSettings
from gateway.keys import new_key
from gateway.store.base import KeyRecord
from gateway.web.auth import Authenticator


class SlowKeyStore:
    """Answers key_by_hash after a delay, counting the queries."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record
        self.queries = 0

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.queries += 1
        await asyncio.sleep(0.05)
        return self.record if key_hash == self.record.key_hash else None


async def test_concurrent_lookups_of_one_key_share_one_query() -> None:
    """Fifty requests with one uncached key cost one store query; another key costs its own."""
    key, record = new_key("k", models=None, rpm=None, tpm=None, max_requests=None, expires_at=None)
    other, _ = new_key("o", models=None, rpm=None, tpm=None, max_requests=None, expires_at=None)
    store = SlowKeyStore(record)
    auth = Authenticator(store, AuthSettings(mode="on"), StoreSettings())  # type: ignore[arg-type]
    results = await asyncio.gather(*(auth.authenticate(key) for _ in range(50)),
                                   auth.authenticate(other), return_exceptions=True)  # fmt: skip
    assert all(r == record for r in results[:50])
    assert isinstance(results[50], Exception)  # unknown key: 401
    assert store.queries == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_query() -> None:
    """When the first caller's client goes away, the others still get the answer."""
    key, record = new_key("k", models=None, rpm=None, tpm=None, max_requests=None, expires_at=None)
    store = SlowKeyStore(record)
    auth = Authenticator(store, AuthSettings(mode="on"), StoreSettings())  # type: ignore[arg-type]
    first = asyncio.ensure_future(auth.authenticate(key))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(auth.authenticate(key))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == record and store.queries == 1
