"""Hedged streams: when a stream's first event is late, the same request goes to the next
deployment of the plan too, and the first stream to deliver an event wins; the others are
cancelled at once. Hedges share the router's retry budget, and nothing is hedged once a byte
reached the client (a race is over at the first event).

A hedge's failure is judged here; the first attempt's is left to the router (unless a hedge
wins). Racers still running when the race is decided are cancelled and released.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway import metrics
from gateway.config import RetrySettings
from gateway.deployments import Attempt, BodyFor, DeploymentHealth, MakeSource, Opened
from gateway.errors import GatewayError, UpstreamStatusError

Racers = dict[asyncio.Future[Opened], tuple[DeploymentHealth, str]]


class Router(Protocol):
    """What a race needs from the router that runs it."""

    retry: RetrySettings
    retrying: int  # retries and hedges in flight (the budget's count)

    def clock(self) -> float: ...

    def may_retry(self) -> bool: ...

    async def attempt(
        self,
        attempt: Attempt,
        path: str,
        body_for: BodyFor,
        key: str,
        make_source: MakeSource | None,
        body_limit: int,
    ) -> Opened: ...

    def judge(
        self, health: DeploymentHealth, key: str, error: GatewayError, counted: set[str]
    ) -> GatewayError: ...


class HedgedRace:
    """One request over a hedged route: its first attempt and the hedges sent after it."""

    def __init__(
        self,
        router: Router,
        first: Attempt,
        plan: list[Attempt],
        path: str,
        body_for: BodyFor,
        make_source: MakeSource,
        body_limit: int,
        counted: set[str],
    ) -> None:
        self.router = router
        self.first = first
        self.plan = plan
        self.path = path
        self.body_for = body_for
        self.make_source = make_source
        self.body_limit = body_limit
        self.counted = counted

    async def run(self, key: str) -> Opened:
        """Race until a stream delivers its first event; raise when every racer failed."""
        router, attempt = self.router, self.first
        hedge = attempt.route.hedge
        assert hedge is not None
        delay = hedge.after if hedge.after is not None else attempt.health.p95()
        primary = asyncio.ensure_future(
            router.attempt(
                attempt, self.path, self.body_for, key, self.make_source, self.body_limit
            )
        )
        racers: Racers = {primary: (attempt.health, key)}
        extra = 0
        started = router.clock()
        primary_error: GatewayError | None = None
        try:
            while racers:
                wait = None
                if delay is not None and extra < hedge.max_extra:
                    wait = max(0.0, started + delay * (extra + 1) - router.clock())
                done, _ = await asyncio.wait(
                    racers, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    extra += 1
                    if not self._hedge(racers):
                        extra = hedge.max_extra  # nowhere to hedge to, or no budget
                    continue
                for task in done:
                    health, racer_key = racers.pop(task)
                    error = task.exception()
                    if error is None:
                        if primary_error is not None:
                            router.judge(attempt.health, key, primary_error, self.counted)
                        elapsed = router.clock() - started
                        return self._won(task, primary, racers, extra, elapsed)
                    if not isinstance(error, GatewayError):
                        raise error
                    if task is primary:
                        if not racers:
                            raise error
                        if isinstance(error, UpstreamStatusError) and (
                            error.upstream_status not in router.retry.statuses
                        ):
                            raise error  # the request is at fault: no hedge will do better
                        primary_error = error
                    else:
                        router.judge(health, racer_key, error, self.counted)
            assert primary_error is not None
            raise primary_error
        finally:
            for task, (health, _) in racers.items():
                task.cancel()
                task.add_done_callback(_close_late_winner)
                health.breaker.release()

    def _hedge(self, racers: Racers) -> bool:
        """Start the same request on the next deployment of the plan that is not racing yet."""
        if not self.router.may_retry():
            metrics.HEDGES.labels("no_budget").inc()
            return False
        busy = {health.deployment.name for health, _ in racers.values()}
        for candidate in self.plan:
            health = candidate.health
            if health.deployment.name in busy or not health.breaker.allow():
                continue
            key = health.keys.pick()
            if key is None:
                health.breaker.release()
                continue
            task = asyncio.ensure_future(
                self.router.attempt(
                    candidate, self.path, self.body_for, key, self.make_source, self.body_limit
                )
            )
            racers[task] = (health, key)
            self.router.retrying += 1
            task.add_done_callback(self._hedge_done)
            return True
        return False

    def _hedge_done(self, task: asyncio.Future[Opened]) -> None:
        self.router.retrying -= 1

    def _won(
        self,
        winner: asyncio.Future[Opened],
        primary: asyncio.Future[Opened],
        racers: Racers,
        extra: int,
        elapsed: float,
    ) -> Opened:
        first = self.first
        opened = winner.result()
        if primary in racers:
            # The slow primary lost: its time to first event was at least this long. Kept in its
            # window, or the slow answers hedged away would vanish from its p95 and `after: p95`
            # would hedge at the fast ones' p95.
            racers[primary][0].recent.append(elapsed)
        opened.hedges = extra
        opened.hedges_lost = len(racers)  # still running: cancelled, their prompt paid
        if extra == 0:
            metrics.HEDGES.labels("not_needed").inc()
        elif winner is primary:
            metrics.HEDGES.labels("lost").inc()
        else:
            metrics.HEDGES.labels("won").inc()
            saved = first.health.wait_beyond(elapsed)
            metrics.HEDGE_TIME_SAVED.labels(first.route.name).inc(saved)
        return opened


def _close_late_winner(task: asyncio.Future[Opened]) -> None:
    """A racer that answered after the race was decided: close what it opened."""
    if task.cancelled() or task.exception() is not None:
        return
    source = task.result().source
    if source is not None:
        source.close()
