"""The response cache as the handlers use it: look up, replay, share a flight, store its answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway import metrics
from gateway.background import BackgroundTasks
from gateway.cache.backends import CacheBackend
from gateway.cache.entry import (
    CacheEntry,
    assemble_completion,
    completion_to_stream,
    stream_is_complete,
)
from gateway.cache.flight import Answer, Flight, Flights, RecordedResponse
from gateway.cache.policy import CacheDecision
from gateway.config import CacheSettings, Deployment
from gateway.deployments import OpenedUpstream
from gateway.source import EventSource

log = logging.getLogger("gateway.cache")

# Cache hits are accounted to this deployment name.
CACHE_DEPLOYMENT = Deployment(name="cache", base_url="cache://")
MAX_BACKGROUND = 1000
CLOSE_SECONDS = 2.0
SSE = "text/event-stream"
JSON = "application/json"


class ResponseCache:
    """One worker's cache: a backend, its flights in progress, and stores under way."""

    def __init__(self, settings: CacheSettings, backend: CacheBackend) -> None:
        self.settings = settings
        self.backend = backend
        self.flights = Flights()
        self._background = BackgroundTasks(MAX_BACKGROUND)

    async def lookup(self, decision: CacheDecision) -> CacheEntry | None:
        assert decision.key is not None
        entry = await self.backend.get(decision.key)
        metrics.CACHE_LOOKUPS.labels("hit" if entry is not None else "miss").inc()
        return entry

    # -- hits -------------------------------------------------------------------------------------

    async def replay_stream(
        self, entry: CacheEntry, *, paced: bool, keepalive: float
    ) -> OpenedUpstream:
        """A streaming answer from an entry of either shape, as an event source."""
        if entry.kind == "stream":
            chunks, offsets = entry.chunks()
        else:
            chunks, offsets = [completion_to_stream(entry.body)], [0.0]
        source = EventSource(
            RecordedResponse(chunks, offsets, paced=paced), CACHE_DEPLOYMENT, keepalive=keepalive
        )
        source.start()
        await source.first
        return Answer(CACHE_DEPLOYMENT, source=source)

    @staticmethod
    def replay_body(entry: CacheEntry) -> bytes:
        """A non-streaming answer from an entry of either shape."""
        return assemble_completion(entry.body) if entry.kind == "stream" else entry.body

    # -- misses -----------------------------------------------------------------------------------

    def share(
        self,
        decision: CacheDecision,
        *,
        stream: bool,
        open_upstream: Callable[[], Awaitable[OpenedUpstream]],
    ) -> tuple[Flight, bool]:
        """Join the identical request in flight, or start one; True when joined."""
        assert decision.key is not None
        key = f"{decision.key}:{'s' if stream else 'j'}"
        flight = self.flights.joinable(key) if self.settings.coalesce else None
        if flight is not None:
            metrics.COALESCED.inc()
            return flight, True
        flight = Flight(key)
        if self.settings.coalesce:
            self.flights.add(flight)
        flight.start(open_upstream(), on_done=lambda done: self._finished(done, decision, stream))
        return flight, False

    def _finished(self, flight: Flight, decision: CacheDecision, stream: bool) -> None:
        self.flights.remove(flight)
        if not (decision.store and flight.clean):
            return
        opened = flight.opened.result()
        source = opened.source
        if source is not None:
            if not source.recording.on:
                return
            body, marks = source.recording.as_bytes()
            if not stream_is_complete(body):
                return
            entry = CacheEntry("stream", body, marks, deployment=opened.deployment.name)
        else:
            entry = CacheEntry("json", opened.body, [], deployment=opened.deployment.name)
        assert decision.key is not None
        self._spawn(self._store(decision.key, entry, decision.ttl))

    async def _store(self, key: str, entry: CacheEntry, ttl: float) -> None:
        if await self.backend.set(key, entry, ttl):
            metrics.CACHE_STORES.labels(entry.kind).inc()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)  # the cache is best effort: dropped when too much is queued

    async def close(self) -> None:
        await self._background.wait(CLOSE_SECONDS)
        await self.backend.close()
