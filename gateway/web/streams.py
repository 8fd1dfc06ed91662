"""Resumable streams over HTTP: the first answer, GET /v1/streams/{id} and its cancel.

Every event goes out as ``id: <n>`` plus its data, so a browser ``EventSource`` reconnects with
``Last-Event-ID`` on its own; ``fetch`` clients send the header or ``?after=``. A stream that is
unknown or whose buffer expired answers 204, which tells an ``EventSource`` to stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import metrics
from gateway.config import ServerSettings
from gateway.deployments import OpenedUpstream
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from gateway.eventlog import EventLog, RedisLogs
from gateway.openai import ParsedRequest
from gateway.redisconn import RedisUnavailable
from gateway.relay import SSE_HEADERS
from gateway.resumable import ResumableStream
from gateway.sse import KEEPALIVE, encode_event
from gateway.stream import StreamOutcome
from gateway.web.limits import client_ip
from gateway.web.state import API_KEY, CONFIG, RECORD, RESPONSE_HEADERS, RESUMABLE_QUOTA, STREAMS

TOUCH_SECONDS = 1.0
RESUMABLE_HEADER = "X-Gateway-Resumable"
MAX_EVENT_ID = 2**63 - 1  # beyond it a Redis Stream id cannot hold it

Read = Callable[[int, float], Awaitable[tuple[list[tuple[int, bytes]], bool]]]


def wants_resumable(request: web.Request, model: str) -> bool:
    """Per request (X-Gateway-Resumable), per model, per API key, or for every stream."""
    settings = request.app[CONFIG].streams
    asked = request.headers.get(RESUMABLE_HEADER, "").strip().lower()
    if asked in {"false", "0", "no"}:
        return False
    return (
        asked in {"true", "1", "yes"}
        or settings.resumable
        or model in settings.models
        or (bool(settings.keys) and owner_of(request) in settings.keys)
    )


class ResumableQuota:
    """Resumable streams running per API key (per client address without one), in this worker.

    A resumable stream goes on for ``grace`` after its client left, so fire-and-forget requests
    would otherwise pin a deployment's connections for everyone else.
    """

    __slots__ = ("limit", "running")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: collections.Counter[str] = collections.Counter()

    def take(self, subject: str) -> bool:
        """Count one more stream for ``subject``; False when it already runs ``limit``."""
        if self.running[subject] >= self.limit:
            return False
        self.running[subject] += 1
        return True

    def give_back(self, subject: str) -> None:
        """One of ``subject``'s streams ended."""
        self.running[subject] -= 1
        if self.running[subject] <= 0:
            del self.running[subject]


def take_resumable_slot(request: web.Request, parsed: ParsedRequest) -> None:
    """For a stream that will be resumable: hold a slot of its key's quota until the stream ends
    (the request's finishers run then), or refuse with 429."""
    if not parsed.stream or not wants_resumable(request, parsed.model):
        return
    quota = request.app[RESUMABLE_QUOTA]
    subject = owner_of(request) or "ip:" + client_ip(request, request.app[CONFIG].limits)
    if not quota.take(subject):
        metrics.RATE_LIMITED.labels("resumable_streams").inc()
        raise RateLimited(
            f"This API key already has {quota.limit} resumable streams running.",
            code="resumable_streams_exceeded",
            headers={"Retry-After": "1"},
        )
    request[RECORD].finishers.append(lambda _event: quota.give_back(subject))


def owner_of(request: web.Request) -> str:
    key = request.get(API_KEY)
    return key.id if key is not None else ""


async def start_resumable(
    request: web.Request, opening: Awaitable[OpenedUpstream], client_wants_usage: bool
) -> web.StreamResponse:
    """Start the producer, wait for its first event (an error before it is a real status), then
    serve the log from the start. The stats event waits for the stream to end."""
    record = request[RECORD]
    outcome = record.stream = StreamOutcome()
    config = request.app[CONFIG]
    stream = request.app[STREAMS].start(
        owner_of(request), opening, outcome, strip_usage=not client_wants_usage
    )
    try:
        async with asyncio.timeout(config.server.keepalive_interval):
            await asyncio.shield(stream.opened)  # raises a failure before the first event
    except TimeoutError:
        pass  # slow: the headers go out now, keep-alives follow
    record.until = stream.done
    request.setdefault(RESPONSE_HEADERS, {})["X-Gateway-Stream-Id"] = stream.log.stream_id
    return await _serve_local(request, stream, after=0)


async def resume(request: web.Request) -> web.StreamResponse:
    """GET /v1/streams/{id}: replay after Last-Event-ID (or ?after=), then follow live."""
    stream_id = request.match_info["stream_id"]
    after = _after(request)
    owner = owner_of(request)
    registry = request.app[STREAMS]
    local = registry.get(stream_id)
    if local is not None:
        _check_owner(local.log.owner, owner)
        metrics.STREAM_RESUMES.labels("local").inc()
        return await _serve_local(request, local, after)
    mirror = registry.mirror
    stored = await mirror.owner(stream_id) if mirror is not None else None
    if mirror is None or stored is None:
        metrics.STREAM_RESUMES.labels("gone").inc()
        return web.Response(status=204)
    _check_owner(stored, owner)
    metrics.STREAM_RESUMES.labels("redis").inc()
    return await _serve_remote(request, mirror, stream_id, after)


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/streams/{id}/cancel: stop the generation (its upstream request is cancelled)."""
    stream_id = request.match_info["stream_id"]
    owner = owner_of(request)
    registry = request.app[STREAMS]
    local = registry.get(stream_id)
    if local is not None:
        _check_owner(local.log.owner, owner)
        local.cancel()
        return web.json_response({"id": stream_id, "status": "cancelled"})
    mirror = registry.mirror
    stored = await mirror.owner(stream_id) if mirror is not None else None
    if mirror is None or stored is None:
        raise _gone(stream_id)
    _check_owner(stored, owner)
    await mirror.cancel(stream_id)  # its worker sees it within a second
    return web.json_response({"id": stream_id, "status": "cancelling"})


def _after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        after = int(raw)
    except ValueError:
        after = -1
    if not 0 <= after <= MAX_EVENT_ID:
        raise InvalidRequest(
            "Last-Event-ID (or ?after=) must be an event id from this stream.",
            param="Last-Event-ID",
        )
    return after


def _check_owner(stored: str, presented: str) -> None:
    if stored != presented:
        raise PermissionDenied(
            "Only the API key that created this stream may resume or cancel it.",
            code="stream_not_yours",
        )


def _gone(stream_id: str) -> NotFound:
    return NotFound(f"No stream {stream_id!r} (unknown or expired).", code="stream_gone")


async def _serve_local(
    request: web.Request, stream: ResumableStream, after: int
) -> web.StreamResponse:
    log: EventLog = stream.log

    async def read(seq: int, wait: float) -> tuple[list[tuple[int, bytes]], bool]:
        found = log.after(seq)
        if not found and not log.finished:
            await log.changed(wait)
            found = log.after(seq)
        return found, log.finished and (not found or found[-1][0] == log.next_seq - 1)

    log.readers += 1
    try:
        return await _serve(request, stream.log.stream_id, after, read, None)
    finally:
        log.readers -= 1
        log.left_at = time.time()


async def _serve_remote(
    request: web.Request, mirror: RedisLogs, stream_id: str, after: int
) -> web.StreamResponse:
    async def read(seq: int, wait: float) -> tuple[list[tuple[int, bytes]], bool]:
        try:
            return await mirror.read(stream_id, seq, min(wait, TOUCH_SECONDS))
        except RedisUnavailable as exc:
            raise ServiceUnavailable(
                "The stream's buffer in Redis is unreachable; try again shortly.",
                code="stream_buffer_unavailable",
            ) from exc

    async def touch() -> None:
        with contextlib.suppress(RedisUnavailable):
            await mirror.touch(stream_id)

    return await _serve(request, stream_id, after, read, touch)


async def _serve(
    request: web.Request,
    stream_id: str,
    after: int,
    read: Read,
    touch: Callable[[], Awaitable[None]] | None,
) -> web.StreamResponse:
    """Write the events after ``after`` as they come, with keep-alives, until the stream ends."""
    settings: ServerSettings = request.app[CONFIG].server
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    response.headers["X-Gateway-Stream-Id"] = stream_id
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    last_write = last_touch = loop.time()
    while True:
        if touch is not None and loop.time() - last_touch >= TOUCH_SECONDS:
            await touch()
            last_touch = loop.time()
        wait = max(0.05, last_write + settings.keepalive_interval - loop.time())
        try:
            events, ended = await read(after, wait)
        except GatewayError as exc:
            await response.write(b"data: " + exc.to_json() + b"\n\n")
            break
        if events:
            payload = b"".join(encode_event(data, id=str(seq).encode()) for seq, data in events)
            after = events[-1][0]
        elif not ended and loop.time() - last_write >= settings.keepalive_interval:
            payload = KEEPALIVE
        else:
            payload = b""
        if payload:
            async with asyncio.timeout(settings.write_stall_timeout):
                await response.write(payload)
            last_write = loop.time()
        if ended:
            break
    await response.write_eof()
    return response
