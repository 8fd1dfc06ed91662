"""Prometheus metrics, correct with several worker processes.

The supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts a worker, so every worker records
into files there and ``/metrics`` on any worker sums them all (prometheus_client's multiprocess
mode: counters summed, live gauges ``livesum``, dead workers marked by the supervisor). Without that
variable (a single in-process app, as in unit tests) the default registry is used.

Names follow Prometheus conventions with the ``llm_gateway_`` prefix. Nothing here is called per
event: a stream's inter-event gaps are bucketed in plain ints and published once when it ends,
everything else once per request or per flush.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "llm_gateway_requests_total",
    "Requests answered, by route, model and status.",
    ["route", "model", "status"],
)
TIME_TO_FIRST_BYTE = Histogram(
    "llm_gateway_time_to_first_byte_seconds",
    "Time from the request to the first byte of the answer, by model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "llm_gateway_request_duration_seconds",
    "Time from the request to the end of its answer.",
    ["route", "model"],
    buckets=_DURATION_BUCKETS,
)
INTER_EVENT = Histogram(
    "llm_gateway_inter_event_seconds",
    "Time between two writes of a stream to its client (inter-token latency), by model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "llm_gateway_prompt_tokens_total", "Prompt tokens, by model and key.", ["model", "key"]
)
COMPLETION_TOKENS = Counter(
    "llm_gateway_completion_tokens_total", "Completion tokens, by model and key.", ["model", "key"]
)
CACHE_LOOKUPS = Counter(
    "llm_gateway_cache_lookups_total", "Response cache lookups, by result (hit, miss).", ["result"]
)
HEDGES = Counter(
    "llm_gateway_hedges_total",
    "Hedged streams by outcome: won (the hedge answered first), lost (the first request did),"
    " not_needed (the first event came before the delay), no_budget.",
    ["outcome"],
)
HEDGE_PROMPT_TOKENS = Counter(
    "llm_gateway_hedge_prompt_tokens_total",
    "Prompt tokens of hedged requests that were cancelled (paid for nothing), estimated, by model.",
    ["model"],
)
HEDGE_COST = Counter(
    "llm_gateway_hedge_cost_usd_total",
    "USD paid for the prompts of cancelled hedges (estimated tokens at the price table), by model.",
    ["model"],
)
HEDGE_TIME_SAVED = Counter(
    "llm_gateway_hedge_time_saved_seconds_total",
    "Time to first event saved by hedges that won, estimated from the first attempt's deployment"
    " (its recent times to first event later than the win; 0 when it has none), by model.",
    ["model"],
)
SPEND = Counter(
    "llm_gateway_spend_usd_total",
    "USD spent on upstream answers at the price table (exact or estimated tokens; cache hits"
    " and models without a price add nothing), by model and key.",
    ["model", "key"],
)
LOOP_LAG = Gauge(
    "llm_gateway_loop_lag_seconds",
    "How late the worker's event loop runs its timers (decaying peak), worst worker.",
    multiprocess_mode="livemax",
)
ACCEPT_QUEUE = Gauge(
    "llm_gateway_accept_queue",
    "Connections waiting in the listen queues of the workers.",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "llm_gateway_shed_total",
    "Requests refused at once because the worker was overloaded, by reason (lag, queue).",
    ["reason"],
)
ACTIVE_STREAMS = Gauge(
    "llm_gateway_active_streams", "Streams being relayed now.", multiprocess_mode="livesum"
)
UPSTREAM_IN_FLIGHT = Gauge(
    "llm_gateway_upstream_in_flight",
    "Upstream requests in flight, by deployment.",
    ["deployment"],
    multiprocess_mode="livesum",
)
UPSTREAM_CAPACITY = Gauge(
    "llm_gateway_upstream_capacity",
    "Upstream connection limit, by deployment (per worker).",
    ["deployment"],
    multiprocess_mode="livesum",
)
UPSTREAM_ERRORS = Counter(
    "llm_gateway_upstream_errors_total",
    "Upstream failures, by deployment and error code.",
    ["deployment", "code"],
)
STREAM_TERMINATIONS = Counter(
    "llm_gateway_stream_terminations_total", "Ended streams, by cause.", ["cause"]
)
STATS_PUBLISHED = Counter(
    "llm_gateway_stats_events_published_total", "Stats events published by requests."
)
STATS_FLUSHED = Counter(
    "llm_gateway_stats_events_flushed_total", "Stats events written to the store."
)
STATS_DROPPED = Counter(
    "llm_gateway_stats_events_dropped_total",
    "Stats events that left memory because a buffer was full (they stay in the spool).",
)
WORKER_CRASH_REQUESTS = Counter(
    "llm_gateway_worker_crash_requests_total",
    "Requests in flight on a worker that died, recorded as worker_crash from its spool.",
)
WORKER_CRASH_UNDELIVERED = Counter(
    "llm_gateway_worker_crash_undelivered_events_total",
    "Stats events a dead worker had not yet delivered, replayed from its spool.",
)
STATS_FLUSH_FAILURES = Counter(
    "llm_gateway_stats_flush_failures_total", "Flushes that failed and will be retried."
)
STATS_FLUSH_DURATION = Histogram(
    "llm_gateway_stats_flush_duration_seconds",
    "Time to write one batch to the store.",
    buckets=_LATENCY_BUCKETS,
)
STATS_BUFFERED = Gauge(
    "llm_gateway_stats_events_buffered",
    "Stats events waiting to be flushed.",
    multiprocess_mode="livesum",
)
STATS_FLUSH_LAG = Gauge(
    "llm_gateway_stats_flush_lag_seconds",
    "Age of the oldest stats event not yet in the store.",
    multiprocess_mode="max",
)


BREAKER_STATE = Gauge(
    "llm_gateway_circuit_breaker_state",
    "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open (the worst over workers).",
    ["deployment"],
    multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "llm_gateway_circuit_breaker_transitions_total",
    "Breaker state changes, by deployment and state.",
    ["deployment", "state"],
)
RATE_LIMITED = Counter(
    "llm_gateway_rate_limited_total",
    "Requests refused by a rate limit or the worker's admission cap, by scope.",
    ["scope"],
)
RATE_LIMIT_FALLBACKS = Counter(
    "llm_gateway_rate_limit_fallbacks_total",
    "Rate-limiter calls answered by the worker's local limits because Redis did not answer.",
)
REDIS_FAILURES = Counter(
    "llm_gateway_redis_failures_total",
    "Redis calls that failed or timed out, by user (store, limiter, cache, streams, bus).",
    ["user"],
)
CACHE_EVICTIONS = Counter(
    "llm_gateway_cache_evictions_total", "In-memory cache entries evicted to stay within bounds."
)
CACHE_ERRORS = Counter(
    "llm_gateway_cache_errors_total", "Cache calls to Redis that failed (answered as misses)."
)
CACHE_STORES = Counter(
    "llm_gateway_cache_stores_total", "Answers written to the cache, by shape.", ["kind"]
)
COALESCED = Counter(
    "llm_gateway_coalesced_requests_total",
    "Requests that attached to an identical request in flight instead of calling the upstream.",
)
RESUMABLE_STREAMS = Counter(
    "llm_gateway_resumable_streams_total", "Streams started as resumable (with an event log)."
)
STREAM_RESUMES = Counter(
    "llm_gateway_stream_resumes_total",
    "GET /v1/streams/{id} answers, by result (local, redis, gone, refused).",
    ["result"],
)
RESUME_MIRROR_FAILURES = Counter(
    "llm_gateway_resume_mirror_failures_total",
    "Resumable streams that stopped being mirrored to Redis (resumable on their worker only).",
)
UPSTREAM_RETRIES = Counter(
    "llm_gateway_upstream_retries_total",
    "Attempts sent after an earlier one failed, by the deployment tried and the failure.",
    ["deployment", "reason"],
)
FALLBACKS = Counter(
    "llm_gateway_fallbacks_total", "Requests served by a fallback model.", ["model", "fallback"]
)


def initialise(
    *,
    stream_causes: list[str],
    deployments: list[str],
    breaker_states: list[str],
    fallbacks: list[tuple[str, str]],
    limit_scopes: list[str],
) -> None:
    """Create the known label values at zero, so rates and alerts have series from the start."""
    for result in ("hit", "miss"):
        CACHE_LOOKUPS.labels(result)
    for kind in ("stream", "json"):  # CacheEntry.kind
        CACHE_STORES.labels(kind)
    for where in ("local", "redis", "gone"):  # where a resume found its stream
        STREAM_RESUMES.labels(where)
    for cause in stream_causes:
        STREAM_TERMINATIONS.labels(cause)
    for deployment in deployments:
        for state in breaker_states:
            BREAKER_TRANSITIONS.labels(deployment, state)
    for model, fallback in fallbacks:
        FALLBACKS.labels(model, fallback)
    for scope in limit_scopes:
        RATE_LIMITED.labels(scope)


def _render() -> bytes:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type; file reads happen off the event loop."""
    return await asyncio.to_thread(_render), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Tell the multiprocess collector a worker is gone, so its live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


INTER_EVENT_BOUNDS = _LATENCY_BUCKETS


def publish_inter_event(model: str) -> Callable[[list[int], float], None]:
    """Adds a stream's bucketed inter-event gaps to the histogram in one go.

    prometheus_client has no bulk observe; its histogram child keeps one value per bucket and a
    sum (``_buckets``, ``_sum``), which this adds to directly: a handful of mmap writes per stream
    instead of one per event. The bucket bounds are :data:`INTER_EVENT_BOUNDS`.
    """
    child: Any = INTER_EVENT.labels(model)

    def publish(counts: list[int], total: float) -> None:
        for bucket, count in zip(child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        child._sum.inc(total)

    return publish


class GapCounts:
    """Inter-event gaps bucketed in plain ints, published once per stream (a multiprocess metric
    update is an mmap write under a lock: never one per event)."""

    __slots__ = ("bounds", "counts", "publish_to", "total")

    def __init__(
        self, bounds: Sequence[float], publish_to: Callable[[list[int], float], None]
    ) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.publish_to = publish_to

    def add(self, gap: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, gap)] += 1
        self.total += gap

    def publish(self) -> None:
        if any(self.counts):
            self.publish_to(self.counts, self.total)
            self.counts = [0] * len(self.counts)
            self.total = 0.0
