"""The usage bus: stats events through a Redis Stream into the store, with guaranteed delivery.

Publishing (every worker): ``publish`` spools the event and queues it; a task sends the queue with
pipelined ``XADD`` s (one per event, never awaited by a request) and marks the events delivered in
the spool once Redis answered. While Redis is down they wait in the bounded queue and the spool.

Consuming (any worker of any instance, one consumer group): each consumer reads with
``XREADGROUP``, batches every ``flush_interval`` s or ``flush_events`` events, commits the batch to
the store and only then ``XACK`` s (and ``XDEL`` s) it. Entries a consumer read and never
acknowledged, because it died, are taken over by another with ``XAUTOCLAIM`` once they were idle
``claim_after`` seconds. The store applies each event id once, so redelivery never double-counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

from gateway import metrics
from gateway.background import cancel_and_wait
from gateway.config import StatsSettings
from gateway.redisconn import RedisConn, RedisUnavailable
from gateway.spool import Spool
from gateway.stats import RETRY_BACKOFF_MAX, SidecarStatistics
from gateway.store.base import StatsEvent, Store, StoreUnavailable

log = logging.getLogger("gateway.bus")

GROUP = "store"
SEND_BATCH = 500  # XADDs per pipeline
CLAIM_EVERY = 1.0  # seconds between XAUTOCLAIM rounds
# Consumers of dead workers, with nothing pending, leave the group after an hour idle.
FORGET_CONSUMER_AFTER = 3600.0
FORGET_EVERY = 60.0


def stream_key(prefix: str) -> str:
    """The Redis Stream that carries usage events."""
    return f"{prefix}:usage:events"


class BusPublisher:
    """A worker's side of the bus: spool, queue, pipelined XADD."""

    def __init__(
        self,
        redis: RedisConn,
        *,
        stream: str,
        settings: StatsSettings,
        spool: Spool | None = None,
    ) -> None:
        self._redis = redis.client
        self._guard = redis.guard("bus")
        self._stream = stream
        self._settings = settings
        self._spool = spool
        self._queue: collections.deque[StatsEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._published = self._sent = self._dropped = self._failures = 0

    def publish(self, event: StatsEvent) -> None:
        """Spool and queue one event; never blocks."""
        if self._spool is not None:
            self._spool.ended(event)
        self._published += 1
        metrics.STATS_PUBLISHED.inc()
        self._enqueue(event)

    def replay(self, events: list[StatsEvent]) -> None:
        """Queue events recovered from a dead worker's spool."""
        for event in events:
            self._enqueue(event)

    def _enqueue(self, event: StatsEvent) -> None:
        # Bounded by the buffer plus the batches the sidecar would hold: beyond it an event
        # stays only in the spool (replayed at the next start), counted as dropped from memory.
        if len(self._queue) >= self._settings.buffer_size * 10:
            self._dropped += 1
            metrics.STATS_DROPPED.inc()
            if self._dropped % 1000 == 1:
                log.error("usage bus queue full; events stay in the spool for the next start",
                          extra={"dropped": self._dropped})  # fmt: skip
            return
        self._queue.append(event)
        self._wake.set()

    def statistics(self) -> SidecarStatistics:
        """Counters for tests, health and logs."""
        return SidecarStatistics(
            buffered=len(self._queue),
            pending_batches=0,
            published=self._published,
            flushed=self._sent,
            dropped=self._dropped,
            failures=self._failures,
        )

    def start(self) -> None:
        """Start sending in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-bus-send")

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            elif not self._queue:
                self._wake.clear()
                await self._wake.wait()
            backoff = 0.0 if await self._send() else min(max(backoff * 2, 0.2), RETRY_BACKOFF_MAX)

    async def _send(self) -> bool:
        """XADD everything queued; False when Redis failed (the events stay queued)."""
        while self._queue:
            batch = [self._queue[i] for i in range(min(SEND_BATCH, len(self._queue)))]
            pipe: Any = self._redis.pipeline(transaction=False)  # queued calls typed as awaitables
            for event in batch:
                pipe.xadd(self._stream, {"e": orjson.dumps(event)})
            try:
                await self._guard.call(pipe.execute())
            except RedisUnavailable as exc:
                self._failures += 1
                metrics.STATS_FLUSH_FAILURES.inc()
                log.warning("usage bus publish failed; will retry",
                            extra={"events": len(batch), "error": str(exc)})  # fmt: skip
                return False
            for _ in batch:
                self._queue.popleft()
            self._sent += len(batch)
            if self._spool is not None:
                self._spool.delivered([e.event_id for e in batch])
        return True

    async def stop(self, deadline: float) -> None:
        """Stop the task, then send what is left, retrying until ``deadline``."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        delay = 0.2
        while self._queue and not await self._send():
            if time.monotonic() + delay > deadline:
                log.error("usage bus unreachable at shutdown; events stay in the spool",
                          extra={"events": len(self._queue)})  # fmt: skip
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class BusConsumer:
    """One consumer of the group: read, commit to the store, then acknowledge."""

    def __init__(
        self,
        redis: RedisConn,
        store: Store,
        *,
        stream: str,
        settings: StatsSettings,
        name: str | None = None,
    ) -> None:
        # A connection of its own without a socket timeout: XREADGROUP BLOCK outlives the
        # socket timeout; every call is bounded by the guard instead.
        self._conn = redis.blocking_reader()
        self._redis = self._conn.client
        self._guard = self._conn.guard("bus")
        self._store = store
        self._stream = stream
        self._settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # Entry id -> event (None: unreadable, acknowledged with the batch), read and not acked.
        self._pending: dict[str, StatsEvent | None] = {}
        self._first_at: float | None = None
        self._last_claim = 0.0
        self._last_forget = 0.0
        self._task: asyncio.Task[None] | None = None
        self.committed = 0
        self.claimed = 0

    def start(self) -> None:
        """Start consuming in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-bus-consume")

    async def _call(self, call: Any, extra: float = 0.0) -> Any:
        return await self._guard.call(call, extra=extra)

    async def _run(self) -> None:
        backoff = 0.0
        grouped = False
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                if not grouped:
                    await self._create_group()
                    grouped = True
                await self._step()
                backoff = 0.0
            except RedisUnavailable as exc:
                log.warning("usage bus read failed; will retry", extra={"error": str(exc)})
                backoff = min(max(backoff * 2, 0.5), RETRY_BACKOFF_MAX)
            except StoreUnavailable as exc:
                log.warning("usage bus commit failed; will retry",
                            extra={"events": len(self._pending), "error": str(exc)})  # fmt: skip
                backoff = min(max(backoff * 2, 0.5), RETRY_BACKOFF_MAX)

    async def _create_group(self) -> None:
        async def create() -> None:
            try:
                await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:  # an answer, not a failure: the group exists
                if "BUSYGROUP" not in str(exc):
                    raise

        await self._call(create())

    async def _step(self) -> None:
        """Claim what dead consumers left, read more, and commit once a batch is due."""
        now = time.monotonic()
        if now - self._last_forget >= FORGET_EVERY:
            self._last_forget = now
            await self._forget_dead_consumers()
        room = self._settings.flush_events - len(self._pending)
        if room > 0 and now - self._last_claim >= CLAIM_EVERY:
            self._last_claim = now
            answer = await self._call(
                self._redis.xautoclaim(
                    self._stream, GROUP, self.name, int(self._settings.claim_after * 1000),
                    start_id="0-0", count=room,
                )
            )  # fmt: skip
            claimed = self._take(answer[1])
            self.claimed += claimed
            if claimed:
                log.info("claimed usage events a consumer left unacknowledged",
                         extra={"events": claimed, "consumer": self.name})  # fmt: skip
        room = self._settings.flush_events - len(self._pending)
        if room > 0:
            block = self._settings.flush_interval
            if self._first_at is not None:
                block = max(0.0, self._first_at + self._settings.flush_interval - now)
            block = min(block, CLAIM_EVERY)
            answer = await self._call(
                self._redis.xreadgroup(
                    GROUP, self.name, {self._stream: ">"}, count=room,
                    block=max(1, int(block * 1000)),
                ),
                extra=block,
            )  # fmt: skip
            for _, entries in answer or []:
                self._take(entries)
        if self._pending and (
            len(self._pending) >= self._settings.flush_events
            or time.monotonic() - (self._first_at or 0.0) >= self._settings.flush_interval
        ):
            await self.commit()

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers idle for an hour with nothing pending (workers that are gone)."""
        consumers = await self._call(self._redis.xinfo_consumers(self._stream, GROUP))
        for consumer in consumers:
            idle = int(consumer.get("idle", 0)) / 1000
            gone = consumer["name"] != self.name and not consumer["pending"]
            if gone and idle > FORGET_CONSUMER_AFTER:
                name = consumer["name"]
                await self._call(self._redis.xgroup_delconsumer(self._stream, GROUP, name))

    def _take(self, entries: list[Any]) -> int:
        taken = 0
        for entry_id, fields in entries:
            if entry_id in self._pending or not fields:
                continue
            try:
                self._pending[entry_id] = StatsEvent.from_dict(orjson.loads(fields["e"]))
            except (KeyError, TypeError, orjson.JSONDecodeError):
                log.error("unreadable usage bus entry; acknowledged and skipped",
                          extra={"entry": entry_id})  # fmt: skip
                self._pending[entry_id] = None
            taken += 1
            if self._first_at is None:
                self._first_at = time.monotonic()
        return taken

    async def commit(self) -> None:
        """Apply the pending batch to the store, then acknowledge and delete its entries."""
        events = [e for e in self._pending.values() if e is not None]
        with metrics.STATS_FLUSH_DURATION.time():
            await self._store.record_events(events)
        ids = list(self._pending)
        pipe: Any = self._redis.pipeline(transaction=False)  # queued calls typed as awaitables
        pipe.xack(self._stream, GROUP, *ids)
        pipe.xdel(self._stream, *ids)
        await self._call(pipe.execute())
        self._pending.clear()
        self._first_at = None
        self.committed += len(events)
        metrics.STATS_FLUSHED.inc(len(events))

    async def stop(self, deadline: float) -> None:
        """Stop reading; commit what was read if the store answers before ``deadline`` (what is
        left unacknowledged is claimed by another consumer, or this one's successor)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._pending:
            with contextlib.suppress(RedisUnavailable, StoreUnavailable):
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await self.commit()
        await self._conn.aclose()
