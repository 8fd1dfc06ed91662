"""The mock speaking the OpenAI API: streamed and whole chat and legacy completions, embeddings.

The answer is :mod:`gateway.mock.answer`'s (deterministic), shaped by a
:class:`~gateway.mock.behaviour.MockBehaviour` (pacing, failure injection). The generators here
serve both the HTTP server (``llm-gateway mock-upstream``) and the gateway's in-process ``demo``
model.

It is built to be fast, because benchmarks measure the gateway against it: the constant JSON around
each piece is encoded once per stream, and unpaced events are batched into ~16 KiB writes unless
``unbatched`` asks for one write per event, as real upstreams do (what ``make bench`` measures).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.mock.answer import ToolCall, answer, answer_words, count_prompt_tokens
from gateway.mock.behaviour import MockBehaviour, MockDisconnect
from gateway.sse import DONE_EVENT

BATCH_BYTES = 16 * 1024
_ids = itertools.count(1)


def _usage(
    body: Mapping[str, Any], completion_tokens: int, behaviour: MockBehaviour | None = None
) -> dict[str, Any]:
    prompt = count_prompt_tokens(body)
    cached = min(prompt, behaviour.cached_tokens) if behaviour else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


# -- streams ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamProgress:
    """How far a stream got: events and content pieces handed to the writer."""

    events: int = 0
    pieces: int = 0


def _chat_events(body: Mapping[str, Any], behaviour: MockBehaviour) -> Iterator[tuple[bytes, int]]:
    """(encoded event, content pieces in it) for a streaming chat completion."""
    model = orjson.dumps(body.get("model")).decode()
    head = (
        f'data: {{"id":"chatcmpl-mock-{next(_ids)}","object":"chat.completion.chunk",'
        f'"created":{int(time.time())},"model":{model},"choices":'
    ).encode()
    choices = answer(body, behaviour)
    tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
    for index, choice in enumerate(choices):
        role = b'"role":"assistant","content":' + (b"null" if choice.tool else b'""')
        yield head + b'[{"index":%d,"delta":{' % index + role + tail, 0
    for index, choice in enumerate(choices):
        if choice.tool is not None:
            yield from _tool_events(head, index, choice.tool)
    piece_heads = [head + b'[{"index":%d,"delta":{"content":' % i for i in range(len(choices))]
    longest = max(len(choice.pieces) for choice in choices)
    for position in range(longest):
        for index, choice in enumerate(choices):
            if position < len(choice.pieces):
                yield piece_heads[index] + orjson.dumps(choice.pieces[position]) + tail, 1
    for index, choice in enumerate(choices):
        finish = b'[{"index":%d,"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n'
        yield head + finish % (index, choice.finish.encode()), 0
    if _wants_usage(body) and behaviour.report_usage:
        tokens = sum(choice.tokens for choice in choices)
        usage = orjson.dumps(_usage(body, tokens, behaviour))
        yield head + b'[],"usage":' + usage + b"}\n\n", 0
    yield DONE_EVENT, 0


def _tool_events(head: bytes, index: int, call: ToolCall) -> Iterator[tuple[bytes, int]]:
    """The chunks of one streamed tool call: id and name first, then the argument pieces."""
    function = {"name": call.name, "arguments": ""}
    deltas: list[dict[str, Any]] = [
        {"index": 0, "id": call.id, "type": "function", "function": function}
    ]
    deltas.extend({"index": 0, "function": {"arguments": piece}} for piece in call.pieces)
    for position, delta in enumerate(deltas):
        choice = {
            "index": index,
            "delta": {"tool_calls": [delta]},
            "logprobs": None,
            "finish_reason": None,
        }
        yield head + orjson.dumps([choice]) + b"}\n\n", 1 if position else 0


def _completion_events(
    body: Mapping[str, Any], behaviour: MockBehaviour
) -> Iterator[tuple[bytes, int]]:
    """(encoded event, content pieces in it) for a streaming legacy completion."""
    model = orjson.dumps(body.get("model")).decode()
    head = (
        f'data: {{"id":"cmpl-mock-{next(_ids)}","object":"text_completion",'
        f'"created":{int(time.time())},"model":{model},"choices":'
    ).encode()
    pieces = answer_words(body, behaviour)
    for piece in pieces:
        yield (
            head
            + b'[{"index":0,"text":'
            + orjson.dumps(piece)
            + b',"logprobs":null,"finish_reason":null}]}\n\n',
            1,
        )
    yield head + b'[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}\n\n', 0
    if _wants_usage(body):
        yield head + b'[],"usage":' + orjson.dumps(_usage(body, len(pieces))) + b"}\n\n", 0
    yield DONE_EVENT, 0


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI error body for ``status``."""
    error_type = {429: "rate_limit_error"}.get(status, "invalid_request_error")
    if status >= 500:
        error_type = "server_error"
    return {"error": {"message": message, "type": error_type, "param": param, "code": None}}


_ERROR_EVENT = (
    b'data: {"error":{"message":"mock upstream failure mid-stream","type":"server_error",'
    b'"param":null,"code":"mock_error"}}\n\n'
)


async def _paced(
    events: Iterator[tuple[bytes, int]],
    behaviour: MockBehaviour,
    progress: StreamProgress,
    error_event: bytes = _ERROR_EVENT,
) -> AsyncIterator[bytes]:
    """Apply pacing, batching and failure injection to a sequence of events."""
    batch: list[bytes] = []
    size = 0
    started = asyncio.get_running_loop().time()
    for data, pieces in events:
        sent = progress.events
        if behaviour.die_after is not None and sent >= behaviour.die_after:
            if batch:
                yield b"".join(batch)
            raise MockDisconnect
        if behaviour.error_after is not None and sent >= behaviour.error_after:
            batch.append(error_event)
            progress.events += 1
            yield b"".join(batch)
            return
        if behaviour.stall_after is not None and sent >= behaviour.stall_after:
            if batch:
                yield b"".join(batch)
            await asyncio.Event().wait()  # silent until the reader goes away
        if behaviour.delay or behaviour.unbatched:
            if sent and behaviour.delay:
                await asyncio.sleep(_pause(behaviour, started, sent))
            progress.events += 1
            progress.pieces += pieces
            yield data
            continue
        batch.append(data)
        size += len(data)
        progress.events += 1
        progress.pieces += pieces
        if size >= BATCH_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def scheduled_events(
    body: Mapping[str, Any], behaviour: MockBehaviour, *, chat: bool
) -> list[tuple[bytes, int]] | None:
    """The whole stream as (event, pieces) for a paced ``unbatched`` stream without failure
    injection, which the server then writes from timers; None for any other stream."""
    failures = (behaviour.die_after, behaviour.stall_after, behaviour.error_after)
    if not (behaviour.unbatched and behaviour.delay) or any(f is not None for f in failures):
        return None
    return list((_chat_events if chat else _completion_events)(body, behaviour))


def _pause(behaviour: MockBehaviour, started: float, sent: int) -> float:
    """Seconds to wait before event number ``sent``: ``delay``, or what is left of the schedule."""
    if not behaviour.unbatched:
        return behaviour.delay
    return max(0.0, started + sent * behaviour.delay - asyncio.get_running_loop().time())


def chat_stream(
    body: Mapping[str, Any],
    behaviour: MockBehaviour,
    progress: StreamProgress | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streaming chat completion, paced and failing as ``behaviour`` says."""
    return _paced(_chat_events(body, behaviour), behaviour, progress or StreamProgress())


def translated_stream(
    body: Mapping[str, Any],
    behaviour: MockBehaviour,
    translate: Callable[[bytes | None], bytes],
    error_event: bytes,
    progress: StreamProgress | None = None,
) -> AsyncIterator[bytes]:
    """A chat stream in another API's dialect: ``translate`` gets each chunk payload, then None
    for the end; ``error_event`` is that dialect's mid-stream failure (``error_after``)."""

    def events() -> Iterator[tuple[bytes, int]]:
        for data, pieces in _chat_events(body, behaviour):
            out = translate(None if data == DONE_EVENT else data[6:-2])
            if out:
                yield out, pieces

    return _paced(events(), behaviour, progress or StreamProgress(), error_event)


def completion_stream(
    body: Mapping[str, Any],
    behaviour: MockBehaviour,
    progress: StreamProgress | None = None,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streaming legacy completion."""
    return _paced(_completion_events(body, behaviour), behaviour, progress or StreamProgress())


def chat_completion(body: Mapping[str, Any], behaviour: MockBehaviour) -> dict[str, Any]:
    """A non-streaming chat completion."""
    choices = answer(body, behaviour)
    rendered = []
    for index, choice in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text or None}
        if choice.tool is None:
            message["content"] = choice.text
        else:
            function = {"name": choice.tool.name, "arguments": choice.tool.arguments}
            message["tool_calls"] = [
                {"id": choice.tool.id, "type": "function", "function": function}
            ]
        rendered.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": choice.finish}
        )
    return {
        "id": f"chatcmpl-mock-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": rendered,
        "usage": _usage(body, sum(choice.tokens for choice in choices), behaviour),
    }


def as_sent(answer: dict[str, Any], behaviour: MockBehaviour) -> dict[str, Any]:
    """A non-streaming answer as the mock sends it: without its usage when told to report none."""
    if behaviour.report_usage:
        return answer
    return {name: value for name, value in answer.items() if name != "usage"}


def text_completion(body: Mapping[str, Any], behaviour: MockBehaviour) -> dict[str, Any]:
    """A non-streaming legacy completion."""
    pieces = answer_words(body, behaviour)
    return {
        "id": f"cmpl-mock-{next(_ids)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": _usage(body, len(pieces)),
    }


def embeddings(body: Mapping[str, Any]) -> dict[str, Any]:
    """Deterministic unit vectors, one per input."""
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    dimensions = body.get("dimensions") or 16
    data = []
    for index, item in enumerate(items):
        digest = hashlib.blake2b(orjson.dumps(item), digest_size=64).digest()
        raw = [digest[i % len(digest)] - 127.5 for i in range(dimensions)]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        vector = [v / norm for v in raw]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = count_prompt_tokens(body)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
