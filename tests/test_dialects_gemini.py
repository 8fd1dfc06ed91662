"""The gemini upstream type: request mapping, the stream decoder, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dialects.base import ProviderError, UpstreamSettings
from gateway.dialects.gemini import GeminiUpstream
from gateway.errors import UpstreamProtocolError
from gateway.sse import SSEEvent

UPSTREAM = GeminiUpstream()
SETTINGS = UpstreamSettings(api_key="gm-secret")


def event(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(orjson.dumps(data))


def text_event(text: str, *, index: int = 0, **extra: Any) -> SSEEvent:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": index}
    return event({"candidates": [{**candidate, **extra}], "modelVersion": "gemini-x"})


USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 5,
    "totalTokenCount": 17,
    "cachedContentTokenCount": 4,
}


def test_request_maps_turns_tools_results_and_config() -> None:
    """Roles, function calls and their results, tools and generation settings are mapped."""
    canonical = {
        "model": "alias",
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather?"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_9", "type": "function",
                "function": {"name": "forecast", "arguments": '{"city":"Oslo"}'},
            }]},
            {"role": "tool", "tool_call_id": "call_9", "content": "rain"},
        ],
        "temperature": 0.2, "top_p": 0.9, "n": 2, "max_tokens": 30, "stop": ["X"],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {
            "name": "forecast", "description": "d", "parameters": {"type": "object"},
        }}],
        "tool_choice": {"type": "function", "function": {"name": "forecast"}},
    }  # fmt: skip
    request = UPSTREAM.build_request(canonical, "gemini-x", SETTINGS)
    assert request.path == "/models/gemini-x:streamGenerateContent?alt=sse"
    assert request.headers == {"x-goog-api-key": "gm-secret"}
    body = orjson.loads(request.body)
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    user, model, result = body["contents"]
    assert user["parts"] == [
        {"text": "weather?"},
        {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
    ]
    assert model == {
        "role": "model",
        "parts": [{"functionCall": {"name": "forecast", "args": {"city": "Oslo"}}}],
    }
    assert result["parts"] == [
        {"functionResponse": {"name": "forecast", "response": {"result": "rain"}}}
    ]
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "candidateCount": 2,
        "maxOutputTokens": 30,
        "stopSequences": ["X"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration == {
        "name": "forecast",
        "description": "d",
        "parametersJsonSchema": {"type": "object"},
    }
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["forecast"]}
    }
    plain = UPSTREAM.build_request({"messages": []}, "models/gemini-x", SETTINGS)
    assert plain.path == "/models/gemini-x:generateContent"


def test_stream_decodes_text_then_finish_with_cached_usage() -> None:
    """Text events, then the finishReason event with usageMetadata, end the stream."""
    decoder = UPSTREAM.decoder()
    chunks = decoder.feed(text_event("Hel")) + decoder.feed(text_event("lo"))
    assert not decoder.finished
    chunks += decoder.feed(
        event({**orjson.loads(text_event("!", finishReason="STOP").data), "usageMetadata": USAGE})
    )
    assert decoder.finished and decoder.at_eof() == []
    parsed = [orjson.loads(c) for c in chunks]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c["choices"])
    assert text == "Hello!"
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_function_call_and_several_candidates() -> None:
    """A whole functionCall is one tool-call delta; the stream ends when every candidate has."""
    decoder = UPSTREAM.decoder()
    call = {"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "index": 0}
    chunks = decoder.feed(event({"candidates": [call, {"content": {"parts": []}, "index": 1}]}))
    chunks += decoder.feed(event({"candidates": [{"finishReason": "STOP", "index": 0}]}))
    assert not decoder.finished
    with pytest.raises(UpstreamProtocolError):
        decoder.at_eof()
    chunks += decoder.feed(event({"candidates": [{"finishReason": "MAX_TOKENS", "index": 1}]}))
    assert decoder.finished
    parsed = [orjson.loads(c) for c in chunks]
    calls = [t for c in parsed for ch in c["choices"] for t in ch["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "f"
    assert orjson.loads(calls[1]["function"]["arguments"]) == {"a": 1}
    finishes = {
        ch["index"]: ch["finish_reason"]
        for c in parsed
        for ch in c["choices"]
        if ch["finish_reason"]
    }
    assert finishes == {0: "tool_calls", 1: "length"}


@pytest.mark.parametrize(
    ("status", "retryable"), [("RESOURCE_EXHAUSTED", True), ("INVALID_ARGUMENT", False)]
)
def test_error_object_raises_provider_error(status: str, retryable: bool) -> None:
    """A Gemini error object in the stream is a ProviderError; quota errors are retryable."""
    error = {"error": {"code": 429, "message": "Quota exceeded", "status": status}}
    with pytest.raises(ProviderError) as failed:
        UPSTREAM.decoder().feed(event(error))
    assert failed.value.retryable is retryable and failed.value.kind == status
    assert UPSTREAM.retryable(400, orjson.dumps(error)) is retryable
    assert UPSTREAM.retryable(503, b"not json")


def test_completion_from_response() -> None:
    """A generateContent answer becomes a chat completion with usage."""
    answer = {
        "candidates": [
            {
                "content": {"parts": [{"text": "Hi"}, {"text": " there"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": USAGE,
        "modelVersion": "gemini-x",
        "responseId": "r1",
    }
    completion = orjson.loads(UPSTREAM.completion_from_upstream(orjson.dumps(answer)))
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert completion["id"] == "r1" and completion["model"] == "gemini-x"
