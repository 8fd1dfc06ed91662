"""Resumable streams: the upstream is read by a task of its own into a numbered event log that any
client of the stream's key can replay from an id and then follow live.

The log lives in the producing worker's memory (a bounded deque); with Redis it is mirrored into a
Redis Stream (``P:{s:<id>}:ev``, entry ids ``<seq>-0``, trimmed to ``max_events``) with a meta hash
(``P:{s:<id>}:meta``: owner, done, cancel, seen), both expiring ``retention`` seconds after the end,
so another worker or instance can serve a resume. Every mirror call goes through the Redis seam's
guard, bounded by the store's timeout. A stream nobody reads keeps running for ``grace`` seconds
waiting for a resumer, then its upstream is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Awaitable

from gateway import metrics
from gateway.background import mark_retrieved
from gateway.config import StreamSettings
from gateway.deployments import OpenedUpstream
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.eventlog import EventLog, RedisLogs
from gateway.redisconn import RedisUnavailable
from gateway.source import EventSource
from gateway.stream import StreamOutcome, Termination

log = logging.getLogger("gateway.resumable")

WATCH_SECONDS = 1.0  # how often an unread stream checks its grace period and a remote cancel
CANCELLED = (
    b'{"error":{"message":"The stream was cancelled.","type":"cancelled",'
    b'"param":null,"code":"stream_cancelled"}}'
)
ABANDONED = (
    b'{"error":{"message":"Nobody resumed the stream within its grace period.",'
    b'"type":"cancelled","param":null,"code":"stream_abandoned"}}'
)


def new_stream_id() -> str:
    return "strm_" + secrets.token_hex(16)


class ResumableStream:
    """The producer of one stream: a sink of its event source that appends to the event log."""

    def __init__(
        self,
        log: EventLog,
        outcome: StreamOutcome,
        *,
        strip_usage: bool,
        mirror: RedisLogs | None,
        grace: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.log = log
        self.outcome = outcome
        self.strip_usage = strip_usage
        self.mirror = mirror
        self.grace = grace
        self.opened: asyncio.Future[None] = loop.create_future()
        self.opened.add_done_callback(mark_retrieved)
        self.done: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.source: EventSource | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.cancel_reason = CANCELLED
        self._mirror_ok = mirror is not None
        self._pending: list[tuple[int, bytes]] = []  # events not yet mirrored to Redis
        self._ended = False
        self._end_error: GatewayError | None = None
        self._changed = asyncio.Event()  # something to mirror, or the end
        self._loop = loop

    def start(self, opening: Awaitable[OpenedUpstream]) -> None:
        self.task = self._loop.create_task(self._run(opening))
        self._watcher = self._loop.create_task(self._watch())

    def cancel(self, reason: bytes = CANCELLED) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel()

    # -- Sink -------------------------------------------------------------------------------------

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        if usage_only and self.strip_usage:
            return
        for data in payloads:
            self._pending.append(self.log.append(data))
        if len(self._pending) > self.log.max_events and self._mirror_ok:
            self._mirror_failed(RuntimeError("the Redis mirror fell too far behind"))
        self._changed.set()

    def keepalive(self) -> None:
        return None  # readers send their own

    def finish(self, error: GatewayError | None) -> None:
        self._ended, self._end_error = True, error
        self._changed.set()

    # -- the producer task ------------------------------------------------------------------------

    async def _run(self, opening: Awaitable[OpenedUpstream]) -> None:
        source: EventSource | None = None
        try:
            if self.mirror is not None:
                await self._mirror(self.mirror.create(self.log.stream_id, self.log.owner))
            opened = await opening
            source = self.source = opened.source
            assert source is not None
            self.outcome.source = source  # live counters for the spool's progress lines
            self.outcome.deployment = opened.deployment.name
            self.outcome.first_event_at = self._loop.time()
            source.attach(self)
            self.opened.set_result(None)
            error = await self._follow()
            self._record(source)
            if error is not None:
                self.outcome.error = error
                self.outcome.termination = (
                    Termination.TIMEOUT
                    if isinstance(error, UpstreamTimeout)
                    else Termination.UPSTREAM_ERROR
                )
                self._emit(error.to_json())
            elif source.termination is not Termination.COMPLETED:
                self.outcome.termination = source.termination
        except asyncio.CancelledError:
            self.outcome.termination = Termination.CLIENT_DISCONNECT
            if source is not None:
                self._record(source)
            self._emit(self.cancel_reason)
        except GatewayError as exc:
            if not self.opened.done():
                self.opened.set_exception(exc)  # before any event: a real HTTP error
            else:
                self.outcome.error, self.outcome.termination = exc, Termination.UPSTREAM_ERROR
                self._emit(exc.to_json())
        except Exception as exc:  # never let a producer die silently
            log.exception("resumable stream failed", extra={"stream_id": self.log.stream_id})
            error = UpstreamError(f"The stream failed: {type(exc).__name__}.")
            self.outcome.error, self.outcome.termination = error, Termination.UPSTREAM_ERROR
            if not self.opened.done():
                self.opened.set_exception(error)
            else:
                self._emit(error.to_json())
        finally:
            if source is not None:
                source.detach(self)
            self.log.finish()
            if self.mirror is not None and self._mirror_ok:
                await self._flush_mirror()
                await self._mirror(self.mirror.finish(self.log.stream_id, self.log.next_seq))
            if not self.opened.done():
                self.opened.set_result(None)
            self.done.set_result(None)

    async def _follow(self) -> GatewayError | None:
        """Mirror what arrives (one pipeline per batch) until the source finishes."""
        while True:
            if self._pending and self.mirror is not None and self._mirror_ok:
                await self._flush_mirror()
                continue
            if self._ended:
                return self._end_error
            self._changed.clear()
            await self._changed.wait()

    def _record(self, source: EventSource) -> None:
        self.outcome.source = None
        self.outcome.events = source.events
        self.outcome.content_events = source.content_events
        self.outcome.usage = source.usage

    def _emit(self, data: bytes) -> None:
        self._pending.append(self.log.append(data))

    async def _flush_mirror(self) -> None:
        items, self._pending = self._pending, []
        if items and self.mirror is not None and self._mirror_ok:
            await self._mirror(self.mirror.append(self.log.stream_id, items))

    async def _mirror(self, call: Awaitable[object]) -> None:
        """Mirror to Redis; on failure stop mirroring (the stream goes on, resumable here only)."""
        try:
            await call
        except RedisUnavailable as exc:
            self._mirror_failed(exc)

    def _mirror_failed(self, exc: BaseException) -> None:
        self._mirror_ok = False
        self._pending = []
        metrics.RESUME_MIRROR_FAILURES.inc()
        log.warning(
            "stream no longer mirrored to Redis",
            extra={"stream_id": self.log.stream_id, "error": repr(exc)},
        )

    async def _watch(self) -> None:
        """Cancel the upstream once nobody has read the stream for the grace period, or when a
        cancel was asked for through another worker."""
        while not self.done.done():
            await asyncio.sleep(WATCH_SECONDS)
            seen = self.log.left_at
            if self.mirror is not None and self._mirror_ok:
                try:
                    cancel, remote = await self.mirror.watch(self.log.stream_id)
                except RedisUnavailable:
                    cancel, remote = False, 0.0
                if cancel:
                    self.cancel()
                    return
                seen = max(seen, remote)
            if self.log.readers == 0 and time.time() - seen > self.grace:
                self.cancel(ABANDONED)
                return


class ResumableStreams:
    """This worker's resumable streams, bounded, forgotten ``retention`` seconds after they end."""

    def __init__(self, settings: StreamSettings, mirror: RedisLogs | None) -> None:
        self.settings = settings
        self.mirror = mirror
        self._streams: collections.OrderedDict[str, ResumableStream] = collections.OrderedDict()

    def start(
        self,
        owner: str,
        opening: Awaitable[OpenedUpstream],
        outcome: StreamOutcome,
        *,
        strip_usage: bool,
    ) -> ResumableStream:
        self._expire()
        stream_id = new_stream_id()
        event_log = EventLog(stream_id, owner, self.settings.max_events)
        stream = ResumableStream(
            event_log,
            outcome,
            strip_usage=strip_usage,
            mirror=self.mirror,
            grace=self.settings.grace,
        )
        self._streams[stream_id] = stream
        stream.start(opening)
        metrics.RESUMABLE_STREAMS.inc()
        return stream

    def get(self, stream_id: str) -> ResumableStream | None:
        self._expire()
        return self._streams.get(stream_id)

    def _expire(self) -> None:
        now = time.time()
        for stream_id, stream in list(self._streams.items()):
            ended = stream.log.ended_at
            too_many = len(self._streams) > self.settings.max_streams
            if ended is not None and (too_many or now - ended > self.settings.retention):
                del self._streams[stream_id]

    async def close(self, grace: float) -> None:
        """Let running streams finish within ``grace``, then cancel them."""
        running = [s.done for s in self._streams.values() if not s.done.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        for stream in self._streams.values():
            stream.cancel()
        rest = [s.done for s in self._streams.values() if not s.done.done()]
        if rest:
            await asyncio.wait(rest, timeout=2.0)
