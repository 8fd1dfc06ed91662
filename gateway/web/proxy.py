"""The proxy pipeline of every /v1 POST: read and validate the body, admit it (limits, budgets,
the worker's cap), answer from the cache or join a flight in progress, else open the upstream
through the router, then relay its stream or return its answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import orjson
from aiohttp import web

from gateway.cache.entry import CacheEntry
from gateway.cache.flight import Flight
from gateway.cache.policy import decide
from gateway.cache.service import CACHE_DEPLOYMENT, ResponseCache
from gateway.config import ServerSettings
from gateway.deployments import OpenedUpstream
from gateway.dialects import CLIENT_DIALECTS
from gateway.errors import ModelNotFound, PayloadTooLarge, RateLimited, RequestTimeout
from gateway.keys import check_model
from gateway.openai import (
    Endpoint,
    ParsedRequest,
    estimate_answer_tokens,
    parse_request,
    usage_in_body,
)
from gateway.relay import relay_stream
from gateway.store import StoreUnavailable
from gateway.stream import StreamOutcome
from gateway.web.limits import admit, over_capacity
from gateway.web.opener import opener
from gateway.web.state import (
    API_KEY,
    AUTHENTICATOR,
    CACHE,
    CLIENT_DIALECT,
    CONFIG,
    LIVE_STREAMS,
    RECORD,
    RESPONSE_HEADERS,
    STORE,
    WORKER_STATE,
)
from gateway.web.streams import start_resumable, take_resumable_slot, wants_resumable

log = logging.getLogger("gateway.web")


CLOSE = {"Connection": "close"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streaming or not."""
    return await _proxy(request, Endpoint.CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions, streaming or not."""
    return await _proxy(request, Endpoint.COMPLETIONS)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """POST /v1/embeddings."""
    return await _proxy(request, Endpoint.EMBEDDINGS)


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses (OpenAI Responses API, stateless), translated to and from chat."""
    request[CLIENT_DIALECT] = CLIENT_DIALECTS["responses"]
    return await _proxy(request, Endpoint.CHAT)


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages (Anthropic Messages), translated to and from chat."""
    request[CLIENT_DIALECT] = CLIENT_DIALECTS["messages"]
    return await _proxy(request, Endpoint.CHAT)


async def read_body(request: web.Request, settings: ServerSettings) -> bytes:
    """The request body, refused past the size limit and cut off past the body timeout."""
    # Both refusals close the connection: the rest of the body is never read.
    limit = settings.max_body_bytes
    too_large = PayloadTooLarge(
        f"The request body is larger than the limit of {limit} bytes.", headers=CLOSE
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {settings.body_timeout:g} s.", headers=CLOSE
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


async def _proxy(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    worker = request.app[WORKER_STATE]
    cap = request.app[CONFIG].server.request_cap
    if worker.in_flight >= cap:
        raise over_capacity(cap)
    worker.in_flight += 1
    try:
        return await _serve(request, endpoint)
    finally:
        worker.in_flight -= 1


async def _serve(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    config = request.app[CONFIG]
    record = request[RECORD]
    raw = await read_body(request, config.server)
    dialect = request.get(CLIENT_DIALECT)
    if dialect is not None:
        raw = orjson.dumps(dialect.parse_request(raw))  # the canonical chat request
    parsed = parse_request(raw, endpoint)
    record.body = parsed.body
    route = config.route_for(parsed.model)
    if route is None:
        raise ModelNotFound(
            f"The model '{parsed.model}' does not exist or is not served by this gateway.",
            param="model",
        )
    record.model = parsed.model
    key = request.get(API_KEY)
    if key is not None:
        check_model(key, parsed.model)
    if key is not None or config.limits.any:
        admission = await admit(request, parsed, key, config.limits)
        record.finishers.append(admission.finish)
    if key is not None and key.max_requests is not None:
        await _take_request(request, key.id, key.max_requests)
    take_resumable_slot(request, parsed)

    cache = request.app[CACHE]
    decision = decide(
        parsed,
        route.upstream_name(parsed.model),
        request.headers,
        key.id if key is not None else "",
        config.cache,
    )
    headers = request.setdefault(RESPONSE_HEADERS, {})
    headers["X-Gateway-Cache"] = "bypass" if decision.bypass else "miss"
    # A stream shared with coalesced clients or stored in the cache is recorded while it runs.
    shared = not decision.bypass and (decision.store or config.cache.coalesce)
    open_upstream = opener(request, route, parsed, record_limit=(
        config.cache.max_object_bytes if shared else 0
    ))  # fmt: skip
    flight: Flight | None = None
    opening: Awaitable[OpenedUpstream]
    if decision.bypass:
        opening = open_upstream()
    else:
        entry = await cache.lookup(decision) if decision.lookup else None
        if entry is not None:
            return await _serve_hit(request, parsed, entry, cache, decision.paced)
        flight, joined = cache.share(decision, stream=parsed.stream, open_upstream=open_upstream)
        if joined:
            # A follower calls no upstream: accounted as a cache hit (no cost, no tokens drawn
            # from its rate limit), with the tokens it was given.
            headers["X-Gateway-Coalesced"] = "true"
            record.cache_hit = True
        opening = flight.join()
    if parsed.stream:
        return await _stream(request, opening, parsed)
    opened = await opening
    record.deployment = opened.deployment.name
    record.answered_at = asyncio.get_running_loop().time()
    record.usage = usage_in_body(opened.body)
    if record.usage is None:  # accounted with an estimate, from the answer's text
        record.answer_tokens = estimate_answer_tokens(opened.body)
    if flight is not None and decision.store and flight.clean:
        headers["X-Gateway-Cache"] = "stored"
    body = opened.body if dialect is None else dialect.completion_to_client(opened.body)
    return web.Response(body=body, status=opened.status, content_type="application/json")


async def _relay(
    request: web.Request, opening: Awaitable[OpenedUpstream], parsed: ParsedRequest
) -> web.StreamResponse:
    record = request[RECORD]
    record.stream = StreamOutcome()
    dialect = request.get(CLIENT_DIALECT)
    return await relay_stream(
        request,
        opening,
        settings=request.app[CONFIG].server,
        live=request.app[LIVE_STREAMS],
        outcome=record.stream,
        strip_usage=not parsed.client_wants_usage,
        encoder=None if dialect is None else dialect.encoder(model=parsed.model),
    )


async def _stream(
    request: web.Request, opening: Awaitable[OpenedUpstream], parsed: ParsedRequest
) -> web.StreamResponse:
    """Relay the stream, or run it as a resumable stream with an event log (chat clients: the
    log is served in the canonical dialect)."""
    if CLIENT_DIALECT not in request and wants_resumable(request, parsed.model):
        return await start_resumable(request, opening, parsed.client_wants_usage)
    return await _relay(request, opening, parsed)


async def _serve_hit(
    request: web.Request,
    parsed: ParsedRequest,
    entry: CacheEntry,
    cache: ResponseCache,
    paced: bool,
) -> web.StreamResponse:
    """Answer from the cache: no upstream call; accounted as a hit with the tokens it saved."""
    record = request[RECORD]
    record.cache_hit = True
    headers = request[RESPONSE_HEADERS]
    headers["X-Gateway-Cache"] = "hit"
    headers["Age"] = str(entry.age())
    if parsed.stream:
        keepalive = request.app[CONFIG].server.keepalive_interval
        return await _stream(
            request, cache.replay_stream(entry, paced=paced, keepalive=keepalive), parsed
        )
    body = cache.replay_body(entry)
    dialect = request.get(CLIENT_DIALECT)
    record.deployment = CACHE_DEPLOYMENT.name
    record.answered_at = asyncio.get_running_loop().time()
    record.usage = usage_in_body(body)
    if dialect is not None:
        body = dialect.completion_to_client(body)
    return web.Response(body=body, content_type="application/json")


async def _take_request(request: web.Request, key_id: str, limit: int) -> None:
    """Count the request against the key's lifetime quota (fails open if the store is down)."""
    try:
        store = request.app[STORE]
        allowed = await request.app[AUTHENTICATOR].guarded(
            lambda: store.take_request(key_id, limit)
        )
    except StoreUnavailable as exc:
        log.warning("max_requests not checked: store unreachable", extra={"error": str(exc)})
        return
    if not allowed:
        raise RateLimited(
            f"This API key has used all of its {limit} requests.", code="max_requests_exceeded"
        )
