"""Stats events and the sidecar that batches them into the store (the sink without Redis).

Every request publishes exactly one :class:`StatsEvent`; ``publish`` writes it to the worker's
spool and appends it to a bounded buffer, so the request path never waits for the store. The
sidecar task seals the buffer into a batch every ``flush_events`` events or ``flush_interval``
seconds, whichever comes first, and applies sealed batches to the store in order.

Nothing is lost while the store is down: sealed batches wait and are retried with backoff; the
store applies each event id at most once. When the bounded buffers overflow, events leave memory
(counted, logged and exported as dropped) but stay in the spool, which the next start of a worker
replays. ``stop`` seals and flushes everything before the worker exits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from prometheus_async import aio

from gateway import metrics
from gateway.background import cancel_and_wait
from gateway.config import StatsSettings
from gateway.spool import Spool
from gateway.store.base import StatsEvent, Store, StoreUnavailable, aggregate

__all__ = ["ANONYMOUS_KEY", "StatsEvent", "StatsSidecar", "UsageSink", "aggregate"]

log = logging.getLogger("gateway.stats")

ANONYMOUS_KEY = "anonymous"
RETRY_BACKOFF_MAX = 10.0


@dataclass(slots=True)
class Batch:
    """Sealed events; each is applied to the store at most once thanks to its id."""

    items: list[StatsEvent]
    oldest: float  # monotonic time of its oldest event

    @property
    def events(self) -> int:
        """How many events the batch holds."""
        return len(self.items)


class SidecarStatistics(NamedTuple):
    """A snapshot of the sidecar's counters."""

    buffered: int
    pending_batches: int
    published: int
    flushed: int
    dropped: int
    failures: int


class UsageSink(Protocol):
    """Where a worker's stats events go: the store (:class:`StatsSidecar`) or the usage bus."""

    def publish(self, event: StatsEvent) -> None:
        """Take one event (spooled first); never blocks."""
        ...

    def replay(self, events: list[StatsEvent]) -> None:
        """Take events recovered from a dead worker's spool (already spooled)."""
        ...

    def start(self) -> None:
        """Start delivering in the running loop."""
        ...

    async def stop(self, deadline: float) -> None:
        """Deliver what is left, retrying until ``deadline``."""
        ...

    def statistics(self) -> SidecarStatistics:
        """Counters for tests, health and logs."""
        ...


class StatsSidecar:
    """Buffers stats events and flushes them to the store in batches."""

    def __init__(
        self,
        store: Store,
        settings: StatsSettings,
        *,
        spool: Spool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._spool = spool
        self._settings = settings
        self._clock = clock
        self._buffer: collections.deque[StatsEvent] = collections.deque()
        self._buffer_since: float | None = None
        self._batches: collections.deque[Batch] = collections.deque()
        self._wake = asyncio.Event()
        self._published = self._flushed = self._dropped = self._failures = 0
        self._task: asyncio.Task[None] | None = None
        # prometheus-async times the coroutine (failures included) into the histogram.
        self._write = aio.time(metrics.STATS_FLUSH_DURATION)(store.record_events)

    # -- the request side: never blocks ----------------------------------------------------------

    def publish(self, event: StatsEvent) -> None:
        """Spool and queue an event; if the buffer is full it leaves memory, counted and logged."""
        if self._spool is not None:
            self._spool.ended(event)
        self._published += 1
        metrics.STATS_PUBLISHED.inc()
        self._enqueue(event)

    def replay(self, events: list[StatsEvent]) -> None:
        """Queue events recovered from a spool (sealed at once: they are late already)."""
        for event in events:
            self._enqueue(event)
        self._seal()
        self._wake.set()

    def _enqueue(self, event: StatsEvent) -> None:
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
            await cancel_and_wait(self._task)
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
            self._batches.append(Batch(events, self._buffer_since or self._clock()))
            self._buffer_since = self._clock() if self._buffer else None

    async def _apply_pending(self) -> bool:
        """Apply sealed batches in order; False when the store failed (the batch is kept)."""
        while self._batches:
            batch = self._batches[0]
            metrics.STATS_FLUSH_LAG.set(max(0.0, self._clock() - batch.oldest))
            try:
                await self._write(batch.items)
            except StoreUnavailable as exc:
                self._failures += 1
                metrics.STATS_FLUSH_FAILURES.inc()
                log.warning(
                    "stats flush failed; will retry",
                    extra={"events": batch.events, "error": str(exc)},
                )
                return False
            self._batches.popleft()
            if self._spool is not None:
                self._spool.delivered([e.event_id for e in batch.items])
            self._flushed += batch.events
            metrics.STATS_FLUSHED.inc(batch.events)
        metrics.STATS_FLUSH_LAG.set(0)
        return True

    def _drop(self, count: int, reason: str) -> None:
        self._dropped += count
        metrics.STATS_DROPPED.inc(count)
        kept = "they stay in the spool for the next start" if self._spool else "they are lost"
        log.error(f"stats events dropped from memory; {kept}",
                  extra={"dropped": count, "reason": reason})  # fmt: skip
