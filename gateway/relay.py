"""The client relay: a sink of the event source that writes straight to the client's transport.

The response headers wait for the first upstream event (the router only hands over a stream whose
first event arrived), so a failure before it is still a real HTTP status; if that takes longer than
the keep-alive interval, the headers go out with a keep-alive comment and the wait goes on. After
the headers, any failure (upstream error, timeout, malformed stream, shutdown) ends the stream with
one ``data: {"error": ...}`` event, no ``[DONE]``.

Once the stream runs, events are written from the source's callback, chunk-framed here, with no
task wake-up per event. Flow control: when more than ``HIGH_WATER`` bytes wait in the client's
transport, the upstream stops being read; the handler task waits for the client to take them
(at most ``write_stall_timeout``, then the client is dropped) and reading resumes. So one stream
holds at most about ``HIGH_WATER`` plus one upstream read in memory, whatever the client does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
from aiohttp import web

from gateway import metrics, redact
from gateway.config import ServerSettings
from gateway.deployments import OpenedUpstream
from gateway.dialects.base import ClientEncoder
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.source import EventSource
from gateway.sse import DONE, KEEPALIVE
from gateway.stream import StreamOutcome, Termination

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
HIGH_WATER = 64 * 1024  # bytes queued for the client before the upstream is paused
LOW_WATER = 16 * 1024  # ... and resumed
DRAIN_POLL = 0.025


class StreamHandle:
    """A live stream as the worker sees it, so a shutdown can end it."""

    __slots__ = ("aborting", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.aborting = False

    def abort(self) -> None:
        """Interrupt the stream; it ends itself with an error event."""
        self.aborting = True
        self.task.cancel()


class LiveStreams:
    """The streams a worker is relaying. Shutdown gives them a grace period, then ends them."""

    def __init__(self) -> None:
        # A plain set: relay_stream always discards its handle (a WeakSet entry cost ~700 B).
        self._handles: set[StreamHandle] = set()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, handle: StreamHandle) -> None:
        """Track a stream that has started."""
        self._handles.add(handle)

    def discard(self, handle: StreamHandle) -> None:
        """Forget a stream that has ended."""
        self._handles.discard(handle)
        self._changed.set()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the live streams to end, then end the rest.

        Returns how many streams had to be ended.
        """
        loop = asyncio.get_running_loop()
        await self._wait_until_empty(loop.time() + grace)
        remaining = list(self._handles)
        for handle in remaining:
            handle.abort()
        # Give the ended streams a moment to write their final event.
        await self._wait_until_empty(loop.time() + 2.0)
        return len(remaining)

    async def _wait_until_empty(self, deadline: float) -> None:
        while self._handles:
            self._changed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                return


async def relay_stream(
    request: web.Request,
    opening: Awaitable[OpenedUpstream],
    *,
    settings: ServerSettings,
    live: LiveStreams,
    outcome: StreamOutcome,
    strip_usage: bool = False,
    encoder: ClientEncoder | None = None,
) -> web.StreamResponse:
    """Wait for the upstream stream (``opening``), relay it to the client, return the response.

    Raises a GatewayError only while no header has been sent; ``outcome`` says how it ended.
    ``encoder`` writes the canonical events in another client dialect (Responses, Messages).
    """
    relay = ClientRelay(request, settings, outcome, strip_usage, encoder)
    task = asyncio.current_task()
    assert task is not None
    handle = StreamHandle(task)
    live.add(handle)
    metrics.ACTIVE_STREAMS.inc()
    try:
        return await relay.run(handle, opening)
    finally:
        relay.leave()
        live.discard(handle)
        metrics.ACTIVE_STREAMS.dec()


class ClientRelay:
    """One client's sink: frames for its transport, pauses the source when the client is slow."""

    __slots__ = (
        "_waiter",
        "chunked",
        "encoder",
        "ended",
        "error",
        "gone",
        "loop",
        "outcome",
        "paused",
        "request",
        "response",
        "settings",
        "source",
        "strip_usage",
        "transport",
    )

    def __init__(
        self,
        request: web.Request,
        settings: ServerSettings,
        outcome: StreamOutcome,
        strip_usage: bool,
        encoder: ClientEncoder | None = None,
    ) -> None:
        self.request = request
        self.encoder = encoder
        self.settings = settings
        self.outcome = outcome
        self.strip_usage = strip_usage
        self.loop = asyncio.get_running_loop()
        self.response: web.StreamResponse | None = None
        self.transport: asyncio.Transport | None = None
        self.source: EventSource | None = None
        self.chunked = True
        self.ended = False  # the source finished
        self.gone = False  # the client cannot be written to
        self.paused = False
        self.error: GatewayError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- the handler task -------------------------------------------------------------------------

    async def run(
        self, handle: StreamHandle, opening: Awaitable[OpenedUpstream]
    ) -> web.StreamResponse:
        try:
            opened = await self._open(opening)
            source = opened.source
            assert source is not None
            self.source = source  # from here on, leaving detaches (and may cancel) it
            self.outcome.source = source  # live counters for the spool's progress lines
            self.outcome.hedges = getattr(opened, "hedges", 0)
            self.outcome.hedges_lost = getattr(opened, "hedges_lost", 0)
            self.outcome.deployment = opened.deployment.name
            if self.response is None:
                await self._prepare()
            self.outcome.first_event_at = self.loop.time()
            source.attach(self)
            await self._follow()
        except GatewayError as exc:
            if self.response is None:
                raise
            self.error = exc
        except asyncio.CancelledError:
            if not handle.aborting:
                self.outcome.termination = Termination.CLIENT_DISCONNECT
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.outcome.termination = Termination.SHUTDOWN
            error = ServiceUnavailable(
                "The gateway is shutting down; the stream was ended before it finished.",
                code="shutting_down",
            )
            if self.response is None:
                raise error from None
            self.error = error
        except ConnectionError:
            self.gone = True
            self.outcome.termination = Termination.CLIENT_DISCONNECT
        assert self.response is not None
        await self._close()
        return self.response

    async def _open(self, opening: Awaitable[OpenedUpstream]) -> OpenedUpstream:
        """Wait for the router's answer (it may retry meanwhile), with keep-alives if slow."""
        task = asyncio.ensure_future(opening)
        interval = self.settings.keepalive_interval
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    break
                if self.response is None:
                    await self._prepare()
                assert self.response is not None
                await self.response.write(KEEPALIVE)
        except BaseException:
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is None:
                opened = task.result()
                if opened.source is not None:
                    opened.source.close()
            raise
        return task.result()

    async def _prepare(self) -> None:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(self.request)
        await response.write(b"")  # the headers go out now; events follow straight to transport
        self.response = response
        # aiohttp chose chunked framing for HTTP/1.1 (it says so in the headers it sent).
        self.chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self.transport = self.request.transport

    async def _follow(self) -> None:
        """Sleep while the source writes; wake only to wait out a slow client or to finish."""
        while not (self.ended or self.gone):
            if self.paused:
                await self._drain()
                continue
            self._waiter = self.loop.create_future()
            await self._waiter

    async def _drain(self) -> None:
        transport = self.transport
        deadline = self.loop.time() + self.settings.write_stall_timeout
        while transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() <= LOW_WATER:
                self.paused = False
                if self.source is not None:
                    self.source.resume()
                return
            if self.loop.time() >= deadline:
                # A client that stopped reading: drop it rather than hold its stream forever.
                self.outcome.termination = Termination.WRITE_STALL
                self.gone = True
                transport.abort()
                return
            await asyncio.sleep(DRAIN_POLL)
        self.gone = True
        self.outcome.termination = Termination.CLIENT_DISCONNECT

    async def _close(self) -> None:
        """The final error event if any, then the end of the chunked body."""
        assert self.response is not None
        if self.gone:
            return
        error = self.error
        if error is not None:
            self.outcome.error = error
            if self.outcome.termination is Termination.COMPLETED:
                self.outcome.termination = (
                    Termination.TIMEOUT
                    if isinstance(error, UpstreamTimeout)
                    else Termination.UPSTREAM_ERROR
                )
            # A provider's message may echo what it was sent: scrubbed of every upstream secret.
            if self.encoder is not None:
                self._write(redact.installed().scrub(self.encoder.error(error)))
            else:
                self._write(b"data: " + redact.error_event(error.to_json()) + b"\n\n")
        if self.gone:
            return
        try:
            await self.response.write_eof()
        except ConnectionError:
            self.outcome.termination = Termination.CLIENT_DISCONNECT

    def leave(self) -> None:
        """The handler is done: record what the source delivered, stop being a sink."""
        source = self.source
        if source is None:
            return
        self.source = None
        outcome = self.outcome
        outcome.source = None  # the totals below are final; the source is not kept alive
        outcome.events = source.events
        outcome.content_events = source.content_events
        outcome.usage = source.usage
        if (
            source.done
            and self.error is None
            and source.termination is not Termination.COMPLETED
            and outcome.termination is Termination.COMPLETED
        ):
            outcome.termination = source.termination  # the upstream's own error event
        if self.paused:
            self.paused = False
            source.resume()
        source.detach(self)

    # -- Sink: called from the source -------------------------------------------------------------

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        if self.encoder is not None:
            self._translate(payloads)
            return
        if usage_only and self.strip_usage:
            return
        self._write(framed)

    def _translate(self, payloads: list[bytes]) -> None:
        """Canonical events in the client's dialect; [DONE] becomes the dialect's own end."""
        encoder = self.encoder
        assert encoder is not None
        parts: list[bytes] = []
        for data in payloads:
            if data == DONE:
                parts.append(encoder.done())
            elif data.startswith(b'{"error"'):
                parts.append(encoder.error(upstream_error_of(data)))
            else:
                parts.append(encoder.feed(data))
        out = b"".join(parts)
        if out:
            self._write(out)

    def keepalive(self) -> None:
        self._write(KEEPALIVE)

    def finish(self, error: GatewayError | None) -> None:
        self.ended = True
        if error is not None:
            self.error = error
        self._wake()

    def _write(self, data: bytes) -> None:
        if self.gone:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self.gone = True
            self.outcome.termination = Termination.CLIENT_DISCONNECT
            self._wake()
            return
        if self.chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        if not self.paused and transport.get_write_buffer_size() > HIGH_WATER:
            self.paused = True
            if self.source is not None:
                self.source.pause()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def upstream_error_of(data: bytes) -> GatewayError:
    """An upstream's own error event, as an error another dialect can render."""
    try:
        message = str(orjson.loads(data)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = "The upstream reported an error."
    return UpstreamError(message)
