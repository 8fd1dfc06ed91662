"""A request in flight that identical requests can join, and the replay of a recorded answer.

A *flight* runs one router request in a task of its own. For a stream the router's answer is an
event source that records what it frames (bounded by ``max_object_bytes``); every client of the
flight, the first one included, is a sink of that one source, and one that joins late gets the
recording first, then follows live. When the last client leaves, the source has no sink and
cancels the upstream; while any remains, it goes on. An upstream failure reaches every client as the
same error, at the same place. When the source ends cleanly the recording is the cache entry.

A cache hit is an event source too, over a :class:`RecordedResponse` that plays the stored bytes at
once or at their recorded pace: the relay cannot tell it from an upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.background import mark_retrieved
from gateway.config import Deployment
from gateway.deployments import OpenedUpstream
from gateway.errors import UpstreamError
from gateway.source import EventSource
from gateway.stream import BodyConsumer


@dataclass(slots=True)
class Answer:
    """An OpenedUpstream that is not the router's: a cache hit, or a flight's answer."""

    deployment: Deployment
    source: EventSource | None = None
    status: int = 200
    body: bytes = b""


class Flight:
    """One upstream request shared by every client that joined it."""

    def __init__(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        self.key = key
        self.opened: asyncio.Future[OpenedUpstream] = loop.create_future()
        self.opened.add_done_callback(mark_retrieved)
        self.task: asyncio.Task[None] | None = None
        self.waiting = 0  # clients waiting for the answer
        self.failed = False
        self._loop = loop

    @property
    def joinable(self) -> bool:
        """Not failed, and (once answered) a stream still recorded from its start."""
        if self.failed:
            return False
        if not self.opened.done():
            return True
        source = self.opened.result().source
        return source is not None and source.recording.on and not source.done

    @property
    def clean(self) -> bool:
        """A JSON answer that arrived with status 200 (a stream says so itself)."""
        if not self.opened.done() or self.opened.exception() is not None:
            return False
        opened = self.opened.result()
        return opened.source.clean if opened.source is not None else opened.status == 200

    def start(
        self,
        opening: Awaitable[OpenedUpstream],
        on_done: Callable[[Flight], None],
    ) -> None:
        """Run the router's request in a task of the flight's own."""
        self.task = self._loop.create_task(self._open(opening, on_done))

    async def _open(
        self, opening: Awaitable[OpenedUpstream], on_done: Callable[[Flight], None]
    ) -> None:
        try:
            opened = await opening
        except BaseException as exc:
            self.failed = True
            self.opened.set_exception(
                exc if isinstance(exc, Exception) else UpstreamError("The request was cancelled.")
            )
            on_done(self)
            if not isinstance(exc, Exception):
                raise
            return
        self.opened.set_result(opened)
        source = opened.source
        if source is None:
            on_done(self)
        else:
            source.watch(lambda _: on_done(self))

    async def join(self) -> OpenedUpstream:
        """Wait for the flight's answer; a client that leaves meanwhile leaves only itself,
        and the last one to leave cancels the request."""
        self.waiting += 1
        try:
            return await asyncio.shield(self.opened)
        except asyncio.CancelledError:
            if self.waiting == 1 and self.task is not None and not self.opened.done():
                self.task.cancel()
            raise
        finally:
            self.waiting -= 1


class Flights:
    """This worker's joinable flights, by cache key."""

    def __init__(self) -> None:
        self._live: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._live)

    def joinable(self, key: str) -> Flight | None:
        flight = self._live.get(key)
        return flight if flight is not None and flight.joinable else None

    def add(self, flight: Flight) -> None:
        self._live[flight.key] = flight

    def remove(self, flight: Flight) -> None:
        if self._live.get(flight.key) is flight:
            del self._live[flight.key]


class RecordedResponse:
    """A stored stream played back as an upstream response: at once, or at its recorded pace."""

    __slots__ = (
        "_chunks",
        "_consumer",
        "_loop",
        "_next",
        "_offsets",
        "_paced",
        "_paused",
        "_started",
        "_timer",
        "content_type",
        "status",
    )

    def __init__(self, chunks: list[bytes], offsets: list[float], *, paced: bool) -> None:
        self.status = 200
        self.content_type = "text/event-stream"
        self._chunks = chunks
        self._offsets = offsets
        self._paced = paced
        self._consumer: BodyConsumer | None = None
        self._loop = asyncio.get_running_loop()
        self._next = 0
        self._paused = False
        self._started = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def stream_to(self, consumer: BodyConsumer) -> None:
        self._consumer = consumer
        self._started = self._loop.time()
        self._play()

    def _play(self) -> None:
        self._timer = None
        while self._consumer is not None and not self._paused:
            if self._next >= len(self._chunks):
                consumer, self._consumer = self._consumer, None
                consumer.end(None)
                return
            if self._paced:
                due = self._started + self._offsets[self._next]
                if due > self._loop.time():
                    self._timer = self._loop.call_at(due, self._play)
                    return
            chunk = self._chunks[self._next]
            self._next += 1
            self._consumer.body(chunk)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._timer is None:
                self._play()

    async def read_body(self, limit: int) -> bytes:
        return b"".join(self._chunks)

    def close(self, *, complete: bool = False) -> None:
        self._consumer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
