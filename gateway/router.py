"""Routing: which deployment serves a request, and what happens when it fails before its first byte.

For each request the router builds a plan: the route's deployments in the order of its strategy
(weighted random, least busy, lowest latency), then the deployments of each fallback model. It walks
the plan, round again while attempts remain (so a lone deployment is retried too), skipping
deployments whose circuit breaker is open and upstream keys that are cooling down after a 429. It
retries on connect errors, timeouts and the configured statuses with full-jitter backoff,
Retry-After honoured, within a retry budget and a total time. Nothing here runs after the first
byte: from then on a failure is the relay's final error event.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping

from gateway import metrics, trail
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.config import Config, ModelRoute
from gateway.deployments import (
    Attempt,
    BodyFor,
    DeploymentHealth,
    KeyPool,
    MakeSource,
    Opened,
)
from gateway.dialects import UPSTREAM_TYPES
from gateway.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.hedging import HedgedRace
from gateway.upstream import Upstreams


class Router:
    """Plans and opens upstream requests for one worker."""

    def __init__(
        self,
        config: Config,
        upstreams: Upstreams,
        in_flight: Callable[[], Mapping[str, int]],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._upstreams = upstreams
        self._in_flight = in_flight
        self.clock = clock
        self._rng = rng or random.Random()
        self.retry = config.routing.retries
        self._active = 0
        self.retrying = 0
        self.health = {
            name: DeploymentHealth(
                deployment,
                CircuitBreaker(deployment.breaker, clock=clock, on_change=_export(name)),
                KeyPool(deployment.api_keys, clock),
            )
            for name, deployment in config.deployments.items()
        }

    # -- planning ---------------------------------------------------------------------------------

    def plan(self, route: ModelRoute) -> list[Attempt]:
        """The deployments to try, in order: the route's, then each fallback model's."""
        attempts: list[Attempt] = []
        for current in (route, *(self._config.models[f] for f in route.fallbacks)):
            attempts.extend(Attempt(h, current) for h in self._order(current))
        return attempts

    def _order(self, route: ModelRoute) -> list[DeploymentHealth]:
        candidates = [self.health[name] for name in route.deployments]
        if route.strategy == "least-busy":
            busy = self._in_flight()
            return sorted(
                candidates, key=lambda h: (busy.get(h.deployment.name, 0), self._rng.random())
            )
        if route.strategy == "lowest-latency":
            return sorted(candidates, key=lambda h: (h.latency or 0.0, self._rng.random()))
        # Weighted random order: each position drawn in proportion to the remaining weights.
        return sorted(
            candidates, key=lambda h: -math.log(1.0 - self._rng.random()) / h.deployment.weight
        )

    # -- opening ----------------------------------------------------------------------------------

    async def open(
        self,
        route: ModelRoute,
        path: str,
        body_for: BodyFor,
        *,
        make_source: MakeSource | None = None,
        body_limit: int = 32 * 1024 * 1024,
    ) -> Opened:
        """Send the request along the plan until a deployment answers; raise the last failure.

        With ``make_source`` (a streaming request) an attempt succeeds only once the stream's
        first event arrived: a stream that breaks, stalls or sends garbage before it is retried
        like a refused connection. Without it, once the whole body arrived. ``routing.max_time``
        bounds the whole sequence, the running attempt included.
        """
        self._active += 1
        try:
            async with asyncio.timeout(self.retry.max_time):
                return await self._walk(route, path, body_for, make_source, body_limit)
        except TimeoutError:
            raise UpstreamTimeout(
                f"No deployment of '{route.name}' answered within "
                f"routing.retries.max_time ({self.retry.max_time:g} s)."
            ) from None
        finally:
            self._active -= 1

    async def _walk(
        self,
        route: ModelRoute,
        path: str,
        body_for: BodyFor,
        make_source: MakeSource | None,
        body_limit: int,
    ) -> Opened:
        deadline = self.clock() + self.retry.max_time
        last: GatewayError | None = None
        sent = 0
        counted: set[str] = set()  # deployments this request already counted a failure against
        plan = self.plan(route)
        turn = skipped = 0  # the plan is walked round again while attempts remain
        while sent < self.retry.attempts and skipped < len(plan) and self.clock() < deadline:
            attempt = plan[turn % len(plan)]
            turn += 1
            health = attempt.health
            if not health.breaker.allow():
                skipped += 1
                continue
            key = health.keys.pick()
            if key is None:
                health.breaker.release()
                skipped += 1
                continue
            skipped = 0
            if sent:
                if not self.may_retry():
                    health.breaker.release()
                    break
                delay = self._backoff(sent, last)
                if self.clock() + delay >= deadline:
                    health.breaker.release()
                    break
                self.retrying += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.retrying -= 1
                metrics.UPSTREAM_RETRIES.labels(health.deployment.name, _reason(last)).inc()
                trail.retrying(health.deployment.name, last, delay)
            sent += 1
            started = self.clock()
            name = health.deployment.name
            try:
                opened = await self._attempt_or_race(
                    attempt, plan, path, body_for, key, make_source, body_limit, counted
                )
            except ServiceUnavailable as exc:
                # The deployment is at its own concurrency limit: nothing was sent, so this is
                # neither an attempt nor ill health; try the next one.
                health.breaker.release()
                sent -= 1
                skipped += 1
                last = exc
                continue
            except GatewayError as exc:
                last = self.judge(health, key, exc, counted)
            except BaseException:
                health.breaker.release()
                raise
            else:
                answered = self.health[opened.deployment.name]  # a hedge may have won
                answered.breaker.success()
                answered.observe(self.clock() - started)
                if attempt.route is not route:
                    metrics.FALLBACKS.labels(route.name, attempt.route.name).inc()
                    trail.fell_back(route.name, attempt.route.name, health.deployment.name)
                opened.attempts = sent
                return opened
            metrics.UPSTREAM_ERRORS.labels(name, _reason(last)).inc()
            trail.attempt_failed(name, last)
        if last is not None:
            raise last
        raise self._all_unavailable(route)

    async def attempt(
        self,
        attempt: Attempt,
        path: str,
        body_for: BodyFor,
        key: str,
        make_source: MakeSource | None,
        body_limit: int,
    ) -> Opened:
        """One try: the answer's headers, then its first event (a stream) or its body."""
        deployment = attempt.health.deployment
        call = body_for(attempt.route, deployment, key or None)
        response = await self._upstreams.send(
            deployment, call.path or path, call.body, headers=call.headers, api_key=call.api_key
        )
        if make_source is not None:
            source = make_source(response, deployment)
            source.start()
            try:
                await asyncio.shield(source.first)
            except BaseException:
                source.close()
                raise
            return Opened(deployment, attempt.route, source=source)
        try:
            async with asyncio.timeout(deployment.timeouts.idle):
                body = await response.read_body(body_limit)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Deployment {deployment.name!r} did not send its answer within "
                f"{deployment.timeouts.idle:g} s."
            ) from None
        finally:
            response.close()
        return Opened(deployment, attempt.route, status=response.status, body=body)

    def judge(
        self, health: DeploymentHealth, key: str, error: GatewayError, counted: set[str]
    ) -> GatewayError:
        """Apply a failed attempt to the breaker and the key pool. Returns the error when the
        request may go elsewhere; raises it when the request itself is at fault."""
        if isinstance(error, UpstreamStatusError):
            kind = UPSTREAM_TYPES[health.deployment.type]
            if error.upstream_status not in self.retry.statuses and not kind.retryable(
                error.upstream_status, error.body
            ):
                health.breaker.release()  # the request is at fault, not the deployment
                raise error
            if error.upstream_status == 429:
                health.breaker.release()
                health.keys.rest(key, _retry_after(error) or self._config.routing.key_cooldown)
            else:
                self._failed(health, counted)
            return error
        if isinstance(error, UpstreamUnreachable | UpstreamTimeout | UpstreamProtocolError) or (
            getattr(error, "retryable", False)  # a provider's own "overloaded" error event
        ):
            self._failed(health, counted)
            return error
        health.breaker.release()
        raise error

    async def _attempt_or_race(
        self,
        attempt: Attempt,
        plan: list[Attempt],
        path: str,
        body_for: BodyFor,
        key: str,
        make_source: MakeSource | None,
        body_limit: int,
        counted: set[str],
    ) -> Opened:
        """One attempt, or for a hedged route a race (gateway/hedging.py)."""
        if attempt.route.hedge is None or make_source is None:
            return await self.attempt(attempt, path, body_for, key, make_source, body_limit)
        race = HedgedRace(self, attempt, plan, path, body_for, make_source, body_limit, counted)
        return await race.run(key)

    def _failed(self, health: DeploymentHealth, counted: set[str]) -> None:
        """A deployment failed this request: its breaker counts it once per request, and never
        ejects a lone deployment (one that is the only deployment of every route it serves)."""
        name = health.deployment.name
        if name in counted:
            health.breaker.release()
            return
        counted.add(name)
        health.breaker.failure(may_open=self._may_eject(name))

    def _may_eject(self, name: str) -> bool:
        """Whether some route has somewhere else to send the deployment's traffic."""
        return any(
            len(route.deployments) > 1
            for route in self._config.models.values()
            if name in route.deployments
        )

    def may_retry(self) -> bool:
        """The retry budget: retries in flight stay under a share of the active requests."""
        budget = max(self.retry.budget_min, int(self.retry.budget_ratio * self._active))
        return self.retrying < budget

    def _backoff(self, sent: int, last: GatewayError | None) -> float:
        """Full jitter, and at least the upstream's Retry-After when it asked for one."""
        ceiling = min(self.retry.backoff_max, self.retry.backoff_base * 2 ** (sent - 1))
        delay = self._rng.uniform(0, ceiling)
        if isinstance(last, UpstreamStatusError) and last.upstream_status != 429:
            delay = max(delay, _retry_after(last) or 0.0)
        return delay

    def _all_unavailable(self, route: ModelRoute) -> ServiceUnavailable:
        waits = [a.health.breaker.retry_in() for a in self.plan(route)]
        retry_after = max(1, math.ceil(min(waits))) if waits else 1
        return ServiceUnavailable(
            f"No deployment can serve '{route.name}' right now (circuit breakers open or "
            "upstream keys resting).",
            code="no_healthy_deployment",
            headers={"Retry-After": str(retry_after)},
        )

    def describe(self) -> dict[str, object]:
        """Breaker states, latencies and load, for GET /health/detailed."""
        busy = self._in_flight()
        return {
            name: {
                "state": health.breaker.state.name.lower().replace("_", "-"),
                "retry_in_s": round(health.breaker.retry_in(), 3),
                "latency_ms": None if health.latency is None else round(health.latency * 1000, 2),
                "in_flight": busy.get(name, 0),
                "max_connections": health.deployment.max_connections,
            }
            for name, health in self.health.items()
        }


def _reason(error: GatewayError | None) -> str:
    if isinstance(error, UpstreamStatusError):
        return f"status_{error.upstream_status}"
    return "unknown" if error is None else (error.code or type(error).__name__)


def _retry_after(error: UpstreamError) -> float | None:
    value = error.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _export(deployment: str) -> Callable[[BreakerState], None]:
    gauge = metrics.BREAKER_STATE.labels(deployment)
    gauge.set(BreakerState.CLOSED.value)

    def changed(state: BreakerState) -> None:
        gauge.set(state.value)
        metrics.BREAKER_TRANSITIONS.labels(deployment, state.name.lower()).inc()
        trail.breaker_changed(deployment, state)

    return changed
