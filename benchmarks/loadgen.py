"""A lean HTTP/1.1 load client on raw asyncio protocols: it timestamps bytes and counts events.

No HTTP library parses the responses: a keep-alive connection sends a request, finds the end of
the headers, then either counts Content-Length bytes or scans a chunked body for ``data: ``
(events) and the terminating zero-length chunk. That keeps the client far cheaper per event than
the servers it measures, which the direct-to-mock column checks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

EVENT = b"data: "
CHUNKED_END = b"0\r\n\r\n"


@dataclass(slots=True)
class Exchange:
    """One request/response on a connection."""

    started: float
    status: int = 0
    first_event: float | None = None
    ended: float | None = None
    events: int = 0
    event_times: list[float] | None = None
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Connection(asyncio.Protocol):
    """A keep-alive client connection that runs one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._head = b""
        self._in_body = False
        self._length: int | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.exchange is not None and not self.exchange.done.done():
            self.exchange.done.set_exception(ConnectionError("connection lost"))

    def send(self, request: bytes, *, record_events: bool = False) -> Exchange:
        assert self.transport is not None
        self.exchange = Exchange(time.perf_counter(), event_times=[] if record_events else None)
        # Scenarios that close their own connections (idle memory) never await these answers.
        self.exchange.done.add_done_callback(_seen)
        self._head, self._in_body, self._length, self._tail = b"", False, None, b""
        self.transport.write(request)
        return self.exchange

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        now = time.perf_counter()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            exchange.status = int(head[9:12])
            self._in_body = True
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    self._length = int(line[15:])
        if self._length is not None:
            self._length -= len(data)
            if exchange.first_event is None:
                exchange.first_event = now
            if self._length <= 0:
                self._finish(exchange, now)
            return
        scan = self._tail + data
        found = scan.count(EVENT)
        if found:
            exchange.events += found
            if exchange.first_event is None:
                exchange.first_event = now
            if exchange.event_times is not None:
                exchange.event_times.extend([now] * found)
        self._tail = scan[-(len(EVENT) - 1) :] if not scan.endswith(CHUNKED_END) else b""
        if scan.endswith(CHUNKED_END):
            self._finish(exchange, now)

    def _finish(self, exchange: Exchange, now: float) -> None:
        exchange.ended = now
        if not exchange.done.done():
            exchange.done.set_result(None)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def connect(port: int) -> Connection:
    """Open one connection to 127.0.0.1:port."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, "127.0.0.1", port)
    return protocol


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of a keep-alive JSON POST."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@dataclass
class LoopResult:
    """What a closed loop of exchanges measured."""

    elapsed: float
    exchanges: list[Exchange]
    errors: int


async def closed_loop(port: int, request: bytes, *, connections: int, seconds: float) -> LoopResult:
    """Each connection sends the next request as soon as the last answer ended, for ``seconds``."""
    conns = [await connect(port) for _ in range(connections)]
    finished: list[Exchange] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def run(conn: Connection) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            exchange = conn.send(request)
            try:
                await exchange.done
            except ConnectionError:
                errors += 1
                return
            if exchange.status != 200:
                errors += 1
            finished.append(exchange)

    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return LoopResult(elapsed, finished, errors)


async def staggered_loop(
    port: int, request: bytes, *, connections: int, ramp: float, seconds: float
) -> LoopResult:
    """Closed loops of paced streams whose starts are spread evenly over ``ramp`` seconds.

    Each connection starts its first request at its own offset within the ramp, then sends the
    next as soon as the last ended, until ``ramp + seconds`` have passed; requests in flight then
    finish. So ``connections`` streams are open at once without arriving in one burst.
    """
    conns = await asyncio.gather(*(connect(port) for _ in range(connections)))
    finished: list[Exchange] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + ramp + seconds

    async def run(index: int, conn: Connection) -> None:
        nonlocal errors
        await asyncio.sleep(ramp * index / connections)
        while time.perf_counter() < deadline:
            exchange = conn.send(request, record_events=True)
            try:
                await exchange.done
            except ConnectionError:
                errors += 1
                return
            finished.append(exchange)

    await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return LoopResult(elapsed, finished, errors)


async def one_round(
    port: int, request: bytes, *, connections: int, record_events: bool = False
) -> list[Exchange]:
    """Open ``connections`` connections, send one request on each at once, wait for all answers."""
    conns = await asyncio.gather(*(connect(port) for _ in range(connections)))
    exchanges = [c.send(request, record_events=record_events) for c in conns]
    await asyncio.gather(*(e.done for e in exchanges), return_exceptions=True)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return exchanges
