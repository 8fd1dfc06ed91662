"""The identity dialects (chat in, openai and azure out) and the registries."""

from __future__ import annotations

import orjson
import pytest

from gateway.dialects import CLIENT_DIALECTS, UPSTREAM_TYPES
from gateway.dialects.base import UpstreamSettings
from gateway.errors import InvalidRequest, UpstreamProtocolError
from gateway.sse import SSEEvent

CHUNK = (
    b'{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}'
)
CANONICAL = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_registries_name_every_dialect() -> None:
    """Inbound dialects and upstream types are looked up by the names config and routes use."""
    assert set(CLIENT_DIALECTS) == {"chat", "responses", "messages"}
    assert set(UPSTREAM_TYPES) == {"openai", "azure", "anthropic", "gemini"}


def test_identity_never_touches_the_bytes() -> None:
    """The openai decoder hands on the event's own bytes; the chat encoder only frames them."""
    decoder = UPSTREAM_TYPES["openai"].decoder()
    event = SSEEvent(CHUNK)
    assert decoder.feed(event)[0] is event.data
    assert decoder.feed(SSEEvent(b"[DONE]")) == [] and decoder.finished
    encoder = CLIENT_DIALECTS["chat"].encoder(model="m")
    assert encoder.feed(CHUNK) == b"data: " + CHUNK + b"\n\n"
    assert encoder.done() == b"data: [DONE]\n\n"
    body = b'{"id":"c","choices":[]}'
    assert CLIENT_DIALECTS["chat"].completion_to_client(body) is body


def test_openai_stream_without_done_is_a_protocol_error() -> None:
    """An OpenAI-compatible body that ends before [DONE] is not a clean end."""
    decoder = UPSTREAM_TYPES["openai"].decoder()
    decoder.feed(SSEEvent(CHUNK))
    with pytest.raises(UpstreamProtocolError):
        decoder.at_eof()


def test_chat_parse_validates_like_the_chat_route() -> None:
    """The chat dialect uses the chat route's own validation."""
    with pytest.raises(InvalidRequest) as refused:
        CLIENT_DIALECTS["chat"].parse_request(b'{"model":"m","messages":[],"temperature":9}')
    assert refused.value.param == "messages"


def test_openai_and_azure_requests() -> None:
    """openai sends Bearer and the upstream model; azure puts deployment and version in the URL."""
    settings = UpstreamSettings(api_key="sk-1", api_version="2025-01-01", headers=(("X-A", "1"),))
    openai = UPSTREAM_TYPES["openai"].build_request(CANONICAL, "gpt-x", settings)
    assert openai.path == "/chat/completions"
    assert openai.headers == {"X-A": "1", "Authorization": "Bearer sk-1"}
    assert orjson.loads(openai.body)["model"] == "gpt-x"
    azure = UPSTREAM_TYPES["azure"].build_request(CANONICAL, "my deployment", settings)
    assert azure.path == "/deployments/my%20deployment/chat/completions?api-version=2025-01-01"
    assert azure.headers == {"X-A": "1", "api-key": "sk-1"}
    default = UPSTREAM_TYPES["azure"].build_request(CANONICAL, "d", UpstreamSettings())
    assert default.path.endswith("?api-version=2024-10-21") and default.headers == {}
    assert UPSTREAM_TYPES["azure"].retryable(429, b"") and not UPSTREAM_TYPES["azure"].retryable(
        400, b""
    )
