"""The Anthropic Messages client dialect: request validation and mapping, the stream encoder."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dialects.base import ChunkWriter
from gateway.dialects.messages import MessagesDialect
from gateway.errors import InvalidRequest, RateLimited, UpstreamTimeout
from gateway.sse import SSEParser

DIALECT = MessagesDialect()
WRITER = ChunkWriter(id="c1", model="m", created=1)


def parse(body: dict[str, Any]) -> dict[str, Any]:
    return DIALECT.parse_request(orjson.dumps(body))


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [((e.event or b"").decode(), orjson.loads(e.data)) for e in SSEParser().feed(raw)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": "9", "messages": []}, "max_tokens"),
        ({"max_tokens": 9, "messages": []}, "model"),
        ({"model": "m", "max_tokens": 9}, "messages"),
        ({"model": "m", "max_tokens": 9, "messages": [{"role": "bot"}]}, "messages[0].role"),
        (
            {
                "model": "m",
                "max_tokens": 9,
                "tools": [{"type": "web_search_20250305"}],
                "messages": [],
            },
            "tools[0]",
        ),
        (
            {"model": "m", "max_tokens": 9, "messages": [], "tool_choice": {"type": "x"}},
            "tool_choice",
        ),
    ],
)
def test_bad_requests_name_the_param(body: dict[str, Any], param: str) -> None:
    """Each malformed field is refused with a 400 that names it."""
    with pytest.raises(InvalidRequest) as refused:
        parse(body)
    assert refused.value.param == param and refused.value.http_status == 400


def test_request_maps_system_blocks_tools_and_results() -> None:
    """System blocks, images, tool_use and tool_result blocks become canonical chat messages."""
    canonical = parse(
        {
            "model": "claude",
            "max_tokens": 100,
            "stream": True,
            "system": [{"type": "text", "text": "be brief"}],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {
                        "type": "base64", "media_type": "image/png", "data": "AAAA",
                    }},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"x": 1}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": [
                        {"type": "text", "text": "42"},
                    ]},
                ]},
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )  # fmt: skip
    assert canonical["stream_options"] == {"include_usage": True}
    assert canonical["stop"] == ["END"] and canonical["user"] == "u1"
    system, user, assistant, tool = canonical["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }
    assert assistant["content"] == "calling"
    assert assistant["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":1}'}
    assert tool == {"role": "tool", "tool_call_id": "tu_1", "content": "42"}
    assert canonical["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert canonical["tool_choice"] == "required" and canonical["parallel_tool_calls"] is False


def test_stream_encoder_writes_the_messages_event_sequence() -> None:
    """Text then a tool call become blocks with event: lines; usage arrives in message_delta."""
    encoder = DIALECT.encoder(model="claude")
    raw = b"".join(
        [
            encoder.feed(WRITER.delta({"role": "assistant", "content": ""})),
            encoder.feed(WRITER.delta({"content": "Hi"})),
            encoder.feed(WRITER.delta({"content": "!"})),
            encoder.feed(WRITER.tool_start(0, "call_1", "f")),
            encoder.feed(WRITER.tool_arguments(0, '{"a":')),
            encoder.feed(WRITER.tool_arguments(0, "1}")),
            encoder.feed(WRITER.delta({}, finish="tool_calls")),
            encoder.feed(WRITER.usage(10, 4, cached=3)),
            encoder.done(),
        ]
    )
    seen = events(raw)
    assert [name for name, _ in seen] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in seen)
    assert seen[6][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "f",
        "input": {},
    }
    assert seen[6][1]["index"] == 1
    assert seen[8][1]["delta"] == {"type": "input_json_delta", "partial_json": "1}"}
    delta = seen[10][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 7,
        "output_tokens": 4,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 0,
    }


def test_errors_in_the_dialect() -> None:
    """A failure mid-stream is event: error with Anthropic's types; error bodies match."""
    encoder = DIALECT.encoder(model="claude")
    assert events(encoder.error(UpstreamTimeout("slow"))) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "slow"}})
    ]
    upstream_failed = encoder.feed(b'{"error":{"message":"down","type":"overloaded_error"}}')
    assert events(upstream_failed)[-1][1]["error"] == {
        "type": "overloaded_error",
        "message": "down",
    }
    body = orjson.loads(DIALECT.error_body(RateLimited("slow down")))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def test_completion_and_count_tokens() -> None:
    """A chat completion becomes a Messages message; count_tokens answers an estimate."""
    completion = {
        "id": "c9",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    message = orjson.loads(DIALECT.completion_to_client(orjson.dumps(completion)))
    assert message["content"] == [{"type": "text", "text": "ok"}]
    assert message["stop_reason"] == "max_tokens" and message["type"] == "message"
    assert message["usage"]["input_tokens"] == 5 and message["usage"]["output_tokens"] == 2
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    counted = orjson.loads(DIALECT.count_tokens(orjson.dumps(body)))
    assert 90 < counted["input_tokens"] < 120
