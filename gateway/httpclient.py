"""The upstream HTTP/1.1 client at the transport level: an ``asyncio.Protocol`` per connection,
responses parsed by httptools (llhttp, the C parser uvicorn uses), pooled per deployment.

Why not aiohttp's client: a stream read through it costs an ``await`` per read through its
StreamReader plus a timeout object per read, which was most of a relayed event's CPU. Here the
body goes from ``data_received`` through the parser's ``on_body`` callback straight to a consumer,
with no task wake-up per event. Deliberately minimal: POST with a known length, never a redirect
followed (a 3xx is an upstream error), never a body inflated (``Accept-Encoding: identity``, and a
compressed answer anyway is a protocol error), bounded headers, bounded buffering while nobody
consumes.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from gateway.errors import (
    GatewayError,
    UpstreamProtocolError,
    UpstreamUnreachable,
)
from gateway.stream import BodyConsumer

MAX_HEADER_BYTES = 64 * 1024
# Body bytes held while no consumer is attached yet; past it, reading pauses.
UNCONSUMED_BYTES = 64 * 1024
# After a stream's logical end ([DONE]) the chunked terminator is usually a packet behind.
RELEASE_WAIT_SECONDS = 1.0


class Pool(Protocol):
    """Where a connection goes back when its exchange is over (gateway/httppool.py)."""

    loop: asyncio.AbstractEventLoop

    def idle(self, conn: Connection) -> None: ...


class Endpoint:
    """Where a deployment lives: scheme, host, port, path prefix; the TLS context if any."""

    __slots__ = ("host", "host_header", "port", "prefix", "ssl")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        self.host_header = self.host if self.port == default else f"{self.host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )


class Exchange:
    """One request and its response on a connection: the response side of ``UpstreamResponse``."""

    __slots__ = (
        "_consumer",
        "_pending",
        "_pending_bytes",
        "_release_timer",
        "body_done",
        "conn",
        "content_encoding",
        "content_type",
        "error",
        "header_bytes",
        "headers_done",
        "length_known",
        "location",
        "logical_end",
        "retry_after",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self.conn: Connection | None = conn
        self.status = 0
        self.content_type = "application/json"
        self.content_encoding: str | None = None
        self.retry_after: str | None = None
        self.location: str | None = None
        self.header_bytes = 0
        self.length_known = False
        self.headers_done: asyncio.Future[None] = conn.loop.create_future()
        self.body_done = False  # the HTTP message ended
        self.logical_end = False  # the caller saw the stream's end and wants the connection kept
        self.error: GatewayError | None = None
        self._consumer: BodyConsumer | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._release_timer: asyncio.TimerHandle | None = None

    # -- from the connection ----------------------------------------------------------------------

    def on_body(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.body(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > UNCONSUMED_BYTES and self.conn is not None:
            self.conn.pause()

    def on_end(self, error: GatewayError | None) -> None:
        if error is None:
            self.body_done = True
        elif self.error is None:
            self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(
                error or UpstreamProtocolError("The upstream sent no response.")
            )
            return
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.end(error)
        if error is None and self.logical_end:
            self._give_back()

    # -- UpstreamResponse -------------------------------------------------------------------------

    def stream_to(self, consumer: BodyConsumer) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        for data in pending:
            consumer.body(data)
        if self.body_done or self.error is not None:
            consumer.end(self.error)
            return
        self._consumer = consumer
        if self.conn is not None:
            self.conn.resume()

    def pause(self) -> None:
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    async def read_body(self, limit: int) -> bytes:
        reader = _BodyReader(limit, self.conn.loop if self.conn else asyncio.get_running_loop())
        self.stream_to(reader)
        return await reader.done

    def close(self, *, complete: bool = False) -> None:
        conn = self.conn
        if conn is None:
            return
        self._consumer = None
        if self.body_done and self.error is None:
            self._give_back()
        elif complete and self.error is None:
            # The terminator is on its way: keep the connection if it comes soon.
            self.logical_end = True
            conn.resume()
            self._release_timer = conn.loop.call_later(RELEASE_WAIT_SECONDS, self._abort)
        else:
            self._abort()

    def _give_back(self) -> None:
        conn, self.conn = self.conn, None
        if self._release_timer is not None:
            self._release_timer.cancel()
        if conn is not None:
            conn.finished(self)

    def _abort(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()


class _BodyReader:
    """A consumer that collects a whole body, bounded."""

    __slots__ = ("_parts", "_size", "done", "limit")

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.done: asyncio.Future[bytes] = loop.create_future()

    def body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            if not self.done.done():
                self.done.set_exception(
                    UpstreamProtocolError(
                        f"The upstream response is larger than the limit of {self.limit} bytes."
                    )
                )
            return
        self._parts.append(data)

    def end(self, error: GatewayError | None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(b"".join(self._parts))


class Connection(asyncio.Protocol):
    """One upstream TCP connection; parses responses and hands them to the current exchange."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.used = 0  # requests sent on it

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            self.abort()  # bytes nobody asked for: the connection is not reusable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"The upstream sent malformed HTTP ({exc})."))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if exchange.headers_done.done() and not exchange.length_known and not exchange.body_done:
            exchange.on_end(None)  # a body delimited by the connection's end
        elif not exchange.body_done:
            exchange.on_end(
                UpstreamProtocolError(
                    "The upstream closed the connection in the middle of the response."
                )
                if exchange.headers_done.done()
                else UpstreamUnreachable("The upstream closed the connection before answering.")
            )

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.header_bytes += len(name) + len(value)
        if exchange.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers too large")
        lower = name.lower()
        if lower == b"content-type":
            exchange.content_type = value.decode("latin-1")
        elif lower == b"content-encoding":
            exchange.content_encoding = value.decode("latin-1").strip().lower()
        elif lower == b"retry-after":
            exchange.retry_after = value.decode("latin-1")
        elif lower == b"location":
            exchange.location = value.decode("latin-1")
        elif lower in (b"content-length", b"transfer-encoding"):
            exchange.length_known = True

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.status = self.parser.get_status_code()
        if exchange.status < 200:
            return  # 1xx: the real response follows (on_message_complete resets nothing here)
        if not exchange.headers_done.done():
            exchange.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or exchange.status < 200:
            return
        keep = self.parser.should_keep_alive()
        if not keep:
            self.exchange = None
            exchange.conn = None
            self.abort()
        exchange.on_end(None)

    # -- the pool's side --------------------------------------------------------------------------

    def send(self, exchange: Exchange, head: bytes, body: bytes) -> None:
        self.exchange = exchange
        self.used += 1
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)

    def finished(self, exchange: Exchange) -> None:
        """The exchange's response ended cleanly: the connection may take the next request."""
        if self.exchange is exchange:
            self.exchange = None
        self.resume()
        if self.closed or self.exchange is not None:
            return
        self.idle_since = self.loop.time()
        self.pool.idle(self)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: GatewayError) -> None:
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange.on_end(error)
