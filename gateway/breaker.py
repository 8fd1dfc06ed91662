"""A circuit breaker per deployment: closed, open, half-open. No I/O; the clock is injected.

Closed: requests flow; ``failures`` consecutive failures open it. Open: the deployment is skipped
until ``recovery`` seconds have passed. Half-open: at most ``probes`` requests at a time test it;
``probes`` successes close it again, one failure opens it for another ``recovery``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    """The three states, with the number exported as a gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and how it recovers."""

    failures: int = 5
    recovery: float = 30.0
    probes: int = 1


class CircuitBreaker:
    """The health of one deployment as seen by one worker."""

    __slots__ = (
        "_clock",
        "_failures",
        "_on_change",
        "_opened_at",
        "_probes",
        "_settings",
        "_state",
        "_successes",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0  # half-open requests in flight
        self._successes = 0  # half-open successes so far

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose recovery time has passed reads half-open)."""
        if self._state is BreakerState.OPEN and self.retry_in() == 0:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._settings.recovery - self._clock())

    def allow(self) -> bool:
        """Whether a request may go to the deployment now; a True in half-open is a probe slot."""
        if self._state is BreakerState.OPEN:
            if self.retry_in() > 0:
                return False
            self._move(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN:
            if self._probes >= self._settings.probes:
                return False
            self._probes += 1
        return True

    def success(self) -> None:
        """The deployment answered (its first byte arrived)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._successes += 1
            if self._successes >= self._settings.probes:
                self._move(BreakerState.CLOSED)
        self._failures = 0

    def failure(self, *, may_open: bool = True) -> None:
        """The deployment failed before its first event (connect, timeout, 5xx, a broken start).

        ``may_open=False``: count it but stay closed (the router never ejects a deployment that
        is the only one of its route: with nowhere else to go, ejecting only refuses requests).
        """
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            if may_open:
                self._open()
            else:
                self._move(BreakerState.CLOSED)
            return
        self._failures += 1
        if (
            may_open
            and self._state is BreakerState.CLOSED
            and self._failures >= self._settings.failures
        ):
            self._open()

    def release(self) -> None:
        """A request allowed as a probe ended without a verdict (the client left)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        if state is BreakerState.CLOSED:
            self._failures = 0
        if state is not BreakerState.HALF_OPEN:
            self._probes = 0
        self._successes = 0
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
