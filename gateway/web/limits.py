"""Admission of a /v1 request: the worker's cap, then global, per-IP and per-key limits.

Checked in that order before any upstream call. A refused request gets 429 (503 for the worker
cap) with Retry-After and X-RateLimit-Limit/-Remaining/-Reset for the limit that refused it, and
units already booked in earlier windows are given back. A token limit books an estimate (prompt
plus ``max_tokens``, or the configured default) at admission and is settled with the real usage
when the request ends, so one admitted request overshoots a budget by at most its own excess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import metrics
from gateway.config import LimitSettings
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.openai import ParsedRequest, estimate_prompt_tokens
from gateway.ratelimit import RateLimiter, Slot, Verdict, Window
from gateway.stats import StatsEvent
from gateway.store.base import KeyRecord
from gateway.web.state import LIMITER, LOAD, RESPONSE_HEADERS

_MESSAGES = {
    "global_rps": "The gateway is receiving more requests per second than it is allowed to serve.",
    "ip_rpm": "Too many requests per minute from your address.",
    "key_rpm": "This API key is over its limit of requests per minute.",
    "key_tpm": "This API key is over its limit of tokens per minute.",
    "key_concurrent": "This API key has too many requests in flight.",
}

LIMIT_SCOPES = [*_MESSAGES, "worker_capacity", "resumable_streams"]


@dataclass(slots=True)
class Admission:
    """What one admitted request holds: booked windows to settle and a slot to give back."""

    limiter: RateLimiter
    tokens: Verdict | None = None
    reserved_tokens: int = 0
    booked: list[tuple[Verdict, int]] = field(default_factory=list)
    slot: Slot | None = None
    finished: bool = False

    def finish(self, event: StatsEvent) -> None:
        """The request ended: settle the token estimate, free the slot (in the background)."""
        if self.finished:
            return
        self.finished = True
        delta = 0
        if self.tokens is not None:
            used = 0 if event.cache_hit else event.prompt_tokens + event.completion_tokens
            delta = used - self.reserved_tokens  # a cache hit spends no upstream tokens
        if delta or self.slot is not None:
            self.limiter.spawn(self._settle(delta))

    async def _settle(self, delta: int) -> None:
        if self.tokens is not None and delta:
            await self.limiter.adjust(self.tokens, delta)
        if self.slot is not None:
            await self.limiter.release(self.slot)

    async def refund(self) -> None:
        """Give back everything booked so far (a later limit refused the request)."""
        for verdict, cost in self.booked:
            await self.limiter.adjust(verdict, -cost)
        self.booked.clear()
        if self.slot is not None:
            await self.limiter.release(self.slot)
            self.slot = None


def client_ip(request: web.Request, settings: LimitSettings) -> str:
    """The client's address: the configured proxy header's first value, else the peer."""
    if settings.client_ip_header:
        forwarded = request.headers.get(settings.client_ip_header)
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.remote or "unknown"


def token_estimate(parsed: ParsedRequest, settings: LimitSettings) -> int:
    body = parsed.body
    completion = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(completion, int) or completion <= 0:
        completion = settings.default_max_tokens
    return estimate_prompt_tokens(body) + completion


async def admit(
    request: web.Request, parsed: ParsedRequest, key: KeyRecord | None, settings: LimitSettings
) -> Admission:
    """Book the request in every limit that applies, or raise the error of the one that refuses."""
    admission = Admission(request.app[LIMITER])
    try:
        await _admit(admission, request, parsed, key, settings)
    except BaseException:
        await admission.refund()
        raise
    return admission


async def _admit(
    admission: Admission,
    request: web.Request,
    parsed: ParsedRequest,
    key: KeyRecord | None,
    settings: LimitSettings,
) -> None:
    limiter = admission.limiter
    windows: list[tuple[Window, int]] = []
    if settings.global_rps:
        windows.append((Window("global_rps", "global", settings.global_rps, 1.0), 1))
    if settings.ip_rpm:
        ip = client_ip(request, settings)
        windows.append((Window("ip_rpm", f"ip:{ip}", settings.ip_rpm, 60.0), 1))
    if key is not None:
        rpm = key.rpm or settings.key_rpm
        if rpm:
            windows.append((Window("key_rpm", f"key:{key.id}", rpm, 60.0), 1))
        tpm = key.tpm or settings.key_tpm
        if tpm:
            # Never more than the whole budget, so a large request is admitted on an empty window.
            estimate = min(token_estimate(parsed, settings), tpm)
            windows.append((Window("key_tpm", f"key:{key.id}", tpm, 60.0), estimate))
    shown: dict[str, str] = {}
    for window, cost in windows:
        verdict = await limiter.take(window, cost)
        if not verdict.allowed:
            metrics.RATE_LIMITED.labels(window.scope).inc()
            raise RateLimited(
                _MESSAGES[window.scope],
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(verdict.reset))), **_headers(verdict)},
            )
        admission.booked.append((verdict, cost))
        if window.scope == "key_tpm":
            admission.tokens, admission.reserved_tokens = verdict, cost
        if window.scope in ("key_rpm", "key_tpm"):
            kind = "Requests" if window.scope == "key_rpm" else "Tokens"
            shown.update({f"{name}-{kind}": value for name, value in _headers(verdict).items()})
    concurrent = settings.key_concurrent
    if key is not None and concurrent:
        admission.slot = await limiter.acquire("key_concurrent", f"key:{key.id}", concurrent)
        if admission.slot is None:
            metrics.RATE_LIMITED.labels("key_concurrent").inc()
            raise RateLimited(
                _MESSAGES["key_concurrent"],
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1", "X-RateLimit-Limit": str(concurrent),
                         "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"},
            )  # fmt: skip
    if shown:
        request.setdefault(RESPONSE_HEADERS, {}).update(shown)


def _headers(verdict: Verdict) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(verdict.window.limit),
        "X-RateLimit-Remaining": str(verdict.remaining),
        "X-RateLimit-Reset": str(max(1, math.ceil(verdict.reset))),
    }


OVERLOADED = ServiceUnavailable(
    "This gateway worker is overloaded; try again shortly.",
    code="overloaded",
    headers={"Retry-After": "1"},
)
_OVERLOADED_BODY = OVERLOADED.to_json()


@web.middleware
async def shed_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Load shedding, first of all middlewares: while the worker is behind (event-loop lag or a
    long listen queue) a /v1 POST gets a ready-made 503 at once. It skips the rest on purpose:
    a shed request costs no stats event, only its count in llm_gateway_shed_total."""
    if request.method == "POST" and request.path.startswith("/v1/"):
        reason = request.app[LOAD].overloaded
        if reason is not None:
            metrics.SHED.labels(reason).inc()
            return web.Response(
                body=_OVERLOADED_BODY,
                status=503,
                content_type="application/json",
                headers={"Retry-After": "1"},
            )
    return await handler(request)


def over_capacity(cap: int) -> ServiceUnavailable:
    """The worker's admission cap: answered at once, before the body is even read."""
    metrics.RATE_LIMITED.labels("worker_capacity").inc()
    return ServiceUnavailable(
        f"This gateway worker is serving its maximum of {cap} requests; try again shortly.",
        code="worker_at_capacity",
        headers={"Retry-After": "1"},
    )
