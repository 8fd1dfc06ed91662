"""What the router knows about each deployment (its health, its key pool) and the values an
attempt is made of: the step of a plan, the call sent, and the answer that arrived."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.breaker import CircuitBreaker
from gateway.config import Deployment, ModelRoute
from gateway.source import EventSource
from gateway.stream import UpstreamResponse

LATENCY_WEIGHT = 0.2  # of each new sample in the moving average of time to first byte
P95_WINDOW = 200  # recent times to first event kept per deployment, for `hedge: {after: p95}`
P95_MIN_SAMPLES = 20


class KeyPool:
    """An upstream deployment's API keys, rotated, with keys answered 429 resting a while."""

    __slots__ = ("_clock", "_keys", "_next", "_resting")

    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float]) -> None:
        self._keys = keys
        self._clock = clock
        self._next = 0
        self._resting: dict[str, float] = {}

    def pick(self) -> str | None:
        """The next usable key; None when every key is resting (or the deployment has none: "")."""
        if not self._keys:
            return ""
        now = self._clock()
        for _ in range(len(self._keys)):
            key = self._keys[self._next % len(self._keys)]
            self._next += 1
            if self._resting.get(key, 0.0) <= now:
                return key
        return None

    def rest(self, key: str, seconds: float) -> None:
        """Skip ``key`` for ``seconds``."""
        if key:
            self._resting[key] = self._clock() + seconds


@dataclass(slots=True)
class DeploymentHealth:
    """What the router knows about one deployment in this worker."""

    deployment: Deployment
    breaker: CircuitBreaker
    keys: KeyPool
    latency: float | None = None  # moving average of time to first event, seconds
    recent: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=P95_WINDOW)
    )

    def observe(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.latency = (
            seconds
            if self.latency is None
            else self.latency + LATENCY_WEIGHT * (seconds - self.latency)
        )

    def p95(self) -> float | None:
        """The 95th percentile of recent times to first event (None until enough samples)."""
        if len(self.recent) < P95_MIN_SAMPLES:
            return None
        ordered = sorted(self.recent)
        return ordered[int(0.95 * (len(ordered) - 1))]

    def wait_beyond(self, waited: float) -> float:
        """How much longer than ``waited`` a first event takes here, on average of the recent
        ones that took longer (0 when none did): what a hedge that won at ``waited`` saved.

        An estimate, and a low one: a first attempt a hedge beat was cancelled, so the window
        holds only how long it had waited by then (a lower bound), not its real time."""
        later = [seconds - waited for seconds in self.recent if seconds > waited]
        return sum(later) / len(later) if later else 0.0


@dataclass(slots=True)
class Attempt:
    """One step of a plan: a deployment and the route it serves the request for."""

    health: DeploymentHealth
    route: ModelRoute


@dataclass(slots=True)
class Opened:
    """An answer that arrived, and where it came from: a stream whose first event is in, or a
    whole body."""

    deployment: Deployment
    route: ModelRoute
    source: EventSource | None = None
    status: int = 200
    body: bytes = b""
    attempts: int = 1
    hedges: int = 0  # extra requests sent because the first event was late
    hedges_lost: int = 0  # of the requests raced, how many were cancelled (their prompt is paid)


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What to send one deployment: the body, and where the deployment's type wants it."""

    body: bytes
    path: str | None = None  # None: the endpoint's own path
    headers: Mapping[str, str] | None = None
    api_key: str | None = None  # for the pool's Bearer header (OpenAI-style deployments)


# The request for a deployment, given the route it serves and the upstream key picked for it.
BodyFor = Callable[[ModelRoute, Deployment, str | None], UpstreamCall]
MakeSource = Callable[[UpstreamResponse, Deployment], EventSource]


class OpenedUpstream(Protocol):
    """What the router hands over: where the answer came from, and either a stream (its first
    event already in) or a whole body."""

    @property
    def deployment(self) -> Deployment: ...

    @property
    def source(self) -> EventSource | None: ...

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...
