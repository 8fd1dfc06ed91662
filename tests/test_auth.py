"""The key cache and the store's breaker: an outage costs known keys nothing, and concurrent
lookups of one key share one query; without a server."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import AuthSettings, StoreSettings
from gateway.errors import AuthenticationError, ServiceUnavailable
from gateway.keys import hash_key, new_key
from gateway.store.base import KeyRecord, StoreUnavailable
from gateway.web.auth import STORE_BREAKER, Authenticator


class FlakyStore:
    """Key lookups that can be switched to failing; counts the calls that reached it."""

    def __init__(self, records: dict[str, KeyRecord]) -> None:
        self.records = records
        self.down = False
        self.calls = 0

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        return self.records.get(key_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_outage_is_one_failed_call_then_answers_from_the_cache() -> None:
    """After one failure the breaker opens: known keys answer cached, unknown ones 503, no waits."""
    key, record = new_key("k")
    store = FlakyStore({hash_key(key): record})
    clock = Clock()
    auth = Authenticator(store, AuthSettings(cache_ttl=1.0), StoreSettings(), clock=clock)  # type: ignore[arg-type]
    assert (await auth.authenticate(key)).id == record.id
    store.down = True
    clock.now += 5  # the cached answer is stale now
    assert (await auth.authenticate(key)).id == record.id
    assert store.calls == 2  # the failed call opened the breaker
    for _ in range(20):
        assert (await auth.authenticate(key)).id == record.id
    unknown, _ = new_key("never seen")
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(unknown)
    assert store.calls == 2  # nothing waited on the store meanwhile
    store.down = False
    clock.now += STORE_BREAKER.recovery + 0.1
    assert (await auth.authenticate(key)).id == record.id  # stale answer, refreshed behind it
    await auth.close()
    # The known key's refresh and the unknown key's lookup both ran once the store was back.
    assert store.calls == 4 and auth.breaker.state.name == "CLOSED"
    with pytest.raises(AuthenticationError):
        await auth.authenticate(unknown)  # answered from the lookup made in the background
    assert store.calls == 4


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
