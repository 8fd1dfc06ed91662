"""The anthropic upstream type: request mapping, the Messages stream decoder, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.dialects.anthropic import AnthropicUpstream
from gateway.dialects.base import ProviderError, UpstreamSettings
from gateway.errors import InvalidRequest, UpstreamProtocolError
from gateway.sse import SSEParser

UPSTREAM = AnthropicUpstream()
SETTINGS = UpstreamSettings(api_key="sk-ant-secret")

# The shape of Anthropic's documented streaming example (text, then a tool_use block).
DOC_STREAM = (Path(__file__).parent / "data" / "anthropic-stream.sse").read_bytes()


def build(canonical: dict[str, Any]) -> dict[str, Any]:
    request = UPSTREAM.build_request(canonical, "claude-x", SETTINGS)
    body: dict[str, Any] = orjson.loads(request.body)
    return body


def decode(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    decoder = UPSTREAM.decoder()
    chunks = [orjson.loads(p) for e in SSEParser().feed(raw) for p in decoder.feed(e)]
    return chunks, decoder.finished


def test_request_maps_system_tools_results_images_and_stops() -> None:
    """System prompts join, tool results become a user turn, images and stops are mapped."""
    body = build(
        {
            "model": "alias",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "be kind"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                ]},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "look", "arguments": '{"q": "cat"}'},
                }]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "user", "content": "thanks"},
            ],
            "stop": "END",
            "max_completion_tokens": 50,
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )  # fmt: skip
    assert body["model"] == "claude-x" and body["max_tokens"] == 50
    assert body["system"] == "be brief\n\nbe kind"
    assert body["stop_sequences"] == ["END"]
    user, assistant, results = body["messages"]
    assert user["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert user["content"][2]["source"] == {"type": "url", "url": "https://x.test/cat.jpg"}
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": "cat"}}
    ]
    assert results["role"] == "user"
    assert results["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "a cat",
    }
    assert results["content"][1] == {"type": "text", "text": "thanks"}
    assert body["tools"] == [{"name": "look", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_request_headers_defaults_and_n() -> None:
    """x-api-key and anthropic-version are sent, max_tokens has a default, n > 1 is a 400."""
    request = UPSTREAM.build_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "claude-x", SETTINGS
    )
    assert request.path == "/messages"
    assert request.headers == {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-secret"}
    assert orjson.loads(request.body)["max_tokens"] == 4096
    with pytest.raises(InvalidRequest) as refused:
        build({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.value.param == "n"


def test_stream_decodes_text_tool_call_finish_and_cached_usage() -> None:
    """The documented stream becomes role, text, tool-call deltas, finish and one usage chunk."""
    chunks, finished = decode(DOC_STREAM)
    assert finished
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Hello!"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert orjson.loads(arguments) == {"city": "Paris"}
    assert {call["index"] for call in calls} == {0}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 35,
        "completion_tokens": 89,
        "total_tokens": 124,
        "prompt_tokens_details": {"cached_tokens": 10},
    }


def test_stream_cut_before_message_stop_is_a_protocol_error() -> None:
    """A body that ends before message_stop is not a clean end."""
    decoder = UPSTREAM.decoder()
    cut = DOC_STREAM[: DOC_STREAM.index(b"event: message_delta")]
    for event in SSEParser().feed(cut):
        decoder.feed(event)
    assert not decoder.finished
    with pytest.raises(UpstreamProtocolError):
        decoder.at_eof()


@pytest.mark.parametrize(
    ("kind", "retryable"), [("overloaded_error", True), ("invalid_request_error", False)]
)
def test_error_event_raises_provider_error(kind: str, retryable: bool) -> None:
    """event: error becomes a ProviderError that keeps the kind and says if a retry may help."""
    decoder = UPSTREAM.decoder()
    raw = (
        b'event: error\ndata: {"type":"error","error":{"type":"' + kind.encode() + b'",'
        b'"message":"Overloaded"}}\n\n'
    )
    with pytest.raises(ProviderError) as failed:
        decoder.feed(SSEParser().feed(raw)[0])
    assert failed.value.kind == kind and failed.value.retryable is retryable
    assert failed.value.message == "Overloaded"


def test_completion_and_retryable_statuses() -> None:
    """A Messages answer becomes a chat completion; 529 is worth a retry, 400 is not."""
    message = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_2", "name": "look", "input": {"q": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
    completion = orjson.loads(UPSTREAM.completion_from_upstream(orjson.dumps(message)))
    choice = completion["choices"][0]
    assert choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "look",
        "arguments": '{"q":1}',
    }
    assert choice["finish_reason"] == "tool_calls"
    assert completion["usage"]["total_tokens"] == 10
    assert UPSTREAM.retryable(529, b"") and not UPSTREAM.retryable(400, b"")
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    with pytest.raises(ProviderError, match="boom"):
        UPSTREAM.completion_from_upstream(orjson.dumps(error))


def test_fields_messages_lacks_are_dropped_with_a_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Chat-only fields do not reach Anthropic; a debug line names them."""
    caplog.set_level("DEBUG", logger="gateway.dialects.anthropic")
    body = build(
        {"model": "m", "messages": [], "logit_bias": {"1": 2}, "seed": 3, "temperature": 0.5}
    )
    assert "logit_bias" not in body and "seed" not in body and body["temperature"] == 0.5
    assert "['logit_bias', 'seed']" in caplog.text
