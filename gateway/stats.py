"""Stats events and the sidecar that batches them into the store.

Every request publishes exactly one :class:`StatsEvent`; ``publish`` is a plain append to a bounded
buffer, so the request path never waits for the store. The sidecar task seals the buffer into a
batch every ``flush_events`` events or ``flush_interval`` seconds, whichever comes first, and
applies sealed batches to the store in order.

Nothing is lost while the store is down: sealed batches wait (aggregated per key, model and day,
so they are small) and are retried with backoff under the same batch id, which the store applies
at most once. Only when the bounded buffers overflow are events dropped, and then they are counted,
logged and exported. ``stop`` seals and flushes everything before the worker exits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_async import aio

from gateway import metrics
from gateway.config import StatsSettings
from gateway.store.base import Store, StoreUnavailable, UsageDelta

log = logging.getLogger("gateway.stats")

ANONYMOUS_KEY = "anonymous"
RETRY_BACKOFF_MAX = 10.0


@dataclass(slots=True)
class StatsEvent:
    """What one request did, for usage accounting."""

    request_id: str
    key_id: str
    model: str
    deployment: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    tokens_exact: bool
    cache_hit: bool
    latency_ms: float
    ttfb_ms: float | None
    termination: str
    ts: float  # unix seconds

    @property
    def is_error(self) -> bool:
        """Failed or refused; a client that went away is not an error."""
        return self.termination not in {"completed", "client_disconnect"}


@dataclass(slots=True)
class Batch:
    """Sealed events, aggregated; applied to the store at most once thanks to its id."""

    id: str
    deltas: list[UsageDelta]
    events: int
    oldest: float  # monotonic time of its oldest event


class SidecarStatistics(NamedTuple):
    """A snapshot of the sidecar's counters."""

    buffered: int
    pending_batches: int
    published: int
    flushed: int
    dropped: int
    failures: int


def aggregate(events: list[StatsEvent]) -> list[UsageDelta]:
    """Sum events per (key, model, UTC day)."""
    deltas: dict[tuple[str, str, str], UsageDelta] = {}
    for event in events:
        day = time.strftime("%Y-%m-%d", time.gmtime(event.ts))
        key = (event.key_id, event.model, day)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = UsageDelta(event.key_id, event.model, day)
        delta.requests += 1
        delta.prompt_tokens += event.prompt_tokens
        delta.completion_tokens += event.completion_tokens
        delta.estimated_requests += 0 if event.tokens_exact else 1
        delta.cache_hits += 1 if event.cache_hit else 0
        delta.errors += 1 if event.is_error else 0
        delta.last_used = max(delta.last_used, event.ts)
    return list(deltas.values())


class StatsSidecar:
    """Buffers stats events and flushes them to the store in batches."""

    def __init__(
        self,
        store: Store,
        settings: StatsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._buffer: collections.deque[StatsEvent] = collections.deque()
        self._buffer_since: float | None = None
        self._batches: collections.deque[Batch] = collections.deque()
        self._wake = asyncio.Event()
        self._published = self._flushed = self._dropped = self._failures = 0
        self._task: asyncio.Task[None] | None = None
        # prometheus-async times the coroutine (failures included) into the histogram.
        self._write = aio.time(metrics.STATS_FLUSH_DURATION)(store.apply_usage)

    # -- the request side: never blocks ----------------------------------------------------------

    def publish(self, event: StatsEvent) -> None:
        """Queue an event; if the buffer is full the event is dropped, counted and logged."""
        self._published += 1
        metrics.STATS_PUBLISHED.inc()
        if len(self._buffer) >= self._settings.buffer_size:
            self._drop(1, "the stats buffer is full")
            return
        if not self._buffer:
            self._buffer_since = self._clock()
        self._buffer.append(event)
        metrics.STATS_BUFFERED.inc()
        if len(self._buffer) >= self._settings.flush_events:
            self._wake.set()

    def statistics(self) -> SidecarStatistics:
        """Counters for tests, health and logs."""
        return SidecarStatistics(
            buffered=len(self._buffer),
            pending_batches=len(self._batches),
            published=self._published,
            flushed=self._flushed,
            dropped=self._dropped,
            failures=self._failures,
        )

    # -- the task ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flushing task in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-sidecar")

    async def stop(self, deadline: float) -> None:
        """Stop the task, then seal and flush everything, retrying until ``deadline``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # waits without re-raising the task's cancellation
            self._task = None
        self._seal()
        delay = 0.2
        while self._batches:
            if await self._apply_pending():
                continue
            if self._clock() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        lost = sum(batch.events for batch in self._batches)
        if lost:
            self._drop(lost, "the store was unreachable until shutdown")
            self._batches.clear()

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            await self._wait_for_trigger(backoff)
            self._seal_if_due()
            if await self._apply_pending():
                backoff = 0.0
            else:
                backoff = min(max(backoff * 2, 0.5), RETRY_BACKOFF_MAX)

    async def _wait_for_trigger(self, backoff: float) -> None:
        """Sleep until the buffer holds a batch's worth, the interval ends, or a retry is due."""
        interval = self._settings.flush_interval
        if self._buffer_since is not None:
            interval = max(0.0, self._buffer_since + interval - self._clock())
        timeout = min(interval, backoff) if backoff and self._batches else interval
        if len(self._buffer) >= self._settings.flush_events:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _seal_if_due(self) -> None:
        full = len(self._buffer) >= self._settings.flush_events
        old = (
            self._buffer_since is not None
            and self._clock() - self._buffer_since >= self._settings.flush_interval
        )
        if full or old:
            self._seal()

    def _seal(self) -> None:
        """Turn the buffered events into sealed batches of at most ``flush_events`` each."""
        while self._buffer:
            size = min(len(self._buffer), self._settings.flush_events)
            events = [self._buffer.popleft() for _ in range(size)]
            metrics.STATS_BUFFERED.dec(size)
            if len(self._batches) >= self._settings.max_pending_batches:
                oldest = self._batches.popleft()
                self._drop(oldest.events, "too many batches are waiting for the store")
            self._batches.append(
                Batch(uuid.uuid4().hex, aggregate(events), size, self._buffer_since or 0.0)
            )
            self._buffer_since = self._clock() if self._buffer else None

    async def _apply_pending(self) -> bool:
        """Apply sealed batches in order; False when the store failed (the batch is kept)."""
        while self._batches:
            batch = self._batches[0]
            metrics.STATS_FLUSH_LAG.set(max(0.0, self._clock() - batch.oldest))
            try:
                await self._write(batch.id, batch.deltas)
            except StoreUnavailable as exc:
                self._failures += 1
                metrics.STATS_FLUSH_FAILURES.inc()
                log.warning(
                    "stats flush failed; will retry",
                    extra={"batch": batch.id, "events": batch.events, "error": str(exc)},
                )
                return False
            self._batches.popleft()
            self._flushed += batch.events
            metrics.STATS_FLUSHED.inc(batch.events)
        metrics.STATS_FLUSH_LAG.set(0)
        return True

    def _drop(self, count: int, reason: str) -> None:
        self._dropped += count
        metrics.STATS_DROPPED.inc(count)
        log.error("stats events dropped", extra={"dropped": count, "reason": reason})
