"""What one request went through upstream, and the warnings an operator needs about it.

A :class:`Trail` rides a context variable set once per /v1 request, so code below the web layer (the
router, the upstream pool) can count attempts and name the request in a warning without being
handed the request. Warnings (upstream failures, retries, fallbacks, breaker transitions, limiter
and cache fallbacks) go through :class:`WarningLimiter`: a token bucket per kind and deployment, so
an outage writes a few lines a minute, each saying how many were held back, instead of one per
request. Nothing here runs per event of a stream.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.breaker import BreakerState
from gateway.errors import GatewayError, UpstreamStatusError

log = logging.getLogger("gateway.upstream")

# A burst of this many lines per kind and deployment, then one every REFILL_SECONDS.
DEFAULT_BURST = 5
DEFAULT_REFILL_SECONDS = 10.0


@dataclass(slots=True)
class Trail:
    """One request's path through the router: attempts sent and the route that served it."""

    request_id: str | None = None
    attempts: int = 0
    served_by: str | None = None  # the fallback model that answered, when one did

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return max(0, self.attempts - 1)


TRAIL: contextvars.ContextVar[Trail | None] = contextvars.ContextVar("trail", default=None)


def current() -> Trail | None:
    """The trail of the request being handled, if any."""
    return TRAIL.get()


class WarningLimiter:
    """A token bucket per key: ``allow`` says whether a line may be written, ``held`` how many
    were refused since the last one that was."""

    def __init__(
        self,
        *,
        burst: int = DEFAULT_BURST,
        refill_seconds: float = DEFAULT_REFILL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._burst = burst
        self._refill = refill_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float, int]] = {}  # tokens, at, held back

    def take(self, key: str) -> int | None:
        """None when the line is held back; else how many lines of ``key`` were held before it."""
        now = self._clock()
        tokens, at, held = self._buckets.get(key, (float(self._burst), now, 0))
        tokens = min(float(self._burst), tokens + (now - at) / self._refill)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now, held + 1)
            return None
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._buckets.clear()  # deployment names are a closed set; this is only a bound
        self._buckets[key] = (tokens - 1.0, now, 0)
        return held


LIMITER = WarningLimiter()


def warn(kind: str, subject: str, message: str, **fields: object) -> None:
    """Log a warning about ``subject`` (a deployment, Redis), rate-limited per kind and subject."""
    held = LIMITER.take(f"{kind}:{subject}")
    if held is None or not log.isEnabledFor(logging.WARNING):
        return
    trail = TRAIL.get()
    extra: dict[str, object] = {"event": kind, "subject": subject, **fields}
    if trail is not None and trail.request_id:
        extra["request_id"] = trail.request_id
    if held:
        extra["suppressed"] = held
    log.warning(message, extra=extra)


def reason(error: BaseException) -> str:
    """A short, closed-set reason for a failure (for logs; never the upstream's message)."""
    if isinstance(error, UpstreamStatusError):
        return f"status_{error.upstream_status}"
    if isinstance(error, GatewayError):
        return error.code or type(error).__name__
    return type(error).__name__


# -- hooks the router and the upstream client call ------------------------------------------------


def attempt_sent(deployment: str) -> None:
    """An upstream attempt is about to be sent."""
    trail = TRAIL.get()
    if trail is not None:
        trail.attempts += 1


def attempt_failed(deployment: str, error: BaseException | None) -> None:
    """An upstream attempt failed before the answer's first event reached the client."""
    if error is None:
        return
    status = error.upstream_status if isinstance(error, UpstreamStatusError) else None
    warn("upstream_failure", deployment, "upstream attempt failed", deployment=deployment,
         reason=reason(error), upstream_status=status)  # fmt: skip


def retrying(deployment: str, last: GatewayError | None, delay: float) -> None:
    """The router retries on ``deployment`` after ``last`` failed."""
    why = "unknown" if last is None else reason(last)
    warn("retry", deployment, "retrying upstream request", deployment=deployment, reason=why,
         delay_ms=round(delay * 1000, 1))  # fmt: skip


def fell_back(model: str, fallback: str, deployment: str) -> None:
    """A fallback model's deployment answered for ``model``."""
    trail = TRAIL.get()
    if trail is not None:
        trail.served_by = fallback
    warn("fallback", f"{model}->{fallback}", "served by a fallback model", model=model,
         fallback=fallback, deployment=deployment)  # fmt: skip


def breaker_changed(deployment: str, state: BreakerState) -> None:
    """A deployment's circuit breaker changed state."""
    name = state.name.lower()
    if state is BreakerState.CLOSED:
        log.info("circuit breaker closed", extra={"deployment": deployment, "state": name})
        return
    warn(f"breaker_{name}", deployment, f"circuit breaker {name.replace('_', '-')}",
         deployment=deployment, state=name)  # fmt: skip
