"""The mock as an Anthropic or Gemini deployment: the chat mock's answer, in the provider's dialect.

The content is the chat mock's (deterministic in the canonical request, so one question asked in
any dialect gets the same words), written with the gateway's own client-side encoders for that
dialect. The providers' SDKs pointed at the mock are what proves those encoders faithful. Failure
injection speaks the dialect too: ``fail_status`` answers the provider's error body
(``overloaded_error`` for 529, ``RESOURCE_EXHAUSTED`` for 429) and ``error_after`` sends the
provider's mid-stream error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.dialects import messages
from gateway.dialects.base import ClientEncoder, JSONObject, ProviderError, load_object
from gateway.dialects.gemini_client import GeminiDialect
from gateway.mock.behaviour import MockBehaviour
from gateway.mock.openai import StreamProgress, chat_completion, translated_stream

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MID_STREAM_MESSAGE = "mock upstream failure mid-stream"


def anthropic_error(status: int, message: str) -> JSONObject:
    """An Anthropic error body for ``status``."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def gemini_error(status: int, message: str) -> JSONObject:
    """A Gemini (Google API) error body for ``status``."""
    kind = _GEMINI_STATUSES.get(status, "INTERNAL")
    return {"error": {"code": status, "message": message, "status": kind}}


@dataclass(frozen=True, slots=True)
class MockDialect:
    """How the mock reads a request and writes an answer in one provider's API."""

    name: str
    parse: Callable[[bytes, str, bool], JSONObject]  # raw body, model, stream -> canonical
    encoder: Callable[[str], ClientEncoder]
    completion: Callable[[bytes], bytes]
    error_body: Callable[[int, str], JSONObject]
    error_event: bytes  # what error_after sends

    def stream(
        self,
        canonical: JSONObject,
        behaviour: MockBehaviour,
        progress: StreamProgress | None = None,
    ) -> AsyncIterator[bytes]:
        """The answer's stream in this dialect, paced and failing as ``behaviour`` says."""
        encoder = self.encoder(str(canonical.get("model")))

        def translate(payload: bytes | None) -> bytes:
            return encoder.done() if payload is None else encoder.feed(payload)

        return translated_stream(canonical, behaviour, translate, self.error_event, progress)

    def answer(self, canonical: JSONObject, behaviour: MockBehaviour) -> tuple[bytes, int]:
        """A non-streaming answer in this dialect, and its completion tokens."""
        completion = chat_completion(canonical, behaviour)
        body = self.completion(orjson.dumps(completion))
        return body, int(completion["usage"]["completion_tokens"])


def _parse_messages(raw: bytes, model: str, stream: bool) -> JSONObject:
    return messages.to_canonical(load_object(raw))


_GEMINI = GeminiDialect()
_MESSAGES = messages.MessagesDialect()

ANTHROPIC = MockDialect(
    name="anthropic",
    parse=_parse_messages,
    encoder=lambda model: messages.MessagesEncoder(model=model),
    completion=_MESSAGES.completion_to_client,
    error_body=anthropic_error,
    error_event=messages.event(
        "error", messages.error_object(ProviderError(MID_STREAM_MESSAGE, kind="overloaded_error"))
    ),
)
GEMINI = MockDialect(
    name="gemini",
    parse=lambda raw, model, stream: _GEMINI.parse_request(raw, model=model, stream=stream),
    encoder=lambda model: _GEMINI.encoder(model=model),
    completion=_GEMINI.completion_to_client,
    error_body=gemini_error,
    error_event=b"data: " + orjson.dumps(gemini_error(503, MID_STREAM_MESSAGE)) + b"\n\n",
)


def gemini_target(target: str) -> tuple[str, bool] | None:
    """``{model}:generateContent`` or ``{model}:streamGenerateContent`` -> (model, stream)."""
    model, _, method = target.rpartition(":")
    if method == "generateContent":
        return model, False
    if method == "streamGenerateContent":
        return model, True
    return None


def for_path(path: str) -> tuple[MockDialect, str, bool | None] | None:
    """The dialect, model and streaming a provider path asks for (None: the OpenAI dialect).

    ``path`` is relative to the API root, as a deployment's request builder makes it.
    """
    route = path.split("?", 1)[0]
    if route == "/messages":
        return ANTHROPIC, "", None
    if route.startswith("/models/"):
        target = gemini_target(route[len("/models/") :])
        if target is not None:
            return GEMINI, target[0], target[1]
    return None


def raw_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object for the behaviour overrides (``{}`` when it is not one)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
