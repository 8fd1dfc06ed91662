"""OpenAI Chat Completions, the canonical dialect: identity in, and the openai and azure upstreams.

Nothing here decodes a stream payload: the chat client gets the canonical bytes framed as they
are, and an openai or azure upstream's events are canonical already.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

import orjson

from gateway import openai
from gateway.dialects.base import (
    JSONObject,
    ProviderError,
    UpstreamRequest,
    UpstreamSettings,
)
from gateway.errors import GatewayError, UpstreamProtocolError
from gateway.sse import DONE, DONE_EVENT, SSEEvent

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
DEFAULT_AZURE_API_VERSION = "2024-10-21"


class ChatEncoder:
    """Frames canonical payloads as they are."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> bytes:
        return b"data: " + chunk + b"\n\n"

    def done(self) -> bytes:
        return DONE_EVENT

    def error(self, err: GatewayError) -> bytes:
        if isinstance(err, ProviderError) and err.payload is not None:
            return b"data: " + err.payload + b"\n\n"  # an OpenAI upstream's own error event
        return b"data: " + err.to_json() + b"\n\n"


class ChatDialect:
    """``POST /v1/chat/completions``: the canonical form itself."""

    name: ClassVar[str] = "chat"

    def parse_request(self, raw: bytes) -> JSONObject:
        return openai.parse_request(raw, openai.Endpoint.CHAT).body

    def encoder(self, *, model: str) -> ChatEncoder:
        return ChatEncoder()

    def completion_to_client(self, canonical: bytes) -> bytes:
        return canonical

    def error_body(self, err: GatewayError) -> bytes:
        return err.to_json()


class OpenAIDecoder:
    """An OpenAI-compatible stream: every event is a canonical payload; ``[DONE]`` ends it."""

    __slots__ = ("finished",)

    def __init__(self) -> None:
        self.finished = False

    def feed(self, event: SSEEvent) -> list[bytes]:
        data = event.data
        if data == DONE:
            self.finished = True
            return []
        if data.startswith(b'{"error"'):
            raise _provider_error(data)
        return [data]

    def at_eof(self) -> list[bytes]:
        if not self.finished:
            raise UpstreamProtocolError("The upstream stream ended without [DONE].")
        return []


def _provider_error(data: bytes) -> ProviderError:
    """An OpenAI-style ``{"error": {...}}`` event as a ProviderError that keeps the event."""
    try:
        error = orjson.loads(data)["error"]
        message, kind = str(error.get("message")), str(error.get("type") or "upstream_error")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        message, kind = "The upstream reported an error.", "upstream_error"
    return ProviderError(message, kind=kind, payload=data)


class OpenAIUpstream:
    """Any OpenAI-compatible server: the canonical body with the upstream's model name."""

    name: ClassVar[str] = "openai"

    def build_request(
        self, canonical: JSONObject, upstream_model: str, settings: UpstreamSettings
    ) -> UpstreamRequest:
        headers = dict(settings.headers)
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        body = canonical if canonical.get("model") == upstream_model else {**canonical}
        body["model"] = upstream_model
        return UpstreamRequest("/chat/completions", headers, orjson.dumps(body))

    def decoder(self) -> OpenAIDecoder:
        return OpenAIDecoder()

    def completion_from_upstream(self, body: bytes) -> bytes:
        return body

    def retryable(self, status: int, body: bytes) -> bool:
        return status in RETRYABLE_STATUSES


class AzureUpstream(OpenAIUpstream):
    """Azure OpenAI: deployment in the path, ``api-version`` in the query, key in ``api-key``.

    The upstream model name is the Azure deployment name.
    """

    name: ClassVar[str] = "azure"

    def build_request(
        self, canonical: JSONObject, upstream_model: str, settings: UpstreamSettings
    ) -> UpstreamRequest:
        headers = dict(settings.headers)
        if settings.api_key:
            headers["api-key"] = settings.api_key
        version = settings.api_version or DEFAULT_AZURE_API_VERSION
        path = (
            f"/deployments/{quote(upstream_model, safe='')}/chat/completions"
            f"?api-version={quote(version, safe='')}"
        )
        body = {**canonical, "model": upstream_model}
        return UpstreamRequest(path, headers, orjson.dumps(body))
