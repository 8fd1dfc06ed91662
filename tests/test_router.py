"""The router's plans, retries, key pool and breakers, against an upstream that follows a script."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.breaker import BreakerState
from gateway.config import Config, Deployment, ModelRoute, load_config
from gateway.deployments import UpstreamCall
from gateway.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.router import Router


class ScriptedUpstreams:
    """Each deployment fails with its scripted errors in turn, then answers (or always fails)."""

    def __init__(self) -> None:
        self.failing: dict[str, list[GatewayError]] = collections.defaultdict(list)
        self.down: dict[str, GatewayError] = {}
        self.by_key: dict[str, GatewayError] = {}
        self.sent: list[tuple[str, str | None]] = []
        self.hanging: set[str] = set()  # deployments that never answer

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def in_flight(self) -> Mapping[str, int]:
        return {}

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> Any:
        self.sent.append((deployment.name, api_key))
        if api_key in self.by_key:
            raise self.by_key[api_key]
        if deployment.name in self.down:
            raise self.down[deployment.name]
        if deployment.name in self.hanging:
            await asyncio.sleep(3600)
        if self.failing[deployment.name]:
            raise self.failing[deployment.name].pop(0)
        return Answered()


class Answered:
    """A JSON answer that arrived whole."""

    status = 200
    content_type = "application/json"

    async def read_body(self, limit: int) -> bytes:
        return b"{}"

    def close(self, *, complete: bool = False) -> None:
        return None


def config(**routing: Any) -> Config:
    return load_config(
        None,
        {},
        overrides={
            "routing": {
                "retries": {"backoff_base": 0.001, "backoff_max": 0.002, **routing},
                "breaker": {"failures": 3, "recovery": 30},
            },
            "deployments": {
                "a": {"base_url": "http://a/v1", "models": ["m"], "weight": 3},
                "b": {"base_url": "http://b/v1", "models": ["m"], "weight": 1},
                "c": {"base_url": "http://c/v1", "models": ["other"], "api_keys": ["k1", "k2"]},
            },
            "models": {
                "m": {"deployments": ["a", "b"], "fallbacks": ["other"]},
                "other": {"deployments": ["c"]},
                "a-only": {"deployments": ["a"]},
            },
        },
    )


def make_router(cfg: Config, upstreams: ScriptedUpstreams, **kwargs: Any) -> Router:
    return Router(cfg, upstreams, upstreams.in_flight, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def route(cfg: Config, name: str) -> ModelRoute:
    found = cfg.route_for(name)
    assert found is not None
    return found


def body_for(serving: ModelRoute, deployment: Deployment, key: str | None) -> UpstreamCall:
    return UpstreamCall(serving.name.encode(), api_key=key)


def server_error(status: int = 500, retry_after: str | None = None) -> UpstreamStatusError:
    return UpstreamStatusError(status, b'{"error": {"message": "x"}}', retry_after=retry_after)


async def test_weighted_random_follows_the_weights() -> None:
    """Weighted-random picks the weight-3 deployment first about three times in four."""
    cfg = config()
    router = make_router(cfg, ScriptedUpstreams())
    plan = route(cfg, "m")
    firsts = collections.Counter(router.plan(plan)[0].health.deployment.name for _ in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80  # weight 3 of 4


async def test_plan_ends_with_the_fallback_models() -> None:
    """A model's plan lists its own deployments first, then its fallback model's."""
    cfg = config()
    plan = make_router(cfg, ScriptedUpstreams()).plan(route(cfg, "m"))
    assert [a.health.deployment.name for a in plan][2:] == ["c"]
    assert plan[2].route.name == "other"


async def test_failure_before_first_byte_is_retried_on_another_deployment() -> None:
    """A refused connection is retried on the other deployment; three of them open its breaker."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = UpstreamUnreachable("refused")
    router = make_router(cfg, upstreams)
    for _ in range(10):
        opened = await router.open(route(cfg, "m"), "/chat/completions", body_for)
        assert opened.deployment.name == "b"
    # Three consecutive failures opened a's breaker: later requests went straight to b.
    assert [name for name, _ in upstreams.sent].count("a") == 3
    assert router.health["a"].breaker.state is BreakerState.OPEN


async def test_every_deployment_failing_falls_back_to_the_next_model() -> None:
    """When every deployment of a model fails, the fallback model answers (attempt three)."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = upstreams.down["b"] = server_error(502)
    opened = await make_router(cfg, upstreams).open(route(cfg, "m"), "/x", body_for)
    assert opened.deployment.name == "c"
    assert opened.route.name == "other"
    assert opened.attempts == 3


async def test_non_retryable_status_is_returned_at_once() -> None:
    """An upstream 400 is returned after one attempt, with no retry elsewhere."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = upstreams.down["b"] = server_error(400)
    with pytest.raises(UpstreamStatusError) as caught:
        await make_router(cfg, upstreams).open(route(cfg, "m"), "/x", body_for)
    assert caught.value.upstream_status == 400
    assert len(upstreams.sent) == 1


async def test_attempts_are_bounded() -> None:
    """routing.retries.attempts caps the upstream calls, however many deployments remain."""
    cfg = config(attempts=2)
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = upstreams.down["b"] = upstreams.down["c"] = server_error(503)
    with pytest.raises(UpstreamStatusError):
        await make_router(cfg, upstreams).open(route(cfg, "m"), "/x", body_for)
    assert len(upstreams.sent) == 2


async def test_all_breakers_open_fails_fast_with_retry_after() -> None:
    """Once failing requests opened the only breaker, the answer is a 503 with no upstream call."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = UpstreamUnreachable("refused")
    router = make_router(cfg, upstreams)
    for _ in range(3):  # breaker.failures: each request counts once, whatever its attempts
        with pytest.raises(UpstreamUnreachable):
            await router.open(route(cfg, "a-only"), "/x", body_for)
    sent = len(upstreams.sent)
    assert sent == 7  # 3 + 3 + 1: the third request's first failure opened the breaker
    with pytest.raises(ServiceUnavailable) as caught:
        await router.open(route(cfg, "a-only"), "/x", body_for)
    assert len(upstreams.sent) == sent  # no upstream call
    assert 29 <= int(caught.value.headers["Retry-After"]) <= 30
    assert router.describe()["a"]["state"] == "open"  # type: ignore[index]


async def test_max_time_bounds_the_running_attempt_too() -> None:
    """routing.retries.max_time ends an attempt still waiting, not only the start of the next."""
    cfg = config(max_time=0.3)
    upstreams = ScriptedUpstreams()
    upstreams.hanging.add("a")
    router = make_router(cfg, upstreams)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        await router.open(route(cfg, "a-only"), "/x", body_for)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_one_request_counts_once_against_a_breaker() -> None:
    """Two requests that fail on every attempt count two failures, not six (breaker at 3)."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = UpstreamUnreachable("refused")
    router = make_router(cfg, upstreams)
    for _ in range(2):
        with pytest.raises(UpstreamUnreachable):
            await router.open(route(cfg, "a-only"), "/x", body_for)
    assert router.describe()["a"]["state"] == "closed"  # type: ignore[index]


async def test_a_lone_deployment_is_never_ejected() -> None:
    """A deployment that is the only one of its routes keeps taking requests however it fails."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["c"] = UpstreamUnreachable("refused")
    router = make_router(cfg, upstreams)
    for _ in range(5):
        with pytest.raises(UpstreamUnreachable):
            await router.open(route(cfg, "other"), "/x", body_for)
    assert router.describe()["c"]["state"] == "closed"  # type: ignore[index]
    assert len(upstreams.sent) == 15  # every request still reached it


async def test_a_request_the_upstream_rejects_never_feeds_the_breaker() -> None:
    """An upstream 400 is the request's fault: not retried, and the breaker does not count it."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = server_error(400)
    router = make_router(cfg, upstreams)
    for _ in range(5):
        with pytest.raises(UpstreamStatusError):
            await router.open(route(cfg, "a-only"), "/x", body_for)
    assert len(upstreams.sent) == 5
    assert router.describe()["a"]["state"] == "closed"  # type: ignore[index]


async def test_a_key_answered_429_rests_for_its_retry_after() -> None:
    """A key answered 429 rests for its Retry-After, not a breaker failure, then serves again."""
    now = [0.0]
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.by_key["k1"] = server_error(429, retry_after="20")
    router = make_router(cfg, upstreams, clock=lambda: now[0])
    for _ in range(4):
        opened = await router.open(route(cfg, "other"), "/x", body_for)
        assert opened.deployment.name == "c"
    assert [key for _, key in upstreams.sent] == ["k1", "k2", "k2", "k2", "k2"]
    assert router.health["c"].breaker.state is BreakerState.CLOSED  # 429 is not ill health
    now[0] = 21.0
    del upstreams.by_key["k1"]
    await router.open(route(cfg, "other"), "/x", body_for)
    assert upstreams.sent[-1] == ("c", "k1")


async def test_retry_budget_limits_concurrent_retries() -> None:
    """With a retry budget of one, concurrent failing requests give up rather than all retrying."""
    cfg = config(budget_min=1, budget_ratio=0.01, backoff_base=0.2, backoff_max=0.2)
    upstreams = ScriptedUpstreams()
    for name in ("a", "b"):
        upstreams.failing[name] = [server_error(503) for _ in range(5)]
    router = make_router(cfg, upstreams)
    results = await asyncio.gather(
        *(router.open(route(cfg, "a-only"), "/x", body_for) for _ in range(5)),
        return_exceptions=True,
    )
    # Five first attempts failed; with a budget of one retry at a time, some gave up at once.
    assert any(isinstance(r, UpstreamStatusError) for r in results)
    assert len(upstreams.sent) < 10


async def test_a_full_deployment_is_passed_over_without_counting_as_a_failure() -> None:
    """A deployment whose pool is full is skipped, and its breaker stays closed."""
    cfg = config()
    upstreams = ScriptedUpstreams()
    upstreams.down["a"] = ServiceUnavailable("full", code="upstream_pool_full")
    router = make_router(cfg, upstreams)
    for _ in range(10):
        assert (await router.open(route(cfg, "m"), "/x", body_for)).deployment.name == "b"
    assert router.health["a"].breaker.state is BreakerState.CLOSED


async def test_least_busy_and_lowest_latency_orders() -> None:
    """least-busy orders by requests in flight, lowest-latency by observed latency."""
    cfg = load_config(
        None,
        {},
        overrides={
            "deployments": {
                "a": {"base_url": "http://a/v1", "models": ["m"]},
                "b": {"base_url": "http://b/v1", "models": ["m"]},
            },
            "models": {
                "busy": {"deployments": ["a", "b"], "strategy": "least-busy"},
                "quick": {"deployments": ["a", "b"], "strategy": "lowest-latency"},
            },
        },
    )
    load = {"a": 5, "b": 1}
    router = Router(cfg, ScriptedUpstreams(), lambda: load)  # type: ignore[arg-type]
    assert [x.health.deployment.name for x in router.plan(route(cfg, "busy"))] == ["b", "a"]
    load.update(a=0)
    assert [x.health.deployment.name for x in router.plan(route(cfg, "busy"))] == ["a", "b"]
    for seconds in (0.5, 0.4, 0.6):
        router.health["a"].observe(seconds)
        router.health["b"].observe(seconds / 10)
    assert [x.health.deployment.name for x in router.plan(route(cfg, "quick"))] == ["b", "a"]


def test_time_saved_by_a_winning_hedge_is_what_slower_first_events_took_beyond_it() -> None:
    """A hedge that won at 1 s saved, by the first deployment's recent times to first event,
    the mean of what those slower than 1 s took beyond it; nothing when none were slower."""
    health = make_router(config(), ScriptedUpstreams()).health["a"]
    for seconds in (0.1, 0.2, 3.0, 2.0):
        health.observe(seconds)
    assert health.wait_beyond(1.0) == pytest.approx(((3.0 - 1.0) + (2.0 - 1.0)) / 2)
    assert health.wait_beyond(5.0) == 0.0
