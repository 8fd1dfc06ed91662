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
from gateway.cache.flight import Flight, FlightMeta, Flights, OpenedReader
from gateway.cache.policy import CacheDecision
from gateway.config import CacheSettings, Deployment
from gateway.relay import OpenedUpstream

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

    def replay_stream(self, entry: CacheEntry, *, paced: bool) -> Awaitable[OpenedReader]:
        """A streaming answer from an entry of either shape."""
        if entry.kind == "stream":
            chunks, offsets = entry.chunks()
        else:
            chunks, offsets = [completion_to_stream(entry.body)], [0.0]
        meta = FlightMeta(200, SSE, CACHE_DEPLOYMENT)
        return Flight.replay("hit", chunks, offsets, meta).attach(paced=paced).opening()

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
        body_limit: int,
    ) -> tuple[OpenedFlight, bool]:
        """Join the identical request in flight, or start one; True when joined."""
        assert decision.key is not None
        key = f"{decision.key}:{'s' if stream else 'j'}"
        flight = self.flights.joinable(key) if self.settings.coalesce else None
        joined = flight is not None
        if flight is None:
            flight = Flight(key, max_bytes=self.settings.max_object_bytes)
            if self.settings.coalesce:
                self.flights.add(flight)
            flight.start(
                open_upstream(),
                stream=stream,
                body_limit=body_limit,
                on_done=lambda done: self._finished(done, decision, stream),
            )
        else:
            metrics.COALESCED.inc()
        reader = flight.attach()
        return OpenedFlight(flight, reader.opening()), joined

    def _finished(self, flight: Flight, decision: CacheDecision, stream: bool) -> None:
        self.flights.remove(flight)
        if not (decision.store and flight.clean and flight.recorded):
            return
        body = b"".join(flight.chunks)
        if stream and not stream_is_complete(body):
            return
        marks: list[tuple[int, float]] = []
        if stream:
            end = 0
            for chunk, offset in zip(flight.chunks, flight.offsets, strict=True):
                end += len(chunk)
                marks.append((end, round(offset, 4)))
        meta = flight.opened.result()
        if meta.status != 200:
            return
        kind = "stream" if stream else "json"
        entry = CacheEntry(kind, body, marks, deployment=meta.deployment.name)
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


class OpenedFlight:
    """A joined flight and the reader's opening, for the handler."""

    __slots__ = ("flight", "opening")

    def __init__(self, flight: Flight, opening: Awaitable[OpenedReader]) -> None:
        self.flight = flight
        self.opening = opening
