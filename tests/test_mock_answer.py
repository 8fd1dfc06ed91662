"""What the mock answers: tool calls, n, max_tokens, JSON formats, usage, embeddings, dialects."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import orjson
import pytest

from gateway.dialects.anthropic import AnthropicDecoder
from gateway.dialects.gemini import GeminiDecoder
from gateway.errors import GatewayError, UpstreamStatusError
from gateway.mock.answer import answer, count_prompt_tokens, expected_text
from gateway.mock.behaviour import MockBehaviour
from gateway.mock.inprocess import InProcessProvider
from gateway.mock.openai import chat_stream, embeddings
from gateway.sse import SSEParser

BEHAVIOUR = MockBehaviour(chunks=6)
QUESTION = [{"role": "user", "content": "hello there"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "find",
        "parameters": {
            "type": "object",
            "properties": {
                "q": {"type": "string"},
                "k": {"type": "integer"},
                "exact": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["fast", "slow"]},
            },
        },
    },
}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": QUESTION, **extra}


def test_tool_call_follows_the_schema_and_stops_after_a_result() -> None:
    """Offered tools are called with schema-shaped arguments, unless the last turn is a result."""
    (choice,) = answer(body(tools=[TOOL]), BEHAVIOUR)
    assert choice.tool is not None and choice.finish == "tool_calls" and choice.pieces == []
    arguments = orjson.loads(choice.tool.arguments)
    assert set(arguments) == {"q", "k", "exact", "tags", "mode"}
    assert isinstance(arguments["k"], int) and arguments["mode"] == "fast"
    assert len(choice.tool.pieces) == BEHAVIOUR.chunks
    assert answer(body(tools=[TOOL]), BEHAVIOUR)[0].tool == choice.tool
    answered = [
        *QUESTION,
        {"role": "assistant", "tool_calls": [{"id": choice.tool.id}]},
        {"role": "tool", "tool_call_id": choice.tool.id, "content": "found"},
    ]
    after = answer({"model": "mock-gpt", "messages": answered, "tools": [TOOL]}, BEHAVIOUR)
    assert after[0].tool is None and after[0].finish == "stop"
    assert answer(body(tools=[TOOL], tool_choice="none"), BEHAVIOUR)[0].tool is None


def test_n_max_tokens_and_json_formats() -> None:
    """n gives distinct choices (the first unchanged), max_tokens cuts with length, JSON parses."""
    one = answer(body(), BEHAVIOUR)
    three = answer(body(n=3), BEHAVIOUR)
    assert three[0] == one[0] and len({c.text for c in three}) == 3
    cut = answer(body(max_tokens=2), BEHAVIOUR)[0]
    assert cut.pieces == one[0].pieces[:2] and cut.finish == "length"
    assert answer(body(max_completion_tokens=6), BEHAVIOUR)[0].finish == "stop"
    unruly = MockBehaviour(chunks=6, honour_max_tokens=False)
    assert answer(body(max_tokens=2), unruly)[0].pieces == one[0].pieces
    document = answer(body(response_format={"type": "json_object"}), BEHAVIOUR)[0]
    assert set(orjson.loads(document.text)) == {"answer"}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    assert set(orjson.loads(answer(body(response_format=fmt), BEHAVIOUR)[0].text)) == {"city"}


async def test_stream_usage_counts_every_choice_and_cached_tokens() -> None:
    """The usage chunk counts all choices' pieces and reports cached tokens up to the prompt."""
    cached = MockBehaviour(chunks=6, cached_tokens=50)
    request = body(n=2, stream=True, stream_options={"include_usage": True})
    raw = b"".join([chunk async for chunk in chat_stream(request, cached)])
    events = [orjson.loads(e.data) for e in SSEParser().feed(raw) if e.data != b"[DONE]"]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] == 2
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2}
    texts = ["", ""]
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == [c.text for c in answer(request, cached)]


def test_embeddings_in_base64_decode_to_the_floats() -> None:
    """encoding_format base64 is the float32 little-endian bytes of the float embedding."""
    floats = embeddings({"input": "abc"})["data"][0]["embedding"]
    encoded = embeddings({"input": "abc", "encoding_format": "base64"})["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats, abs=1e-6)


def test_prompt_tokens_count_content_parts() -> None:
    """Text parts of a content list count as prompt words, like plain string content."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "x"}]}]
    assert count_prompt_tokens({"messages": parts}) == 2


class Collector:
    """A BodyConsumer that keeps the body and how it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.ended = asyncio.get_running_loop().create_future()

    def body(self, data: bytes) -> None:
        self.data += data

    def end(self, error: GatewayError | None) -> None:
        self.ended.set_result(error)


async def read_all(provider: InProcessProvider, path: str, request: dict[str, Any]) -> bytes:
    released: list[bool] = []
    response = await provider.send(path, orjson.dumps(request), {}, lambda: released.append(True))
    collector = Collector()
    response.stream_to(collector)
    assert await collector.ended is None
    response.close()
    assert released == [True]
    return collector.data


async def test_in_process_mock_answers_as_anthropic_and_gemini() -> None:
    """The embedded mock streams Messages and Gemini events that the decoders read back whole."""
    provider = InProcessProvider(MockBehaviour(chunks=5))
    expected = expected_text(body(), MockBehaviour(chunks=5))
    anthropic_request = {
        "model": "mock-gpt",
        "max_tokens": 50,
        "stream": True,
        "messages": QUESTION,
    }
    gemini_request = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    cases: list[tuple[str, dict[str, Any], AnthropicDecoder | GeminiDecoder]] = [
        ("/messages", anthropic_request, AnthropicDecoder()),
        ("/models/mock-gpt:streamGenerateContent?alt=sse", gemini_request, GeminiDecoder()),
    ]
    for path, request, decoder in cases:
        raw = await read_all(provider, path, request)
        chunks = [orjson.loads(p) for e in SSEParser().feed(raw) for p in decoder.feed(e)]
        assert decoder.finished
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == expected
        assert chunks[-1]["usage"]["completion_tokens"] == 5


async def test_in_process_mock_fails_in_the_dialect() -> None:
    """fail_status answers the provider's own error body (Anthropic's overloaded_error)."""
    provider = InProcessProvider()
    request = {"model": "m", "max_tokens": 5, "messages": QUESTION, "mock": {"fail_status": 529}}
    with pytest.raises(UpstreamStatusError) as failed:
        await provider.send("/messages", orjson.dumps(request), {}, lambda: None)
    assert failed.value.upstream_status == 529
    assert orjson.loads(failed.value.body)["error"]["type"] == "overloaded_error"
    azure = await read_all(
        provider, "/deployments/d/chat/completions?api-version=1", body(model="d", stream=False)
    )
    assert orjson.loads(azure)["object"] == "chat.completion"
