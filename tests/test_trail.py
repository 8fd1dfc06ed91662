"""The per-request trail and the rate-limited warnings about upstream trouble."""

from __future__ import annotations

import logging

import pytest

from gateway import trail
from gateway.breaker import BreakerState
from gateway.errors import UpstreamStatusError


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_lets_a_burst_through_then_one_per_refill_and_counts_the_rest() -> None:
    """After the burst, lines are held back and the next allowed one says how many were."""
    clock = Clock()
    limiter = trail.WarningLimiter(burst=2, refill_seconds=10.0, clock=clock)
    assert [limiter.take("a") for _ in range(5)] == [0, 0, None, None, None]
    assert limiter.take("b") == 0  # another key has its own bucket
    clock.now = 10.0
    assert limiter.take("a") == 3
    assert limiter.take("a") is None


def test_warnings_name_the_request_and_deployment_and_are_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage of 20 failed attempts writes the burst, with the request id and the status."""
    monkeypatch.setattr(trail, "LIMITER", trail.WarningLimiter(burst=3, clock=Clock()))
    token = trail.TRAIL.set(trail.Trail(request_id="req-1"))
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
            for _ in range(20):
                trail.attempt_failed("east", UpstreamStatusError(503, b"{}"))
    finally:
        trail.TRAIL.reset(token)
    assert len(caplog.records) == 3
    record = caplog.records[0]
    assert record.getMessage() == "upstream attempt failed"
    assert record.__dict__["deployment"] == "east"
    assert record.__dict__["request_id"] == "req-1"
    assert record.__dict__["reason"] == "status_503"


def test_attempts_are_counted_in_the_current_trail() -> None:
    """attempt_sent counts into the request's trail; retries are attempts after the first."""
    current = trail.Trail()
    token = trail.TRAIL.set(current)
    try:
        for _ in range(3):
            trail.attempt_sent("east")
        trail.fell_back("gpt", "backup", "west")
    finally:
        trail.TRAIL.reset(token)
    assert (current.attempts, current.retries, current.served_by) == (3, 2, "backup")
    trail.attempt_sent("east")  # outside a request: nothing to count, nothing raised


def test_breaker_opening_is_a_warning_and_closing_is_info(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A breaker that opens warns; one that closes again says so at info."""
    monkeypatch.setattr(trail, "LIMITER", trail.WarningLimiter(clock=Clock()))
    with caplog.at_level(logging.INFO, logger="gateway.upstream"):
        trail.breaker_changed("east", BreakerState.OPEN)
        trail.breaker_changed("east", BreakerState.CLOSED)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "circuit breaker open"),
        ("INFO", "circuit breaker closed"),
    ]
