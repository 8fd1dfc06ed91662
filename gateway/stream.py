"""The stream vocabulary shared by the engine and its sinks: how a stream ended, what it delivered,
what an upstream response looks like, and what a sink of upstream events must do.

It sits below the relay, the resumable event log and the cache, so none of them imports another.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import GatewayError
from gateway.openai import Usage


class LiveCounts(Protocol):
    """A running stream's counters (the event source's)."""

    content_events: int


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
    """What one client's stream delivered and how it ended; right even when it was cancelled."""

    termination: Termination = Termination.COMPLETED
    events: int = 0
    content_events: int = 0  # events that delivered text: the completion-token estimate
    deployment: str | None = None  # the deployment that answered
    usage: Usage | None = None  # as reported by the upstream's usage chunk
    first_event_at: float | None = None
    error: GatewayError | None = None
    # The stream's event source while it runs: its counters are live (read by the spool every
    # 0.5 s, so a crashed worker's usage is known); they are copied here when the stream ends.
    source: LiveCounts | None = None
    hedges: int = 0  # extra upstream requests sent because the first event was late
    hedges_lost: int = 0  # raced requests that were cancelled (their prompts are still paid)

    @property
    def live_content_events(self) -> int:
        """Content events so far: the source's while it runs, then the stream's total."""
        return self.source.content_events if self.source is not None else self.content_events


class BodyConsumer(Protocol):
    """Receives an upstream body as it arrives (called from the connection's callbacks)."""

    def body(self, data: bytes) -> None:
        """Bytes of the body arrived."""
        ...

    def end(self, error: GatewayError | None) -> None:
        """The body is over: ``None`` at a clean end of the HTTP message, else why it broke."""
        ...


class UpstreamResponse(Protocol):
    """An upstream answer whose headers arrived. ``close()`` releases it; safe more than once."""

    status: int
    content_type: str

    def stream_to(self, consumer: BodyConsumer) -> None:
        """Deliver the body to ``consumer`` from now on (what arrived already, at once)."""
        ...

    def pause(self) -> None:
        """Stop reading the body (flow control: a slow client holds the upstream back)."""
        ...

    def resume(self) -> None:
        """Read again after ``pause``."""
        ...

    async def read_body(self, limit: int) -> bytes:
        """The whole body, refusing one larger than ``limit`` bytes."""
        ...

    def close(self, *, complete: bool = False) -> None:
        """Release the response; an unfinished one aborts its connection (the upstream sees it).

        ``complete``: the stream reached its logical end ([DONE]), so the connection may be kept
        for reuse once the HTTP message's own end arrives.
        """
        ...


class Sink(Protocol):
    """A consumer of one upstream stream's events: the client relay, the resumable event log, the
    cache recorder. Called synchronously from the event source; must not block."""

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        """Whole events in canonical SSE framing (``data: ...`` LF LF) and their data, one item
        per event. ``usage_only``: the usage chunk the gateway asked for on the client's behalf
        (skipped by clients that did not)."""
        ...

    def keepalive(self) -> None:
        """Nothing was delivered for the keep-alive interval."""
        ...

    def finish(self, error: GatewayError | None) -> None:
        """The stream is over. ``None``: its last event ([DONE] or the upstream's own error
        event) was delivered. Otherwise the engine's failure, for the sink to report its way."""
        ...


class Guard(Protocol):
    """Sees each batch before any sink (the budget guard)."""

    def admit(self, payloads: list[bytes]) -> int:
        """How many of the batch's leading events may go out now."""

    def wait(self) -> None:
        """Events are held: call ``release()`` once they may go, or end the stream."""
