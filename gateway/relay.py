"""The chunk relay: upstream SSE read in 512-byte chunks, each event sent on as soon as it is whole.

The response headers wait for the first upstream event, so a failure before it is still a real HTTP
status. If the first event takes longer than the keep-alive interval, the headers go out with a
keep-alive comment and the wait goes on. After the headers, any failure (upstream error, timeout,
malformed stream, shutdown) ends the stream with one ``data: {"error": ...}`` event, no ``[DONE]``.

The relay never re-encodes JSON: events are re-framed (LF line ends, ``data: `` prefixes) as bytes.
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from gateway import metrics
from gateway.config import Deployment, ServerSettings
from gateway.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.openai import Usage, carries_content, usage_in_event
from gateway.sse import DONE, EventTooLarge, SSEEvent, SSEParser, encode_comment, encode_event
from gateway.upstream import UpstreamResponse

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
KEEPALIVE_COMMENT = encode_comment(b"keep-alive")
DONE_EVENT = b"data: [DONE]\n\n"
# Below this many bytes queued in the transport a write cannot block, so it needs no timer.
STALL_CHECK_BYTES = 32 * 1024
# At most this many already-arrived 512-byte chunks are relayed in one write (16 KiB in all).
COALESCE_CHUNKS = 31


class Termination(enum.Enum):
    """Why a stream ended."""

    COMPLETED = "completed"
    CLIENT_DISCONNECT = "client_disconnect"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    WRITE_STALL = "write_stall"
    SHUTDOWN = "shutdown"


@dataclass(slots=True)
class StreamOutcome:
    """What happened to one relayed stream; filled in as it goes, so it is right even on cancel."""

    termination: Termination = Termination.COMPLETED
    events: int = 0
    content_events: int = 0  # events that delivered text: the completion-token estimate
    deployment: str | None = None  # the deployment that answered
    usage: Usage | None = None  # as reported by the upstream's usage chunk
    first_event_at: float | None = None
    error: GatewayError | None = None

    def observe(self, data: bytes, strip_usage: bool) -> bool:
        """Count one upstream event (content, usage); False for a usage-only event injected for
        accounting that the client did not ask for (it is not forwarded)."""
        if carries_content(data):
            self.content_events += 1
        if b'"usage":{' in data:
            usage, usage_only = usage_in_event(data)
            if usage is not None:
                self.usage = usage
                if usage_only and strip_usage:
                    return False
        self.events += 1
        return True


class OpenedUpstream(Protocol):
    """An upstream response and the deployment that sent it (the router's answer)."""

    @property
    def response(self) -> UpstreamResponse: ...

    @property
    def deployment(self) -> Deployment: ...


class StreamHandle:
    """A live stream as the worker sees it, so a shutdown can end it."""

    __slots__ = ("__weakref__", "aborting", "task")

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
        self._handles: weakref.WeakSet[StreamHandle] = weakref.WeakSet()
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


class _ClientGone(Exception):
    """The client can no longer be written to."""


async def relay_stream(
    request: web.Request,
    opening: Awaitable[OpenedUpstream],
    *,
    settings: ServerSettings,
    live: LiveStreams,
    started: float,
    outcome: StreamOutcome,
    strip_usage: bool = False,
    observe_gap: Callable[[float], None] | None = None,
) -> web.StreamResponse:
    """Open the upstream stream (``opening``), relay it to the client, return the finished response.

    Raises a GatewayError only while no header has been sent; ``outcome`` says how it ended.
    """
    relay = _Relay(request, settings, started, outcome, strip_usage, observe_gap)
    task = asyncio.current_task()
    assert task is not None
    handle = StreamHandle(task)
    live.add(handle)
    metrics.ACTIVE_STREAMS.inc()
    try:
        return await relay.run(handle, opening)
    finally:
        if relay.upstream is not None:
            relay.upstream.close(complete=relay.finished)
        live.discard(handle)
        metrics.ACTIVE_STREAMS.dec()


class _Relay:
    __slots__ = (
        "finished",
        "last_write",
        "loop",
        "observe_gap",
        "outcome",
        "parser",
        "request",
        "response",
        "settings",
        "started",
        "strip_usage",
        "upstream",
    )

    def __init__(
        self,
        request: web.Request,
        settings: ServerSettings,
        started: float,
        outcome: StreamOutcome,
        strip_usage: bool,
        observe_gap: Callable[[float], None] | None,
    ) -> None:
        self.request = request
        self.strip_usage = strip_usage
        self.observe_gap = observe_gap
        self.upstream: UpstreamResponse | None = None
        self.settings = settings
        self.started = started
        self.outcome = outcome
        self.parser = SSEParser()
        self.loop = asyncio.get_running_loop()
        self.response: web.StreamResponse | None = None
        self.last_write = self.loop.time()
        self.finished = False  # [DONE] was relayed

    async def run(
        self, handle: StreamHandle, opening: Awaitable[OpenedUpstream]
    ) -> web.StreamResponse:
        try:
            opened = await self._open(opening)
            self.upstream = opened.response
            self.outcome.deployment = opened.deployment.name
            await self._check_stream(opened.response)
            await self._pump(opened.response, opened.deployment)
        except _ClientGone:
            pass
        except GatewayError as exc:
            if self.response is None:
                raise
            await self._end_with_error(exc)
        except asyncio.CancelledError:
            if not handle.aborting:
                self.outcome.termination = Termination.CLIENT_DISCONNECT
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            error = ServiceUnavailable(
                "The gateway is shutting down; the stream was ended before it finished.",
                code="shutting_down",
            )
            self.outcome.termination = Termination.SHUTDOWN
            if self.response is None:
                raise error from None
            await self._end_with_error(error, keep_termination=True)
        except ConnectionError:
            self.outcome.termination = Termination.CLIENT_DISCONNECT
        assert self.response is not None
        return self.response

    async def _open(self, opening: Awaitable[OpenedUpstream]) -> OpenedUpstream:
        """Wait for the upstream's response headers (the router may retry meanwhile), with
        keep-alives if that takes a while."""
        task = asyncio.ensure_future(opening)
        try:
            while True:
                wait = self.last_write + self.settings.keepalive_interval - self.loop.time()
                done, _ = await asyncio.wait({task}, timeout=max(wait, 0.0))
                if done:
                    break
                await self._write(KEEPALIVE_COMMENT)
        except BaseException:
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().response.close()
            raise
        return task.result()

    async def _check_stream(self, upstream: UpstreamResponse) -> None:
        if not upstream.content_type.startswith("text/event-stream"):
            raise UpstreamProtocolError(
                "The upstream answered a streaming request without an event stream."
            )

    async def _pump(self, upstream: UpstreamResponse, deployment: Deployment) -> None:
        """Read, reassemble and forward until [DONE] or a failure."""
        timeouts = deployment.timeouts
        keepalive = self.settings.keepalive_interval
        first_deadline = self.loop.time() + timeouts.first_byte
        last_event = self.loop.time()
        while True:
            limit_at = first_deadline if self.outcome.events == 0 else last_event + timeouts.idle
            wake_at = min(limit_at, self.last_write + keepalive)
            try:
                async with asyncio.timeout_at(wake_at):
                    chunk = await upstream.read_chunk()
            except TimeoutError:
                if self.loop.time() >= limit_at:
                    raise self._timeout_error(deployment) from None
                await self._write(KEEPALIVE_COMMENT)
                continue
            if not chunk:
                raise UpstreamProtocolError("The upstream ended the stream before [DONE].")
            events = self._parse(chunk)
            # Take the chunks that have already arrived too, so that they share one write; none of
            # them waits for I/O, so no complete event is held back.
            for _ in range(COALESCE_CHUNKS):
                more = upstream.read_buffered()
                if not more:
                    break
                events.extend(self._parse(more))
            if not events:
                continue
            now = self.loop.time()
            if self.outcome.first_event_at is None:
                self.outcome.first_event_at = now
            elif self.observe_gap is not None:
                self.observe_gap(now - last_event)  # once per write, not per event
            last_event = now
            payload, finished = self._frame(events)
            await self._write(payload)
            if finished:
                return

    def _parse(self, chunk: bytes) -> list[SSEEvent]:
        try:
            return self.parser.feed(chunk)
        except EventTooLarge as exc:
            raise UpstreamProtocolError(f"The upstream sent an oversized event: {exc}") from None

    def _frame(self, events: list[SSEEvent]) -> tuple[bytes, bool]:
        """Re-frame whole events as canonical SSE bytes; True once the stream is over."""
        parts: list[bytes] = []
        for event in events:
            data = event.data
            if data == DONE:
                parts.append(DONE_EVENT)
                self.finished = True
                return b"".join(parts), True
            if not self.outcome.observe(data, self.strip_usage):
                continue
            if event.event is None and event.id is None and b"\n" not in data:
                parts.append(b"data: " + data + b"\n\n")
            else:
                parts.append(encode_event(data, event=event.event, id=event.id))
            if data.startswith(b'{"error"'):
                # The upstream reported its own failure: forward it as the final event.
                self.outcome.termination = Termination.UPSTREAM_ERROR
                return b"".join(parts), True
        return b"".join(parts), False

    def _timeout_error(self, deployment: Deployment) -> UpstreamTimeout:
        timeouts = deployment.timeouts
        if self.outcome.events == 0:
            return UpstreamTimeout(
                f"Deployment {deployment.name!r} sent no event within {timeouts.first_byte:g} s."
            )
        return UpstreamTimeout(
            f"Deployment {deployment.name!r} sent nothing for {timeouts.idle:g} s."
        )

    async def _prepare(self) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(self.request)
        self.response = response
        return response

    async def _write(self, data: bytes) -> None:
        response = self.response or await self._prepare()
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self.outcome.termination = Termination.CLIENT_DISCONNECT
            raise _ClientGone
        if transport.get_write_buffer_size() < STALL_CHECK_BYTES:
            await response.write(data)
        else:
            try:
                async with asyncio.timeout(self.settings.write_stall_timeout):
                    await response.write(data)
            except TimeoutError:
                # A client that stopped reading: drop it rather than buffer without bound.
                self.outcome.termination = Termination.WRITE_STALL
                transport.abort()
                raise _ClientGone from None
        self.last_write = self.loop.time()

    async def _end_with_error(self, error: GatewayError, *, keep_termination: bool = False) -> None:
        """Finish an already started stream with one error event (never a fake [DONE])."""
        self.outcome.error = error
        if not keep_termination:
            self.outcome.termination = (
                Termination.TIMEOUT
                if isinstance(error, UpstreamTimeout)
                else Termination.UPSTREAM_ERROR
            )
        try:
            await self._write(b"data: " + error.to_json() + b"\n\n")
        except (_ClientGone, ConnectionError):
            self.outcome.termination = Termination.CLIENT_DISCONNECT
