"""The mock's record of what it saw, and its ``/_mock`` control routes.

Tests read ``GET /_mock/stats`` and ``GET /_mock/requests`` to check what reached the upstream:
how many requests, which completed, which the client abandoned (``disconnected``).
``POST /_mock/behaviour`` changes how it answers from now on, for everyone (``"defaults"``) or for
requests made with one upstream API key (``"keys": {"sk-...": {...}}``), so a test can take a
deployment down and bring it back, or rate-limit one key of a pool. ``POST /_mock/reset`` forgets
the record.
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.mock.behaviour import MockBehaviour
from gateway.mock.openai import error_body

MAX_RECORDS = 10_000


@dataclass
class RecordedRequest:
    """One request as the mock saw it."""

    seq: int
    path: str
    model: str | None
    stream: bool
    body: dict[str, Any]
    authorization: str | None
    client_port: int | None = None  # the same port twice means a reused connection
    traceparent: str | None = None  # W3C trace context, when the gateway traces
    outcome: str = "in_flight"  # completed | disconnected | failed | stalled
    events_sent: int = 0
    completion_tokens_sent: int = 0
    started: float = field(default_factory=time.time)
    ended: float | None = None


class MockState:
    """The mock's defaults and its bounded record of requests."""

    def __init__(self, defaults: MockBehaviour) -> None:
        self.started_with = defaults
        self.defaults = defaults
        self.by_key: dict[str, MockBehaviour] = {}
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=MAX_RECORDS)
        self.counts: collections.Counter[str] = collections.Counter()
        self._seq = 0

    def begin(self, request: web.Request, body: dict[str, Any]) -> RecordedRequest:
        self._seq += 1
        record = RecordedRequest(
            seq=self._seq,
            path=request.path,
            model=body.get("model") if isinstance(body.get("model"), str) else None,
            stream=bool(body.get("stream")),
            body=body,
            authorization=request.headers.get("Authorization"),
            client_port=_client_port(request),
            traceparent=request.headers.get("traceparent"),
        )
        self.requests.append(record)
        self.counts["requests"] += 1
        self.counts["in_flight"] += 1
        return record

    def end(self, record: RecordedRequest, outcome: str) -> None:
        if record.ended is not None:
            return
        record.outcome = outcome
        record.ended = time.time()
        self.counts["in_flight"] -= 1
        self.counts[outcome] += 1

    def defaults_for(self, authorization: str | None) -> MockBehaviour:
        """The behaviour for requests made with this Authorization header."""
        if self.by_key and authorization and authorization.startswith("Bearer "):
            return self.by_key.get(authorization[7:], self.defaults)
        return self.defaults

    def stats(self) -> dict[str, int]:
        keys = ("requests", "completed", "disconnected", "failed", "stalled", "in_flight")
        return {key: self.counts[key] for key in keys}

    def reset(self) -> None:
        self.requests.clear()
        in_flight = self.counts["in_flight"]
        self.counts.clear()
        self.counts["in_flight"] = in_flight


MOCK_STATE = web.AppKey("mock_state", MockState)


def _client_port(request: web.Request) -> int | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else None


def add_control_routes(app: web.Application, defaults: MockBehaviour) -> None:
    """The mock's state and its ``/_mock`` routes (and ``/health``) on ``app``."""
    app[MOCK_STATE] = MockState(defaults)
    app.router.add_get("/health", _health)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_post("/_mock/behaviour", _behaviour)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _requests(request: web.Request) -> web.Response:
    records = [asdict(r) for r in request.app[MOCK_STATE].requests]
    return web.json_response(records, dumps=lambda v: orjson.dumps(v).decode())


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[MOCK_STATE].stats())


async def _reset(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].reset()
    return web.json_response({"status": "reset"})


async def _behaviour(request: web.Request) -> web.Response:
    """Set the behaviour from now on: overrides of the start-up defaults, and per upstream key.

    Each call replaces the previous one; ``{}`` restores the start-up behaviour.
    """
    state = request.app[MOCK_STATE]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        defaults = state.started_with.merged(body.get("defaults") or {})
        keys = body.get("keys") or {}
        if not isinstance(keys, dict):
            raise ValueError("'keys' must map upstream API keys to behaviours")
        by_key = {str(key): defaults.merged(spec) for key, spec in keys.items()}
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        return web.json_response(error_body(400, f"bad behaviour: {exc}"), status=400)
    state.defaults = defaults
    state.by_key = by_key
    return web.json_response({"defaults": asdict(defaults), "keys": sorted(by_key)})
