"""The circuit breaker's states and transitions, on an injected clock."""

from __future__ import annotations

from gateway.breaker import BreakerSettings, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Made = tuple[CircuitBreaker, Clock, list[BreakerState]]


def make(failures: int = 5, recovery: float = 30.0, probes: int = 1) -> Made:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        BreakerSettings(failures, recovery, probes), clock=clock, on_change=changes.append
    )
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    """The breaker opens after N consecutive failures; a success in between resets the count."""
    breaker, _, changes = make(failures=5)
    for _ in range(4):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success resets the count
    for _ in range(4):
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    assert not breaker.allow()


def test_half_open_after_recovery_lets_limited_probes_through() -> None:
    """After recovery it is half-open: `probes` calls pass, and as many successes close it."""
    breaker, clock, changes = make(failures=1, recovery=30.0, probes=2)
    breaker.failure()
    clock.now += 29.9
    assert not breaker.allow()
    assert 0 < breaker.retry_in() <= 0.1 + 1e-9
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow()  # both probe slots taken
    breaker.success()
    assert breaker.state is BreakerState.HALF_OPEN  # needs two successes
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_for_a_full_recovery_time() -> None:
    """A failed probe reopens the breaker for a whole recovery time, counted from that failure."""
    breaker, clock, changes = make(failures=1, recovery=10.0)
    breaker.failure()
    clock.now += 10
    assert breaker.allow()
    clock.now += 3
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 10.0
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN]


def test_released_probe_frees_its_slot() -> None:
    """A probe released without a verdict gives its slot to the next caller."""
    breaker, clock, _ = make(failures=1, recovery=1.0)
    breaker.failure()
    clock.now += 1
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()  # the client left before the probe had a verdict
    assert breaker.allow()
