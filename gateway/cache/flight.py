"""A request in flight that identical requests can join, and the recording the cache stores.

A *flight* reads one upstream response in a task of its own and keeps what arrived (bounded). Every
client of it, the first one included, reads through a :class:`FlightReader`, which looks like an
upstream response to the relay: the relay code is the same whether it serves the upstream itself,
a coalesced request or a cache hit. A reader that joins late starts from the first chunk and then
follows live. When the last reader leaves, the upstream request is cancelled; while any remains,
it goes on. An upstream failure reaches every reader as the same error, at the same place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.background import mark_retrieved
from gateway.config import Deployment
from gateway.errors import GatewayError, UpstreamError, UpstreamProtocolError
from gateway.relay import OpenedUpstream

DONE_TAIL = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class FlightMeta:
    """What the upstream answered with (or what the cache recorded)."""

    status: int
    content_type: str
    deployment: Deployment


@dataclass(slots=True)
class OpenedReader:
    """The relay's view of a joined flight: a response and the deployment behind it."""

    response: FlightReader
    deployment: Deployment


class Flight:
    """One upstream response shared by every reader that joined it."""

    def __init__(self, key: str, *, max_bytes: int) -> None:
        loop = asyncio.get_running_loop()
        self.key = key
        self.chunks: list[bytes] = []
        self.offsets: list[float] = []  # seconds from the first chunk, per chunk
        self.base = 0  # index of chunks[0]: chunks every reader has read are dropped once the
        # flight is over max_bytes (no longer cacheable nor joinable)
        self.size = 0
        self.max_bytes = max_bytes
        self.opened: asyncio.Future[FlightMeta] = loop.create_future()
        self.opened.add_done_callback(mark_retrieved)
        self.error: BaseException | None = None
        self.done = False
        self.clean = False  # read to its end without an error
        self.readers: list[FlightReader] = []
        self.task: asyncio.Task[None] | None = None
        self._loop = loop
        self._first_at: float | None = None
        self._changed = asyncio.Event()
        self._consumed = asyncio.Event()

    @property
    def recorded(self) -> bool:
        """Everything arrived is still held (under ``max_bytes``): cacheable and joinable."""
        return self.size <= self.max_bytes

    @property
    def joinable(self) -> bool:
        return not self.done and self.recorded and self.error is None

    # -- producing --------------------------------------------------------------------------------

    def start(
        self,
        opening: Awaitable[OpenedUpstream],
        *,
        stream: bool,
        body_limit: int,
        on_done: Callable[[Flight], None],
    ) -> None:
        """Read the upstream in a task of the flight's own."""
        self.task = self._loop.create_task(self._produce(opening, stream, body_limit, on_done))

    @classmethod
    def replay(
        cls, key: str, chunks: list[bytes], offsets: list[float], meta: FlightMeta
    ) -> Flight:
        """A finished flight over recorded chunks (a cache hit)."""
        flight = cls(key, max_bytes=sum(map(len, chunks)))
        flight.chunks, flight.offsets = chunks, offsets
        flight.size = flight.max_bytes
        flight.opened.set_result(meta)
        flight.done = flight.clean = True
        return flight

    async def _produce(
        self,
        opening: Awaitable[OpenedUpstream],
        stream: bool,
        body_limit: int,
        on_done: Callable[[Flight], None],
    ) -> None:
        try:
            opened = await opening
        except BaseException as exc:
            self.error = exc
            if not self.opened.done():
                self.opened.set_exception(
                    exc
                    if isinstance(exc, Exception)
                    else UpstreamError("The request was cancelled.")
                )
            self._finish(on_done)
            raise
        response = opened.response
        self.opened.set_result(
            FlightMeta(response.status, response.content_type, opened.deployment)
        )
        try:
            if stream:
                while True:
                    await self._backpressure()
                    chunk = await response.read_chunk()
                    if not chunk:
                        break
                    self._append(chunk)
                    while more := response.read_buffered():
                        self._append(more)
                        chunk = more
                    if chunk.endswith(DONE_TAIL):
                        break  # finished: store it now rather than at the transport's end
            else:
                async with asyncio.timeout(opened.deployment.timeouts.idle):
                    self._append(await response.read_body(body_limit))
            self.clean = True
        except asyncio.CancelledError:
            self.error = UpstreamError("Every client of this request left.")
            raise
        except TimeoutError:
            self.error = UpstreamProtocolError("The upstream answer did not arrive in time.")
        except Exception as exc:
            self.error = exc
        finally:
            response.close(complete=self.clean)
            self._finish(on_done)

    def _append(self, chunk: bytes) -> None:
        now = self._loop.time()
        if self._first_at is None:
            self._first_at = now
        self.chunks.append(chunk)
        self.offsets.append(now - self._first_at)
        self.size += len(chunk)
        if not self.recorded and self.readers:
            drop = min(r.pos for r in self.readers) - self.base
            if drop > 0:
                del self.chunks[:drop], self.offsets[:drop]
                self.base += drop
        self._notify()

    async def _backpressure(self) -> None:
        """Wait while the slowest reader is more than ``max_bytes`` behind (bounded memory)."""
        while self.readers and self.size - min(r.consumed for r in self.readers) > self.max_bytes:
            self._consumed.clear()
            await self._consumed.wait()

    def _finish(self, on_done: Callable[[Flight], None]) -> None:
        self.done = True
        self._notify()
        on_done(self)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self) -> None:
        await self._changed.wait()

    # -- reading ----------------------------------------------------------------------------------

    def attach(self, *, paced: bool = False) -> FlightReader:
        reader = FlightReader(self, paced)
        self.readers.append(reader)
        return reader

    def detach(self, reader: FlightReader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
        self._consumed.set()
        if not self.readers and not self.done and self.task is not None:
            self.task.cancel()  # nobody is left to read it: stop the upstream

    def reader_error(self) -> GatewayError:
        error = self.error
        if isinstance(error, GatewayError):
            return error
        return UpstreamError(f"The upstream request failed: {type(error).__name__}.")


class FlightReader:
    """One client's position in a flight; an UpstreamResponse for the relay."""

    __slots__ = (
        "_started",
        "closed",
        "consumed",
        "content_type",
        "flight",
        "paced",
        "pos",
        "status",
    )

    def __init__(self, flight: Flight, paced: bool) -> None:
        self.flight = flight
        self.paced = paced
        self.pos = 0
        self.consumed = 0
        self.closed = False
        self.status = 200
        self.content_type = "application/octet-stream"
        self._started: float | None = None

    async def opening(self) -> OpenedReader:
        """Wait for the flight's upstream answer (shared, so a cancel here cancels only us)."""
        try:
            meta = await asyncio.shield(self.flight.opened)
        except BaseException:
            self.close()
            raise
        self.status, self.content_type = meta.status, meta.content_type
        return OpenedReader(self, meta.deployment)

    def _take(self) -> bytes:
        chunk = self.flight.chunks[self.pos - self.flight.base]
        self.pos += 1
        self.consumed += len(chunk)
        self.flight._consumed.set()
        return chunk

    async def read_chunk(self) -> bytes:
        flight = self.flight
        while True:
            if self.pos - flight.base < len(flight.chunks):
                if self.paced:
                    await self._pace()
                return self._take()
            if flight.done:
                if flight.error is not None:
                    raise flight.reader_error()
                return b""
            await flight.changed()

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        offset = self.flight.offsets[self.pos - self.flight.base]
        if self._started is None:
            self._started = loop.time() - offset
        delay = self._started + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def read_buffered(self) -> bytes:
        if self.paced or self.pos - self.flight.base >= len(self.flight.chunks):
            return b""
        return self._take()

    async def read_body(self, limit: int) -> bytes:
        flight = self.flight
        while not flight.done:
            await flight.changed()
        if flight.error is not None:
            raise flight.reader_error()
        body = b"".join(flight.chunks)
        if len(body) > limit:
            raise UpstreamProtocolError(f"The upstream answer is larger than {limit} bytes.")
        return body

    def close(self, *, complete: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.flight.detach(self)


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
