"""The built-in mock served in-process: the embedded ``demo`` model, with no socket at all.

It runs the same generator code as ``llm-gateway mock-upstream``, so the demo streams exactly what
the mock server would, and the event source reads it through the same ``UpstreamResponse``
interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import orjson

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamUnreachable,
)
from gateway.mock.behaviour import MockBehaviour, MockDisconnect, behaviour_for
from gateway.mock.dialect import for_path
from gateway.mock.openai import (
    as_sent,
    chat_completion,
    chat_stream,
    completion_stream,
    embeddings,
    text_completion,
)
from gateway.stream import BodyConsumer

# Paced so that a newcomer's `curl -N` visibly streams.
DEMO_BEHAVIOUR = MockBehaviour(chunks=24, delay=0.03)


class InProcessResponse:
    """A response produced by the mock's generators instead of a socket.

    A task runs the generator and pushes each chunk to the consumer, as a connection's callbacks
    would; it waits while paused (flow control) and until a consumer is attached.
    """

    __slots__ = (
        "_body",
        "_consumer",
        "_flowing",
        "_producer",
        "_release",
        "content_type",
        "status",
    )

    def __init__(
        self,
        release: Callable[[], None],
        *,
        chunks: AsyncIterator[bytes] | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = 200
        self.content_type = "text/event-stream" if chunks is not None else "application/json"
        self._body = body
        self._release: Callable[[], None] | None = release
        self._consumer: BodyConsumer | None = None
        self._flowing = asyncio.Event()  # set while a consumer is attached and not paused
        self._producer: asyncio.Task[None] | None = None
        if chunks is not None:
            self._producer = asyncio.create_task(self._produce(chunks))

    async def _produce(self, chunks: AsyncIterator[bytes]) -> None:
        error: GatewayError | None = None
        try:
            async for chunk in chunks:
                if not self._flowing.is_set():
                    await self._flowing.wait()
                assert self._consumer is not None
                self._consumer.body(chunk)
        except MockDisconnect:
            error = UpstreamProtocolError(
                "The upstream closed the connection in the middle of the response."
            )
        if not self._flowing.is_set():
            await self._flowing.wait()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.end(error)

    def stream_to(self, consumer: BodyConsumer) -> None:
        if self._producer is None:
            body, self._body = self._body, b""
            if body:
                consumer.body(body)
            consumer.end(None)
            return
        self._consumer = consumer
        self._flowing.set()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        if self._consumer is not None:
            self._flowing.set()

    async def read_body(self, limit: int) -> bytes:
        return self._body

    def close(self, *, complete: bool = False) -> None:
        self._consumer = None
        if self._producer is not None:
            self._producer.cancel()
        if self._release is not None:
            self._release()
            self._release = None


# A client may shape the demo's answer with a "mock" object or X-Mock-* headers; within these
# bounds, so that no request blocks the event loop or holds memory or a slot for long.
MAX_CHUNKS = 4096
MAX_WORDS = 32_768  # chunks x chunk_size
MAX_DELAY = 5.0
MAX_FIRST_BYTE_DELAY = 30.0
MAX_RETRY_AFTER = 600.0
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048


def check_bounds(behaviour: MockBehaviour, request: Mapping[str, object]) -> None:
    """Raise ValueError naming the first mock setting or embeddings field beyond its bound."""
    limits: list[tuple[str, float, float]] = [
        ("chunks", behaviour.chunks, MAX_CHUNKS),
        ("chunks x chunk_size", behaviour.chunks * behaviour.chunk_size, MAX_WORDS),
        ("delay", behaviour.delay, MAX_DELAY),
        ("first_byte_delay", behaviour.first_byte_delay, MAX_FIRST_BYTE_DELAY),
        ("retry_after", behaviour.retry_after or 0.0, MAX_RETRY_AFTER),
    ]
    dimensions = request.get("dimensions")
    if isinstance(dimensions, int):
        limits.append(("dimensions", dimensions, MAX_DIMENSIONS))
    inputs = request.get("input")
    if isinstance(inputs, list):
        limits.append(("input items", len(inputs), MAX_INPUTS))
    for name, value, bound in limits:
        if value > bound:
            raise ValueError(f"mock setting {name} must be at most {bound:g}, got {value:g}")
    status = behaviour.fail_status
    if status is not None and not 400 <= status <= 599:
        raise ValueError(f"mock setting fail_status must be from 400 to 599, got {status}")


class InProcessProvider:
    """Answers requests for in-process deployments from the mock's content generators.

    ``allow_overrides`` False: the request's "mock" object and X-Mock-* headers are ignored (the
    default when the gateway listens beyond loopback), so clients cannot make the demo fail.
    """

    def __init__(
        self, defaults: MockBehaviour = DEMO_BEHAVIOUR, *, allow_overrides: bool = True
    ) -> None:
        self._defaults = defaults
        self._allow_overrides = allow_overrides

    async def send(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        release: Callable[[], None],
    ) -> InProcessResponse:
        """Open a response as the mock server would, raising what a failing upstream raises."""
        dialect = for_path(path)
        try:
            request = orjson.loads(body)
            if self._allow_overrides:
                behaviour = behaviour_for(self._defaults, request, headers)
            else:
                behaviour = self._defaults
            check_bounds(behaviour, request)
            if dialect is not None:
                request = dialect[0].parse(body, dialect[1], bool(dialect[2]))
        except ValueError as exc:
            release()
            raise InvalidRequest(str(exc), param="mock") from None
        except GatewayError:
            release()
            raise
        try:
            if behaviour.first_byte_delay:
                await asyncio.sleep(behaviour.first_byte_delay)
            if behaviour.fail_before_first_byte:
                raise UpstreamUnreachable("The upstream closed the connection before answering.")
            if behaviour.fail_status is not None and dialect is not None:
                message = f"mock failure {behaviour.fail_status}"
                failure = orjson.dumps(dialect[0].error_body(behaviour.fail_status, message))
                raise UpstreamStatusError(behaviour.fail_status, failure)
            if behaviour.fail_status is not None:
                error = {
                    "error": {
                        "message": f"mock failure {behaviour.fail_status}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                retry_after = (
                    None if behaviour.retry_after is None else f"{behaviour.retry_after:g}"
                )
                raise UpstreamStatusError(
                    behaviour.fail_status, orjson.dumps(error), retry_after=retry_after
                )
        except BaseException:
            release()
            raise
        stream = bool(request.get("stream"))
        if dialect is not None:
            speaker = dialect[0]
            if stream:
                return InProcessResponse(release, chunks=speaker.stream(request, behaviour))
            return InProcessResponse(release, body=speaker.answer(request, behaviour)[0])
        path = _azure_route(path)
        if path == "/chat/completions":
            if stream:
                return InProcessResponse(release, chunks=chat_stream(request, behaviour))
            return InProcessResponse(
                release, body=orjson.dumps(as_sent(chat_completion(request, behaviour), behaviour))
            )
        if path == "/completions":
            if stream:
                return InProcessResponse(release, chunks=completion_stream(request, behaviour))
            return InProcessResponse(
                release, body=orjson.dumps(text_completion(request, behaviour))
            )
        return InProcessResponse(release, body=orjson.dumps(embeddings(request)))


def _azure_route(path: str) -> str:
    """An Azure deployment path (``/deployments/{d}/chat/completions?api-version=...``) as the
    OpenAI path it mirrors; any other path as it is."""
    route = path.split("?", 1)[0]
    if route.startswith("/deployments/") and route.count("/") >= 3:
        return "/" + route.split("/", 3)[3]
    return route
