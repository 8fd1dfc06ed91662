"""One stats event and the metrics for every /v1 request, whatever happened to it.

The middleware sits outside error rendering, so it sees the final status of every request,
including rejected ones, and its ``finally`` also runs when a client disconnect cancels the handler.
Handlers fill in a :class:`RequestRecord` as they learn the model, the deployment and the tokens.

A request is written to the worker's spool when it starts (:class:`LiveRequests`), and what it has
learned (key, model, tokens so far) every ``PROGRESS_INTERVAL`` seconds, so a worker killed in the
middle still leaves a record of it: the supervisor turns it into a ``worker_crash`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import metrics
from gateway.config import WILDCARD_MODEL, Config
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.logs import REQUEST_ID
from gateway.openai import Usage, estimate_prompt_tokens
from gateway.spend import Cost, hedge_cost, request_cost
from gateway.spool import Spool
from gateway.stats import ANONYMOUS_KEY, StatsEvent
from gateway.store.base import new_event_id
from gateway.stream import StreamOutcome
from gateway.trail import TRAIL, Trail
from gateway.web import access
from gateway.web.state import (
    API_KEY,
    CONFIG,
    LIVE_REQUESTS,
    PRICES,
    RECORD,
    RESPONSE_HEADERS,
    SIDECAR,
)

PROGRESS_INTERVAL = 0.5
# Label values come from closed sets (PITFALLS.md): a raw path or a client-chosen model name as a
# label let unauthenticated requests add series without bound.
UNMATCHED_ROUTE = "unmatched"
OTHER_MODEL = "other"


@dataclass(slots=True)
class RequestRecord:
    """What a handler learned about its request, for the one stats event at the end."""

    started: float
    ts: float
    model: str | None = None
    deployment: str | None = None
    body: dict[str, Any] | None = None
    usage: Usage | None = None  # a non-streaming answer's usage
    stream: StreamOutcome | None = None
    answered_at: float | None = None  # when a non-streaming answer came back
    error: GatewayError | None = None
    cache_hit: bool = False
    answer_tokens: int = 0  # a JSON answer without usage: its completion tokens, estimated
    # Called with the final event once the request ended (settling rate limits, for one).
    finishers: list[Callable[[StatsEvent], None]] = field(default_factory=list)
    # A resumable stream outlives its first request: the event waits for this.
    until: asyncio.Future[None] | None = None
    trail: Trail = field(default_factory=Trail)  # attempts, seen by the router
    cost: float | None = None  # USD, set with the event; None (absent from logs) when unknown
    event_id: str = field(default_factory=new_event_id)  # the spool's begin line and the event
    _prompt_estimate: int | None = field(default=None, init=False, repr=False)

    def prompt_estimate(self) -> int:
        """The prompt's tokens as the gateway estimates them (0 before the body was read)."""
        if self._prompt_estimate is None:
            if self.body is None:
                return 0
            self._prompt_estimate = estimate_prompt_tokens(self.body)
        return self._prompt_estimate


class LiveRequests:
    """The requests in flight on this worker, spooled at start and at every progress tick."""

    def __init__(self, spool: Spool | None) -> None:
        self._spool = spool
        self._live: dict[str, tuple[web.Request, RequestRecord, tuple[Any, ...]]] = {}
        self._task: asyncio.Task[None] | None = None

    def begin(self, request: web.Request, record: RequestRecord) -> None:
        """A request started: one spool line."""
        if self._spool is not None:
            self._live[record.event_id] = (request, record, ())
            self._spool.begin(record.event_id, request.get(REQUEST_ID, ""), record.ts, request.path)

    def end(self, record: RequestRecord) -> None:
        """A request ended (its event is spooled by the sink)."""
        self._live.pop(record.event_id, None)

    def __len__(self) -> int:
        return len(self._live)

    def start(self) -> None:
        """Start the progress ticker."""
        if self._spool is not None:
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="live-requests")

    async def stop(self) -> None:
        """Stop the ticker."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.write_progress()

    def write_progress(self) -> None:
        """Spool what changed for each live request since the last tick."""
        assert self._spool is not None
        for event_id, (request, record, seen) in list(self._live.items()):
            key = request.get(API_KEY)
            outcome = record.stream
            state = (
                key.id if key else ANONYMOUS_KEY,
                record.model,
                record.deployment or (outcome.deployment if outcome else None),
                record.body is not None,
                outcome.live_content_events if outcome else 0,
            )
            if state == seen:
                continue
            self._live[event_id] = (request, record, state)
            prompt = record.prompt_estimate()
            fields = {"key": state[0], "model": state[1], "dep": state[2],
                      "prompt": prompt, "completion": state[4]}  # fmt: skip
            self._spool.progress(event_id, fields)


@web.middleware
async def accounting_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Publish exactly one stats event per /v1 POST, and its metrics."""
    if request.method != "POST" or not request.path.startswith("/v1/"):
        return await handler(request)
    loop = asyncio.get_running_loop()
    record = RequestRecord(started=loop.time(), ts=time.time())
    record.trail.request_id = request.get(REQUEST_ID)
    request[RECORD] = record
    token = TRAIL.set(record.trail)
    request.app[LIVE_REQUESTS].begin(request, record)
    status = 499  # the client went away before an answer
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if record.until is not None and not record.until.done():
            # The stream goes on without its first client: account for it when it ends.
            record.until.add_done_callback(lambda _: _account(request, record, 200, loop.time()))
        else:
            _account(request, record, status, loop.time())
        TRAIL.reset(token)


def _account(request: web.Request, record: RequestRecord, status: int, now: float) -> None:
    event = _event(request, record, status, now)
    request.app[SIDECAR].publish(event)
    request.app[LIVE_REQUESTS].end(record)
    _observe(route_label(request), model_label(request.app[CONFIG], event.model), record, event)
    config = request.app[CONFIG]
    if config.server.access_log:
        _log_access(request, record, event, config)
    for finish in record.finishers:
        finish(event)


def retries(record: RequestRecord) -> int:
    """Attempts after the first that were retries (hedges are attempts too, counted apart)."""
    hedges = record.stream.hedges if record.stream is not None else 0
    return max(0, record.trail.retries - hedges)


def _log_access(
    request: web.Request, record: RequestRecord, event: StatsEvent, config: Config
) -> None:
    if not access.log.isEnabledFor(logging.INFO):
        return
    headers = request.get(RESPONSE_HEADERS) or {}
    line = access.request_line(
        request,
        event,
        upstream=access.upstream_model(config, record.model, record.trail.served_by),
        stream=record.stream is not None,
        cache=headers.get("X-Gateway-Cache"),
        coalesced="X-Gateway-Coalesced" in headers,
        retries=retries(record),
        hedges=record.stream.hedges if record.stream is not None else 0,
        cost=record.cost,
    )
    access.log.info("request", extra=line)


def _event(request: web.Request, record: RequestRecord, status: int, now: float) -> StatsEvent:
    key = request.get(API_KEY)
    outcome = record.stream
    usage = record.usage or (outcome.usage if outcome else None)
    if record.deployment is None and outcome is not None:
        record.deployment = outcome.deployment
    if usage is None:
        usage = _estimate(record, status)
    first = outcome.first_event_at if outcome else record.answered_at
    config, prices = request.app[CONFIG], request.app[PRICES]
    upstream = access.upstream_model(config, record.model, record.trail.served_by)
    # A cache hit (a coalesced follower is one) called no upstream: it costs nothing.
    cost = Cost(0.0, True) if record.cache_hit else request_cost(prices, upstream, usage)
    record.cost = None if cost is None else cost.usd
    return StatsEvent(
        request_id=request.get(REQUEST_ID, ""),
        key_id=key.id if key else ANONYMOUS_KEY,
        model=record.model or "unknown",
        deployment=record.deployment,
        route=request.path,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        tokens_exact=usage.exact,
        cache_hit=record.cache_hit,
        latency_ms=(now - record.started) * 1000,
        ttfb_ms=None if first is None else (first - record.started) * 1000,
        termination=_termination(record, status),
        ts=record.ts,
        event_id=record.event_id,
        cost_usd=record.cost,
        cost_exact=cost is not None and cost.exact,
        hedge_cost_usd=hedge_cost(prices, upstream, _hedge_prompt_tokens(record)),
    )


def _hedge_prompt_tokens(record: RequestRecord) -> int:
    """The prompt tokens cancelled hedges were sent (estimated: they never reported usage)."""
    if record.stream is None or not record.stream.hedges_lost or record.body is None:
        return 0
    return record.stream.hedges_lost * record.prompt_estimate()


def _estimate(record: RequestRecord, status: int) -> Usage:
    """Tokens when the upstream reported none: zero if nothing was generated, else an estimate
    (a stream's content events, a JSON answer's text)."""
    if record.stream is not None:
        delivered = record.stream.content_events
    else:
        delivered = record.answer_tokens
    if record.body is None or (delivered == 0 and (status >= 400 or record.deployment is None)):
        return Usage(0, 0, exact=True)
    return Usage(estimate_prompt_tokens(record.body), delivered, exact=False)


def _termination(record: RequestRecord, status: int) -> str:
    if record.stream is not None and status < 400:
        return record.stream.termination.value  # the stream started: it says how it ended
    if status == 499:
        return "client_disconnect"
    if status < 400:
        return "completed"
    error = record.error
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    return "rejected" if status < 500 or status == 503 else "error"


def route_label(request: web.Request) -> str:
    """The matched route's template (``/v1/streams/{stream_id}/cancel``), else ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def model_label(config: Config, model: str | None) -> str:
    """A configured client model name as is; ``other`` for anything a client made up."""
    if model is None or model == "unknown":
        return "unknown"
    return model if model in config.models and model != WILDCARD_MODEL else OTHER_MODEL


def _observe(route: str, model: str, record: RequestRecord, event: StatsEvent) -> None:
    metrics.REQUESTS.labels(route, model, str(event.status)).inc()
    metrics.REQUEST_DURATION.labels(route, model).observe(event.latency_ms / 1000)
    if event.ttfb_ms is not None:
        metrics.TIME_TO_FIRST_BYTE.labels(model).observe(event.ttfb_ms / 1000)
    if event.prompt_tokens:
        metrics.PROMPT_TOKENS.labels(model, event.key_id).inc(event.prompt_tokens)
    if event.completion_tokens:
        metrics.COMPLETION_TOKENS.labels(model, event.key_id).inc(event.completion_tokens)
    if event.cost_usd:
        metrics.SPEND.labels(model, event.key_id).inc(event.cost_usd)
    if record.stream is not None and event.status < 400:
        metrics.STREAM_TERMINATIONS.labels(event.termination).inc()
    lost = _hedge_prompt_tokens(record)
    if lost:
        # A cancelled hedge was sent its whole prompt: what hedging cost, estimated.
        metrics.HEDGE_PROMPT_TOKENS.labels(model).inc(lost)
        metrics.HEDGE_COST.labels(model).inc(event.hedge_cost_usd)
    # Failures before the first byte are counted by the router, per attempt.
    if record.stream is not None and isinstance(record.stream.error, UpstreamError):
        metrics.UPSTREAM_ERRORS.labels(
            record.deployment or "unknown", record.stream.error.code or "error"
        ).inc()
