"""The mock upstream as an HTTP server (``llm-gateway mock-upstream``), recording what it saw.

Tests read ``GET /_mock/stats`` and ``GET /_mock/requests`` to check what reached the upstream:
how many requests, which completed, which the client abandoned (``disconnected``).
``POST /_mock/behaviour`` changes how it answers from now on, for everyone (``"defaults"``) or for
requests made with one upstream API key (``"keys": {"sk-...": {...}}``), so a test can take a
deployment down and bring it back, or rate-limit one key of a pool.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvloop
from aiohttp import web

from gateway import mock, mockdialect
from gateway.dialects import messages
from gateway.dialects.base import load_object
from gateway.errors import GatewayError

MAX_RECORDS = 10_000
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_KEY_HEADERS = ("x-api-key", "x-goog-api-key", "api-key")  # upstream keys other than Bearer


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

    def __init__(self, defaults: mock.MockBehaviour) -> None:
        self.started_with = defaults
        self.defaults = defaults
        self.by_key: dict[str, mock.MockBehaviour] = {}
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

    def defaults_for(self, authorization: str | None) -> mock.MockBehaviour:
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


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    error_type = {429: "rate_limit_error"}.get(status, "invalid_request_error")
    if status >= 500:
        error_type = "server_error"
    body = {"error": {"message": message, "type": error_type, "param": param, "code": None}}
    return web.json_response(body, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request body as a JSON object, or the 400 to answer instead."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    return body


async def _completion(request: web.Request) -> web.StreamResponse:
    """Chat completions and legacy completions, streamed or not."""
    state = request.app[MOCK_STATE]
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    try:
        defaults = state.defaults_for(request.headers.get("Authorization"))
        behaviour = mock.behaviour_for(defaults, body, request.headers)
    except ValueError as exc:
        return _error(400, str(exc), "mock")
    record = state.begin(request, body)
    try:
        return await _answer(request, body, behaviour, record)
    except asyncio.CancelledError:
        state.end(record, "disconnected")
        raise
    except ConnectionError:
        state.end(record, "disconnected")
        raise
    finally:
        state.end(record, "completed")


async def _answer(
    request: web.Request,
    body: dict[str, Any],
    behaviour: mock.MockBehaviour,
    record: RecordedRequest,
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    chat = request.path.endswith("/chat/completions")
    if delay := mock.first_byte_delay(behaviour, record.seq):
        await asyncio.sleep(delay)
    if behaviour.fail_before_first_byte:
        state.end(record, "failed")
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    if behaviour.fail_status is not None:
        state.end(record, "failed")
        failure = _error(behaviour.fail_status, f"mock failure {behaviour.fail_status}")
        if behaviour.retry_after is not None:
            failure.headers["Retry-After"] = f"{behaviour.retry_after:g}"
        return failure
    if not body.get("stream"):
        answer = (
            mock.chat_completion(body, behaviour) if chat else mock.text_completion(body, behaviour)
        )
        record.completion_tokens_sent = answer["usage"]["completion_tokens"]
        return web.json_response(answer, dumps=lambda v: orjson.dumps(v).decode())
    scheduled = mock.scheduled_events(body, behaviour, chat=chat)
    if scheduled is not None:
        return await _write_on_schedule(request, scheduled, behaviour.delay, record)
    progress = mock.StreamProgress()
    stream = (mock.chat_stream if chat else mock.completion_stream)(body, behaviour, progress)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for data in stream:
            if behaviour.stall_after is not None and progress.events >= behaviour.stall_after:
                record.outcome = "stalled"
            await response.write(data)
            record.events_sent = progress.events
            record.completion_tokens_sent = progress.pieces
    except mock.MockDisconnect:
        record.events_sent = progress.events
        record.completion_tokens_sent = progress.pieces
        state.end(record, "failed")
        assert request.transport is not None
        request.transport.abort()
        return response
    if behaviour.error_after is not None and progress.events > behaviour.error_after:
        state.end(record, "failed")
    return response


async def _write_on_schedule(
    request: web.Request, events: list[tuple[bytes, int]], delay: float, record: RecordedRequest
) -> web.StreamResponse:
    """Event n at n * delay, each its own HTTP chunk, written from a timer callback.

    The paced streams of ``make bench`` (a thousand at 50 events/s) this way cost the mock a
    timer and a write per event instead of a task wake-up, a generator step and an awaited write,
    so the mock stays far cheaper than what it is compared with.
    """
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    started = loop.time()
    await response.write(events[0][0])  # the headers and the first chunk, through aiohttp
    record.events_sent, record.completion_tokens_sent = 1, events[0][1]
    transport = request.transport
    ended: asyncio.Future[None] = loop.create_future()
    sent = 1
    handle: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal handle, sent
        if transport is None or transport.is_closing():
            ended.set_exception(ConnectionResetError("the client went away"))
            return
        data, pieces = events[sent]
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        sent += 1
        record.events_sent = sent
        record.completion_tokens_sent += pieces
        if sent == len(events):
            ended.set_result(None)
        else:
            handle = loop.call_at(started + sent * delay, tick)

    handle = loop.call_at(started + delay, tick)
    try:
        await ended
    finally:
        handle.cancel()  # a no-op once the stream ended
    await response.write_eof()
    return response


async def _embeddings(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    if body.get("input") is None:
        return _error(400, "Missing required parameter: 'input'.", "input")
    record = state.begin(request, body)
    state.end(record, "completed")
    return web.json_response(mock.embeddings(body))


async def _azure(request: web.Request) -> web.StreamResponse:
    """Azure OpenAI: the chat mock under the deployment's path, which needs ``api-version``."""
    if not request.query.get("api-version"):
        return _error(404, "Resource not found (the api-version query parameter is missing).")
    return await _completion(request)


async def _anthropic(request: web.Request) -> web.StreamResponse:
    """Anthropic Messages (``POST /v1/messages``), streamed or not."""
    return await _in_dialect(request, mockdialect.ANTHROPIC, "", None)


async def _count_tokens(request: web.Request) -> web.Response:
    """Anthropic's ``POST /v1/messages/count_tokens``: the mock's word count of the prompt."""
    try:
        canonical = messages.to_canonical({"max_tokens": 1, **load_object(await request.read())})
    except GatewayError as exc:
        error = mockdialect.anthropic_error(exc.http_status, exc.message)
        return web.json_response(error, status=exc.http_status)
    return web.json_response({"input_tokens": mock.count_prompt_tokens(canonical)})


async def _gemini(request: web.Request) -> web.StreamResponse:
    """Gemini ``{model}:generateContent`` and ``{model}:streamGenerateContent?alt=sse``."""
    target = mockdialect.gemini_target(request.match_info["target"])
    if target is None:
        body = mockdialect.gemini_error(404, "Unknown method.")
        return web.json_response(body, status=404)
    model, stream = target
    return await _in_dialect(request, mockdialect.GEMINI, model, stream)


async def _in_dialect(
    request: web.Request, dialect: mockdialect.MockDialect, model: str, stream: bool | None
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    raw = await request.read()
    native = mockdialect.raw_object(raw)
    key = next((request.headers[h] for h in _KEY_HEADERS if h in request.headers), None)
    try:
        canonical = dialect.parse(raw, model, bool(stream))
        defaults = state.defaults_for(f"Bearer {key}" if key else None)
        behaviour = mock.behaviour_for(defaults, native, request.headers)
    except (GatewayError, ValueError) as exc:
        status = exc.http_status if isinstance(exc, GatewayError) else 400
        return web.json_response(dialect.error_body(status, str(exc)), status=status)
    record = state.begin(request, native)
    record.model = str(canonical.get("model"))
    record.stream = bool(canonical.get("stream"))
    try:
        return await _answer_in_dialect(request, dialect, canonical, behaviour, record)
    except (asyncio.CancelledError, ConnectionError):
        state.end(record, "disconnected")
        raise
    finally:
        state.end(record, "completed")


async def _answer_in_dialect(
    request: web.Request,
    dialect: mockdialect.MockDialect,
    canonical: dict[str, Any],
    behaviour: mock.MockBehaviour,
    record: RecordedRequest,
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    if delay := mock.first_byte_delay(behaviour, record.seq):
        await asyncio.sleep(delay)
    if behaviour.fail_status is not None:
        state.end(record, "failed")
        failure = dialect.error_body(behaviour.fail_status, f"mock failure {behaviour.fail_status}")
        refusal = web.json_response(failure, status=behaviour.fail_status)
        if behaviour.retry_after is not None:
            refusal.headers["Retry-After"] = f"{behaviour.retry_after:g}"
        return refusal
    if not record.stream:
        body, record.completion_tokens_sent = dialect.answer(canonical, behaviour)
        return web.Response(body=body, content_type="application/json")
    progress = mock.StreamProgress()
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for data in dialect.stream(canonical, behaviour, progress):
            await response.write(data)
            record.events_sent = progress.events
            record.completion_tokens_sent = progress.pieces
    except mock.MockDisconnect:
        state.end(record, "failed")
        assert request.transport is not None
        request.transport.abort()
    if behaviour.error_after is not None and progress.events > behaviour.error_after:
        state.end(record, "failed")
    return response


async def _models(request: web.Request) -> web.Response:
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in mock.MOCK_MODELS
    ]
    return web.json_response({"object": "list", "data": data})


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
        return _error(400, f"bad behaviour: {exc}")
    state.defaults = defaults
    state.by_key = by_key
    return web.json_response({"defaults": asdict(defaults), "keys": sorted(by_key)})


def make_mock_app(defaults: mock.MockBehaviour = mock.DEFAULT_BEHAVIOUR) -> web.Application:
    """The mock upstream's application."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[MOCK_STATE] = MockState(defaults)
    app.router.add_post("/v1/chat/completions", _completion)
    app.router.add_post("/v1/completions", _completion)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/messages", _anthropic)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_post("/v1beta/models/{target}", _gemini)
    app.router.add_post("/v1/models/{target}", _gemini)  # google-genai 3 defaults to v1
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _azure)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", _embeddings)
    app.router.add_get("/health", _health)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_post("/_mock/behaviour", _behaviour)
    return app


async def start_mock_server(
    host: str, port: int, defaults: mock.MockBehaviour = mock.DEFAULT_BEHAVIOUR
) -> tuple[web.AppRunner, int]:
    """Start the mock on (host, port); port 0 picks one. Returns the runner and the real port."""
    runner = web.AppRunner(
        make_mock_app(defaults), handler_cancellation=True, access_log=None, handle_signals=False
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    return runner, int(actual)


def run_mock(host: str, port: int, defaults: mock.MockBehaviour) -> None:
    """Run the mock until SIGTERM or SIGINT (the ``llm-gateway mock-upstream`` command)."""

    async def main() -> None:
        runner, actual = await start_mock_server(host, port, defaults)
        print(f"mock upstream listening on http://{host}:{actual}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
