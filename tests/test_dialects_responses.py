"""The Responses client dialect: stateless request mapping, refusals, the typed event stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dialects.base import ChunkWriter
from gateway.dialects.responses import ResponsesDialect
from gateway.errors import InvalidRequest, UpstreamTimeout
from gateway.sse import SSEParser

DIALECT = ResponsesDialect()
WRITER = ChunkWriter(id="c1", model="m", created=1)


def parse(body: dict[str, Any]) -> dict[str, Any]:
    return DIALECT.parse_request(orjson.dumps(body))


def events(raw: bytes) -> list[dict[str, Any]]:
    found = []
    for event in SSEParser().feed(raw):
        data = orjson.loads(event.data)
        assert event.event is not None and event.event.decode() == data["type"]
        found.append(data)
    return found


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        ({"model": "m"}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": "m", "input": [{"type": "message", "role": "bot"}]}, "input[0].role"),
        ({"model": "m", "input": [{"type": "computer_call"}]}, "input[0].type"),
        ({"model": "m", "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_refusals_name_the_param(body: dict[str, Any], param: str) -> None:
    """Unsupported or malformed fields are a 400 naming the field."""
    with pytest.raises(InvalidRequest) as refused:
        parse(body)
    assert refused.value.param == param


def test_request_maps_items_tools_and_format() -> None:
    """Instructions, message items, function calls with their outputs, tools and text.format."""
    canonical = parse(
        {
            "model": "m",
            "instructions": "be brief",
            "stream": True,
            "max_output_tokens": 64,
            "store": False,
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "weather "},
                    {"type": "input_text", "text": "in Oslo?"},
                ]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
                {"role": "user", "content": [
                    {"type": "input_image", "image_url": "https://x.test/a.png"},
                ]},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
        }
    )  # fmt: skip
    assert canonical["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        ]},
    ]  # fmt: skip
    assert canonical["max_completion_tokens"] == 64
    assert canonical["stream_options"] == {"include_usage": True}
    assert canonical["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert canonical["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert canonical["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert canonical["reasoning_effort"] == "low" and "store" not in canonical


def test_stream_encoder_writes_typed_events_in_order() -> None:
    """Text then a function call: the item lifecycle events, ordered sequence numbers, usage."""
    encoder = DIALECT.encoder(model="m")
    raw = b"".join(
        [
            encoder.feed(WRITER.delta({"role": "assistant", "content": ""})),
            encoder.feed(WRITER.delta({"content": "Hi"})),
            encoder.feed(WRITER.delta({"content": "!"})),
            encoder.feed(WRITER.tool_start(0, "call_1", "f")),
            encoder.feed(WRITER.tool_arguments(0, '{"a":1}')),
            encoder.feed(WRITER.delta({}, finish="tool_calls")),
            encoder.feed(WRITER.usage(10, 4, cached=3)),
            encoder.done(),
        ]
    )
    seen = events(raw)
    assert [e["type"] for e in seen] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert seen[6]["text"] == "Hi!" and seen[11]["arguments"] == '{"a":1}'
    assert seen[10]["output_index"] == 1
    response = seen[-1]["response"]
    assert response["status"] == "completed"
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][1]["call_id"] == "call_1"
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 3},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 14,
    }


def test_length_is_incomplete_and_errors_fail_the_response() -> None:
    """finish_reason length ends with response.incomplete; an error with error + response.failed."""
    encoder = DIALECT.encoder(model="m")
    encoder.feed(WRITER.delta({"content": "Hi"}))
    encoder.feed(WRITER.delta({}, finish="length"))
    last = events(encoder.done())[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    failing = DIALECT.encoder(model="m")
    seen = events(failing.error(UpstreamTimeout("too slow")))
    assert [e["type"] for e in seen] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert seen[2]["message"] == "too slow" and seen[2]["code"] == "upstream_timeout"
    assert seen[3]["response"]["status"] == "failed"


def test_completion_to_client() -> None:
    """A chat completion becomes a response object with output items and usage."""
    completion = {
        "id": "c2",
        "model": "m",
        "created": 5,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "ok",
                    "tool_calls": [
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    response = orjson.loads(DIALECT.completion_to_client(orjson.dumps(completion)))
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "ok"
    assert response["output"][1]["name"] == "g" and response["output"][1]["call_id"] == "call_2"
    assert response["usage"]["total_tokens"] == 4
