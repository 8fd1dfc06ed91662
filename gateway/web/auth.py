"""Authentication of /v1 requests by API key, and of /admin requests by the master key.

Key lookups are cached in-process for ``auth.cache_ttl`` seconds (5 by default), so a revocation
takes effect within that time on every worker; unknown keys are cached for at most one second.
While the store is unreachable, a key seen before keeps its last known answer (so an outage does
not take the API down); a key never seen gets 503 until the store is back. A circuit breaker in
front of the store makes both answers immediate once a call has failed. Concurrent lookups of one
key share one store query, so a burst with a key whose entry just expired costs one query.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.background import BackgroundTasks, mark_retrieved
from gateway.breaker import BreakerSettings, BreakerState, CircuitBreaker
from gateway.config import AuthSettings, StoreSettings
from gateway.errors import AuthenticationError, ServiceUnavailable
from gateway.keys import check_usable, hash_key, invalid_key, looks_like_key
from gateway.store.base import KeyRecord, Store, StoreUnavailable
from gateway.web.state import API_KEY, AUTHENTICATOR

CACHE_ENTRIES = 10_000
NEGATIVE_TTL = 1.0
# One failed store call opens it; a probe goes through every 2 s (a background refresh when the
# key is known, so that no client request waits on it).
STORE_BREAKER = BreakerSettings(failures=1, recovery=2.0, probes=1)
REFRESH_TASKS = 64
REFRESH_WAIT_SECONDS = 3.0
T = TypeVar("T")


class Authenticator:
    """Decides whether auth is on and resolves presented keys, through a small TTL cache.

    The store sits behind a circuit breaker (one failure opens it): until it closes again, a key
    seen before answers from its last known record at once and a key never seen gets 503 at once,
    both looked up in the background (the breaker's probe). No request waits out the store
    timeout during an outage, only the one whose call failed first.
    """

    def __init__(
        self,
        store: Store,
        settings: AuthSettings,
        store_settings: StoreSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._store_shared = store_settings.shared
        self._clock = clock
        self._cache: collections.OrderedDict[str, tuple[float, KeyRecord | None]] = (
            collections.OrderedDict()
        )
        self._required: tuple[float, bool] | None = None
        self.breaker = CircuitBreaker(STORE_BREAKER, clock=clock)
        self._refreshing = BackgroundTasks(REFRESH_TASKS)
        self._refresh_pending: set[str] = set()
        self._lookups: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a store call behind the breaker; StoreUnavailable at once while it is open."""
        if not self.breaker.allow():
            raise StoreUnavailable("the store is failing; its circuit breaker is open")
        try:
            result = await call()
        except StoreUnavailable:
            self.breaker.failure()
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.success()
        return result

    async def required(self) -> bool:
        """Whether /v1 needs a key: on, off, or (auto) with a Redis store or once a key exists."""
        if self._settings.mode != "auto":
            return self._settings.mode == "on"
        if self._store_shared:
            return True
        now = self._clock()
        if self._required is None or self._required[0] <= now:
            try:
                has_keys = await self.guarded(self._store.count_keys) > 0
            except StoreUnavailable:
                # Keep the last answer; with none, fail closed.
                has_keys = True if self._required is None else self._required[1]
            self._required = (now + self._settings.cache_ttl, has_keys)
        return self._required[1]

    async def authenticate(self, presented: str | None) -> KeyRecord:
        """The usable key record for the presented key; the identical 401 for anything else."""
        if not presented or not looks_like_key(presented):
            raise invalid_key()
        digest = hash_key(presented)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > self._clock():
            return check_usable(cached[1], time.time())
        if self.breaker.state is not BreakerState.CLOSED:
            # The store is failing: the last known answer stands, refreshed in the background;
            # a key never seen is looked up in the background too, for the client's retry.
            self._refresh_later(digest)
            if cached is None:
                raise _store_unavailable()
            return check_usable(cached[1], time.time())
        try:
            record = await self._lookup(digest)
        except StoreUnavailable as exc:
            if cached is None:
                raise _store_unavailable() from exc
            return check_usable(cached[1], time.time())
        return check_usable(record, time.time())

    async def _lookup(self, digest: str) -> KeyRecord | None:
        """One store query per key at a time: concurrent lookups of a key share it (a burst of
        requests with a cold cache must not take the store's whole connection pool)."""
        shared = self._lookups.get(digest)
        if shared is None:
            shared = asyncio.ensure_future(self._query(digest))
            shared.add_done_callback(mark_retrieved)
            self._lookups[digest] = shared
            shared.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return await asyncio.shield(shared)

    async def _query(self, digest: str) -> KeyRecord | None:
        record = await self.guarded(lambda: self._store.key_by_hash(digest))
        ttl = self._settings.cache_ttl if record is not None else NEGATIVE_TTL
        self._cache[digest] = (self._clock() + ttl, record)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return record

    def _refresh_later(self, digest: str) -> None:
        if digest in self._refresh_pending:
            return
        self._refresh_pending.add(digest)
        if not self._refreshing.spawn(self._refresh(digest)):
            self._refresh_pending.discard(digest)

    async def _refresh(self, digest: str) -> None:
        try:
            await self._lookup(digest)
        except StoreUnavailable:
            pass  # the breaker counted it; the cached answer stays
        finally:
            self._refresh_pending.discard(digest)

    async def close(self) -> None:
        """Wait briefly for background refreshes (each bounded by the store timeout)."""
        await self._refreshing.wait(REFRESH_WAIT_SECONDS)


def _store_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "API keys cannot be checked right now; try again shortly.",
        code="key_store_unavailable",
        headers={"Retry-After": "2"},
    )


def presented_key(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``x-api-key`` (as Anthropic clients send it)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a usable key on /v1 routes when auth is on; the key record goes on the request."""
    if request.path.startswith("/v1/") and request.method != "OPTIONS":
        authenticator = request.app[AUTHENTICATOR]
        if await authenticator.required():
            request[API_KEY] = await authenticator.authenticate(presented_key(request))
    return await handler(request)


def check_master_key(request: web.Request, master_key: str | None) -> None:
    """401 unless the request carries the master key (admin routes)."""
    given = presented_key(request) or ""
    if master_key is None or not hmac.compare_digest(given.encode(), master_key.encode()):
        raise AuthenticationError("The admin API needs the master key as a Bearer token.")
