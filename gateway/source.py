"""The event source: one upstream stream, read once, framed once, delivered to every sink.

The upstream's body bytes arrive through a callback (:meth:`EventSource.body`), are cut into whole
SSE events and re-framed canonically (LF line ends, ``data: `` prefixes, never a JSON re-encode),
and go to the sinks in one call per arrival: the client relay, a coalesced follower, the cache
recorder, the resumable event log. The source alone owns what every consumer used to re-implement:
the content-type check, the first-event and idle deadlines, ``[DONE]``, the upstream's own error
event, usage capture, the counters behind the token estimate, and why the stream ended.

Deadlines and keep-alives come from one timer per stream (``loop.call_at``), moved lazily: an
arriving event only records the time; the timer, when it fires, works out what is due and re-arms.

Until the first event the source buffers what it frames; the router awaits :attr:`first` so that a
stream that breaks before its first event is retried like a refused connection. A sink attached
later gets the buffered events at once, then everything live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway import redact
from gateway.config import Deployment
from gateway.dialects.base import UpstreamDecoder, decode_events
from gateway.errors import GatewayError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from gateway.gate import Gate
from gateway.metrics import GapCounts
from gateway.openai import Usage, carries_content, usage_in_event
from gateway.recording import Recording
from gateway.sse import DONE, DONE_EVENT, EventTooLarge, SSEEvent, SSEParser, encode_event
from gateway.stream import Guard, Sink, Termination, UpstreamResponse

_ERROR_PREFIX = b'{"error"'
_USAGE_MARK = b'"usage":{'


class EventSource:
    """Reads one upstream SSE stream and delivers its framed events to sinks."""

    __slots__ = (
        "_loop",
        "_paused",
        "_timer",
        "_wake_at",
        "content_events",
        "decoder",
        "deployment",
        "done",
        "error",
        "events",
        "first",
        "first_event_at",
        "gaps",
        "gate",
        "idle",
        "keepalive",
        "last_delivery",
        "last_event_at",
        "parser",
        "recording",
        "response",
        "sinks",
        "termination",
        "usage",
        "watchers",
    )

    def __init__(
        self,
        response: UpstreamResponse,
        deployment: Deployment,
        *,
        keepalive: float,
        gaps: GapCounts | None = None,
        record_limit: int = 0,
        decoder: UpstreamDecoder | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.response = response
        self.deployment = deployment
        self.keepalive = keepalive
        self.idle = deployment.timeouts.idle
        self.parser = SSEParser()
        self.sinks: list[Sink] = []
        self.gate: Gate | None = None  # a guard that sees every batch first (see guard())
        self.recording = Recording(record_limit)  # what was framed, for sinks that come later
        self.decoder = decoder  # a provider's own events -> canonical chunks (None: OpenAI's)
        self.first: asyncio.Future[None] = loop.create_future()
        self.done = False
        self.error: GatewayError | None = None
        self.termination = Termination.COMPLETED
        self.events = 0
        self.content_events = 0
        self.usage: Usage | None = None
        self.first_event_at: float | None = None
        self.last_event_at = self.last_delivery = loop.time()
        self.gaps = gaps
        self._paused = 0
        self.watchers: list[Callable[[EventSource], None]] = []  # called once, at the end
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the answer is an event stream, arm the first-event deadline, start reading."""
        if not self.response.content_type.startswith("text/event-stream"):
            self._fail(
                UpstreamProtocolError(
                    "The upstream answered a streaming request without an event stream."
                )
            )
            return
        self._arm(self._loop.time() + self.deployment.timeouts.first_byte)
        self.response.stream_to(self)

    def attach(self, sink: Sink) -> None:
        """Add a sink: it gets what was framed before it came, then everything live."""
        self.recording.replay_to(sink)
        if self.done:
            sink.finish(self.error)
            return
        self.sinks.append(sink)

    def guard(self, guard: Guard) -> None:
        """Set, before the stream starts, the guard that sees each batch before any sink and
        may hold it back or end the stream there (the budget guard). It is not a reader: the
        backlog stays for the first sink, and its leaving cancels nothing."""
        assert self.events == 0, "a guard is set before the first event"
        self.gate = Gate(guard, self)

    def release(self) -> None:
        """The guard has room again: what it held goes on (see gateway/gate.py)."""
        if self.gate is not None:
            self.gate.release()

    def watch(self, watcher: Callable[[EventSource], None]) -> None:
        """Call ``watcher`` once the stream is over (at once if it is already)."""
        if self.done:
            watcher(self)
        else:
            self.watchers.append(watcher)

    def detach(self, sink: Sink) -> None:
        """Remove a sink; with none left the upstream is cancelled (nobody reads it)."""
        if sink in self.sinks:
            self.sinks.remove(sink)
        if not self.sinks and not self.done:
            self.close()

    def fail(self, error: GatewayError) -> None:
        """End the stream now with ``error`` (the upstream is cancelled, every sink told)."""
        if not self.done:
            self.termination = Termination.UPSTREAM_ERROR
            if self.gate is not None:
                self.gate.drop()  # what the guard held goes with it
            self._end(error)

    def close(self) -> None:
        """Stop reading and abort the upstream (no sink is told: they are leaving)."""
        if self.done:
            return
        self.done = True
        self.termination = Termination.CLIENT_DISCONNECT
        self.error = UpstreamError("Every client of this stream left; it was cancelled.")
        if self.gate is not None:
            self.gate.drop()
        self.sinks = []
        self._cancel_timer()
        if self.gaps is not None:
            self.gaps.publish()
        self.response.close()
        if not self.first.done():
            self.first.cancel()
        self._notify_watchers()

    def pause(self) -> None:
        """A sink cannot take more now: stop reading the upstream (counted, sinks may overlap)."""
        self._paused += 1
        if self._paused == 1:
            self.response.pause()

    def resume(self) -> None:
        """Undo one ``pause``."""
        self._paused -= 1
        if self._paused == 0:
            self.last_event_at = self._loop.time()  # the upstream was not idle: we were
            self.response.resume()

    # -- BodyConsumer: called from the upstream connection ----------------------------------------

    def body(self, data: bytes) -> None:
        if self.done:
            return
        if (
            self.decoder is None
            and self.first_event_at is not None
            and self.parser.whole_data_event(data)
        ):
            # The hot path: one ordinary event per read, already canonical; no list, no reframe.
            payload = data[6:-2]
            if (
                payload != DONE
                and _USAGE_MARK not in payload
                and not payload.startswith(_ERROR_PREFIX)
            ):
                now = self._loop.time()
                if self.gaps is not None:
                    self.gaps.add(now - self.last_event_at)
                self.last_event_at = self.last_delivery = now
                if carries_content(payload):
                    self.content_events += 1
                self.events += 1
                self._deliver([data], [payload], False)
                return
        try:
            events = self.parser.feed(data)
        except EventTooLarge as exc:
            self._fail(UpstreamProtocolError(f"The upstream sent an oversized event: {exc}"))
            return
        failure: GatewayError | None = None
        if self.decoder is not None and events:
            events, failure = decode_events(self.decoder, events)
        if events:
            self._process(events)
        if failure is not None and not self.done:
            self._fail(failure)  # after what the same read delivered before it

    def _process(self, events: list[SSEEvent]) -> None:
        now = self._loop.time()
        if self.first_event_at is None:
            self.first_event_at = now
            self._cancel_timer()  # from the first-event deadline to idle and keep-alive
            self._arm(now + min(self.idle, self.keepalive))
        elif self.gaps is not None:
            self.gaps.add(now - self.last_event_at)
        self.last_event_at = self.last_delivery = now
        parts: list[bytes] = []
        payloads: list[bytes] = []
        for event in events:
            data = event.data
            if data == DONE:
                parts.append(DONE_EVENT)
                payloads.append(DONE)
                self._deliver(parts, payloads, False)
                self._end(None)
                return
            if carries_content(data):
                self.content_events += 1
            if _USAGE_MARK in data:
                usage, usage_only = usage_in_event(data)
                if usage is not None:
                    self.usage = usage
                    if usage_only:
                        self._deliver(parts, payloads, False)
                        parts, payloads = [], []
                        self._deliver(
                            [encode_event(data, event=event.event, id=event.id)], [data], True
                        )
                        continue
            self.events += 1
            failed = data.startswith(_ERROR_PREFIX)
            if failed:
                data = redact.error_event(data)  # an upstream's own error may echo its key
            parts.append(encode_event(data, event=event.event, id=event.id))
            payloads.append(data)
            if failed:
                # The upstream reported its own failure: it is the stream's last event.
                self.termination = Termination.UPSTREAM_ERROR
                self._deliver(parts, payloads, False)
                self._end(None)
                return
        self._deliver(parts, payloads, False)

    def end(self, error: GatewayError | None) -> None:
        if self.done:
            return
        if error is None and self.decoder is not None:
            # Some providers (Gemini) end a stream by ending the body: ask the decoder.
            try:
                events = [SSEEvent(payload) for payload in self.decoder.at_eof()]
            except GatewayError as exc:
                self._fail(exc)
                return
            self._process([*events, SSEEvent(DONE)])
            return
        self._fail(error or UpstreamProtocolError("The upstream ended the stream before [DONE]."))

    # -- internals --------------------------------------------------------------------------------

    def _deliver(self, parts: list[bytes], payloads: list[bytes], usage_only: bool) -> None:
        if not parts:
            return
        if not self.first.done():
            self.first.set_result(None)
        if self.gate is not None:
            self.gate.offer(parts, payloads, usage_only)
            return
        self.pass_on(parts[0] if len(parts) == 1 else b"".join(parts), payloads, usage_only)

    def pass_on(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        """Record a batch and hand it to every sink."""
        if self.recording.on:
            assert self.first_event_at is not None
            offset = self._loop.time() - self.first_event_at
            self.recording.add((framed, payloads, usage_only), offset, shared=bool(self.sinks))
        for sink in self.sinks:
            sink.deliver(framed, payloads, usage_only)
            if self.done:
                break  # a sink ended the stream (a budget guard): the rest do not get it

    def _end(self, error: GatewayError | None) -> None:
        if self.gate is not None and self.gate.holding:
            self.gate.ending = (error,)  # after what the guard holds
            return
        self.finish_now(error)

    def finish_now(self, error: GatewayError | None) -> None:
        """The stream is over: tell the sinks, release (or keep) the upstream connection."""
        self.done = True
        self.error = error
        self._cancel_timer()
        if self.gaps is not None:
            self.gaps.publish()
        self.response.close(complete=error is None and self.termination is Termination.COMPLETED)
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.finish(error)
        if not self.first.done():
            if error is None:
                self.first.set_result(None)
            else:
                self.first.set_exception(error)
        self._notify_watchers()

    def _notify_watchers(self) -> None:
        watchers, self.watchers = self.watchers, []
        for watcher in watchers:
            watcher(self)

    @property
    def clean(self) -> bool:
        """Ended with [DONE], every event delivered."""
        return self.done and self.error is None and self.termination is Termination.COMPLETED

    def _fail(self, error: GatewayError) -> None:
        self.termination = (
            Termination.TIMEOUT
            if isinstance(error, UpstreamTimeout)
            else Termination.UPSTREAM_ERROR
        )
        self._end(error)

    def _arm(self, when: float) -> None:
        self._wake_at = when
        self._timer = self._loop.call_at(when, self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """The one timer: first-event and idle deadlines, keep-alives; then re-arm."""
        self._timer = None
        if self.done:
            return
        now = self._loop.time()
        if self.first_event_at is None:
            limit = self._wake_at
            if now >= limit:
                self._fail(
                    UpstreamTimeout(
                        f"Deployment {self.deployment.name!r} sent no event within "
                        f"{self.deployment.timeouts.first_byte:g} s."
                    )
                )
                return
            self._arm(limit)
            return
        if self._paused:
            idle_at = now + self.idle  # a paused upstream is waiting for us, not idle
        else:
            idle_at = self.last_event_at + self.idle
            if now >= idle_at:
                self._fail(
                    UpstreamTimeout(
                        f"Deployment {self.deployment.name!r} sent nothing for {self.idle:g} s."
                    )
                )
                return
        keepalive_at = self.last_delivery + self.keepalive
        if now >= keepalive_at and self.sinks:
            self.last_delivery = now
            for sink in list(self.sinks):
                sink.keepalive()
            keepalive_at = now + self.keepalive
        self._arm(min(idle_at, keepalive_at))
