"""The mock upstream as an HTTP server (``llm-gateway mock-upstream``): the OpenAI, Azure,
Anthropic and Gemini routes, each request recorded (see :mod:`gateway.mock.control`)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import orjson
import uvloop
from aiohttp import web

from gateway.dialects import messages
from gateway.dialects.base import load_object
from gateway.errors import GatewayError
from gateway.mock.answer import count_prompt_tokens
from gateway.mock.behaviour import (
    DEFAULT_BEHAVIOUR,
    MOCK_MODELS,
    MockBehaviour,
    MockDisconnect,
    behaviour_for,
    first_byte_delay,
)
from gateway.mock.control import MOCK_STATE, RecordedRequest, add_control_routes
from gateway.mock.dialect import (
    ANTHROPIC,
    GEMINI,
    MockDialect,
    anthropic_error,
    gemini_error,
    gemini_target,
    raw_object,
)
from gateway.mock.openai import (
    StreamProgress,
    as_sent,
    chat_completion,
    chat_stream,
    completion_stream,
    embeddings,
    error_body,
    scheduled_events,
    text_completion,
)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_KEY_HEADERS = ("x-api-key", "x-goog-api-key", "api-key")  # upstream keys other than Bearer


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status)


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
        behaviour = behaviour_for(defaults, body, request.headers)
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
    behaviour: MockBehaviour,
    record: RecordedRequest,
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    chat = request.path.endswith("/chat/completions")
    if delay := first_byte_delay(behaviour, record.seq):
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
        answer = chat_completion(body, behaviour) if chat else text_completion(body, behaviour)
        record.completion_tokens_sent = answer["usage"]["completion_tokens"]
        sent = as_sent(answer, behaviour)
        return web.json_response(sent, dumps=lambda v: orjson.dumps(v).decode())
    scheduled = scheduled_events(body, behaviour, chat=chat)
    if scheduled is not None:
        return await _write_on_schedule(request, scheduled, behaviour.delay, record)
    progress = StreamProgress()
    stream = (chat_stream if chat else completion_stream)(body, behaviour, progress)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for data in stream:
            if behaviour.stall_after is not None and progress.events >= behaviour.stall_after:
                record.outcome = "stalled"
            await response.write(data)
            record.events_sent = progress.events
            record.completion_tokens_sent = progress.pieces
    except MockDisconnect:
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
    return web.json_response(embeddings(body))


async def _azure(request: web.Request) -> web.StreamResponse:
    """Azure OpenAI: the chat mock under the deployment's path, which needs ``api-version``."""
    if not request.query.get("api-version"):
        return _error(404, "Resource not found (the api-version query parameter is missing).")
    return await _completion(request)


async def _anthropic(request: web.Request) -> web.StreamResponse:
    """Anthropic Messages (``POST /v1/messages``), streamed or not."""
    return await _in_dialect(request, ANTHROPIC, "", None)


async def _count_tokens(request: web.Request) -> web.Response:
    """Anthropic's ``POST /v1/messages/count_tokens``: the mock's word count of the prompt."""
    try:
        canonical = messages.to_canonical({"max_tokens": 1, **load_object(await request.read())})
    except GatewayError as exc:
        error = anthropic_error(exc.http_status, exc.message)
        return web.json_response(error, status=exc.http_status)
    return web.json_response({"input_tokens": count_prompt_tokens(canonical)})


async def _gemini(request: web.Request) -> web.StreamResponse:
    """Gemini ``{model}:generateContent`` and ``{model}:streamGenerateContent?alt=sse``."""
    target = gemini_target(request.match_info["target"])
    if target is None:
        body = gemini_error(404, "Unknown method.")
        return web.json_response(body, status=404)
    model, stream = target
    return await _in_dialect(request, GEMINI, model, stream)


async def _in_dialect(
    request: web.Request, dialect: MockDialect, model: str, stream: bool | None
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    raw = await request.read()
    native = raw_object(raw)
    key = next((request.headers[h] for h in _KEY_HEADERS if h in request.headers), None)
    try:
        canonical = dialect.parse(raw, model, bool(stream))
        defaults = state.defaults_for(f"Bearer {key}" if key else None)
        behaviour = behaviour_for(defaults, native, request.headers)
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
    dialect: MockDialect,
    canonical: dict[str, Any],
    behaviour: MockBehaviour,
    record: RecordedRequest,
) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    if delay := first_byte_delay(behaviour, record.seq):
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
    progress = StreamProgress()
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        async for data in dialect.stream(canonical, behaviour, progress):
            await response.write(data)
            record.events_sent = progress.events
            record.completion_tokens_sent = progress.pieces
    except MockDisconnect:
        state.end(record, "failed")
        assert request.transport is not None
        request.transport.abort()
    if behaviour.error_after is not None and progress.events > behaviour.error_after:
        state.end(record, "failed")
    return response


async def _models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in MOCK_MODELS]
    return web.json_response({"object": "list", "data": data})


def make_mock_app(defaults: MockBehaviour = DEFAULT_BEHAVIOUR) -> web.Application:
    """The mock upstream's application."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    add_control_routes(app, defaults)
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
    return app


async def start_mock_server(
    host: str, port: int, defaults: MockBehaviour = DEFAULT_BEHAVIOUR
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


def run_mock(host: str, port: int, defaults: MockBehaviour) -> None:
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
