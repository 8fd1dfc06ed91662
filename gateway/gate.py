"""A guard between an event source and its sinks (the budget guard's hold on a stream).

Each batch goes through the guard first: the events it admits go on to the sinks, the rest are
held, with the upstream paused, until the guard releases them (its next lease came) or ends the
stream (the budget is spent). An end that arrives while events are held (a fast upstream's
``[DONE]`` in the same read) waits behind them.
"""

from __future__ import annotations

from typing import Protocol

from gateway.errors import GatewayError
from gateway.stream import Guard

Batch = tuple[list[bytes], list[bytes], bool]  # framed events, their payloads, usage only


class GatedSource(Protocol):
    """What a gate needs from its source."""

    done: bool

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def pass_on(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None: ...

    def finish_now(self, error: GatewayError | None) -> None: ...


class Gate:
    """Holds what its guard has not admitted yet."""

    __slots__ = ("ending", "guard", "held", "source")

    def __init__(self, guard: Guard, source: GatedSource) -> None:
        self.guard = guard
        self.source = source
        self.held: list[Batch] | None = None
        self.ending: tuple[GatewayError | None] | None = None  # an end that came while holding

    @property
    def holding(self) -> bool:
        return self.held is not None

    def offer(self, parts: list[bytes], payloads: list[bytes], usage_only: bool) -> None:
        """A batch: its admitted events go on, the rest wait for the guard."""
        if self.held is not None:
            self.held.append((parts, payloads, usage_only))
            return
        source = self.source
        taken = self.guard.admit(payloads)
        if taken:
            framed = parts[0] if taken == 1 else b"".join(parts[:taken])
            source.pass_on(
                framed, payloads if taken == len(payloads) else payloads[:taken], usage_only
            )
        if taken < len(parts) and not source.done:
            self.held = [(parts[taken:], payloads[taken:], usage_only)]
            source.pause()
            self.guard.wait()  # for a lease; or, with the budget spent, the stream ends

    def release(self) -> None:
        """The guard has room again: what it held goes on in order (it may hold again), then
        an end that came meanwhile."""
        held, self.held = self.held, None
        source = self.source
        if held is None or source.done:
            return
        source.resume()
        for index, batch in enumerate(held):
            if source.done:
                return
            if self.held is not None:  # held again: the rest waits behind it
                self.held.extend(held[index:])
                return
            self.offer(*batch)
        if not self.holding and self.ending is not None and not source.done:
            ending, self.ending = self.ending, None
            source.finish_now(ending[0])

    def drop(self) -> None:
        """The stream ends now: what was held goes with it."""
        self.held = self.ending = None
