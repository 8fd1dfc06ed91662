"""The dialect interface: how a client's API and a provider's API meet in one canonical form.

Canonical form is OpenAI Chat Completions: a chat request dict, stream chunk payloads (the bytes
after ``data: `` of a ``chat.completion.chunk``) and a non-streaming ``chat.completion`` JSON body.
Everything here is sans-IO: bytes and values in, bytes and values out, one object per stream.

Inbound, a :class:`ClientDialect` (OpenAI chat, OpenAI Responses, Anthropic Messages)::

    parse_request(raw) -> canonical request dict       InvalidRequest naming the param on bad input
    encoder(model=...) -> ClientEncoder                 one per client stream
        feed(chunk) -> bytes                            one canonical payload -> framed SSE bytes
        done() -> bytes                                 after the canonical stream ended cleanly
        error(err) -> bytes                             one final error event in the dialect
    completion_to_client(canonical_json) -> bytes       a non-streaming answer
    error_body(err) -> bytes                            an error response body in the dialect

Upstream, an :class:`UpstreamType` (openai, azure, anthropic, gemini)::

    build_request(canonical, upstream_model, settings) -> UpstreamRequest(path, headers, body)
    decoder() -> UpstreamDecoder                        one per upstream stream
        feed(event) -> list[bytes]                      upstream SSE event -> canonical payloads;
                                                        raises ProviderError for the provider's
                                                        own error event
        finished                                        the provider's end marker was seen
        at_eof() -> list[bytes]                         the body ended: last payloads, or
                                                        UpstreamProtocolError if that is unclean
    completion_from_upstream(body) -> bytes             non-streaming answer -> chat.completion
    retryable(status, body) -> bool                     an error status worth another deployment

Rules every implementation keeps:

- Decoders never emit ``[DONE]``: ``finished`` says the stream ended, and the engine then asks the
  client's encoder for ``done()``. Usage always comes out as the canonical final chunk
  (``choices: []``, ``usage`` with ``prompt_tokens_details.cached_tokens``), so usage capture
  works on canonical chunks whatever the provider. A translated request always asks for usage
  (``stream_options.include_usage``); the engine must hand that chunk to a translating encoder,
  which needs it for its own final event, and strip it only for the chat dialect.
- Identity dialects (chat in, openai and azure out) never decode or re-encode a payload; the
  others decode and encode JSON once per event, which is the whole cost of translating.
- ``UpstreamRequest.path`` is relative to the deployment's ``base_url`` (the provider's versioned
  API root: ``https://api.anthropic.com/v1``, ``https://generativelanguage.googleapis.com/v1beta``,
  ``https://{resource}.openai.azure.com/openai``), and may carry a query string.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, ParamSpec, Protocol, TypeVar

import orjson

from gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamProtocolError
from gateway.sse import DONE, SSEEvent

JSONObject = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")
# What reading a JSON value of the wrong shape raises (orjson's decode error is a ValueError).
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, ValueError, IndexError)


def reading(
    error: Callable[[str], GatewayError], what: str
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn a shape error inside the decorated reader into ``error`` (a client or upstream error).

    The safety net behind the field-by-field checks: input of a shape nobody anticipated is
    refused as bad input, never a traceback.
    """

    def decorate(reader: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(reader)
        def read(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return reader(*args, **kwargs)
            except SHAPE_ERRORS as exc:
                raise error(f"{what} ({type(exc).__name__}: {exc}).") from exc

        return read

    return decorate


def bad_request(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`reading` for client input: a shape error is a 400."""
    return reading(InvalidRequest, what)


def bad_upstream(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`reading` for upstream input: a shape error is an upstream protocol error."""
    return reading(UpstreamProtocolError, what)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """What a request builder needs from a deployment (mapped from config by the engine)."""

    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None  # Azure's api-version, Anthropic's anthropic-version
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, sent as given


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to send upstream: a path under the deployment's base URL, headers, body."""

    path: str
    headers: dict[str, str]
    body: bytes


class ProviderError(UpstreamError):
    """The provider reported its own failure (an error event mid-stream or an error body).

    ``retryable`` says whether another deployment could succeed (overloaded, quota); ``kind`` is
    the provider's own error type and ``payload`` its own error event, kept so a client of the
    same dialect sees them unchanged.
    """

    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str = "api_error",
        retryable: bool = False,
        payload: bytes | None = None,
    ) -> None:
        super().__init__(message, code=kind)
        self.kind = kind
        self.retryable = retryable
        self.payload = payload


class ClientEncoder(Protocol):
    """Turns one canonical chunk stream into one client stream, in the client's dialect."""

    def feed(self, chunk: bytes) -> bytes: ...

    def done(self) -> bytes: ...

    def error(self, err: GatewayError) -> bytes: ...


class ClientDialect(Protocol):
    """An API clients call: what its requests mean and how its answers are written."""

    name: ClassVar[str]

    def parse_request(self, raw: bytes) -> JSONObject: ...

    def encoder(self, *, model: str) -> ClientEncoder: ...

    def completion_to_client(self, canonical: bytes) -> bytes: ...

    def error_body(self, err: GatewayError) -> bytes: ...


class UpstreamDecoder(Protocol):
    """Turns one provider stream into canonical chunk payloads."""

    finished: bool

    def feed(self, event: SSEEvent) -> list[bytes]: ...

    def at_eof(self) -> list[bytes]: ...


def decode_events(
    decoder: UpstreamDecoder, events: list[SSEEvent]
) -> tuple[list[SSEEvent], GatewayError | None]:
    """A provider's events as canonical chat chunks (its end marker as [DONE]), and its own
    error event (or garbage in its place) if one came."""
    out: list[SSEEvent] = []
    for event in events:
        try:
            payloads = decoder.feed(event)
        except GatewayError as exc:
            return out, exc
        out.extend(SSEEvent(payload) for payload in payloads)
        if decoder.finished:
            out.append(SSEEvent(DONE))
            break
    return out, None


class UpstreamType(Protocol):
    """An API a deployment speaks: how to ask it and how to read its answers."""

    name: ClassVar[str]

    def build_request(
        self, canonical: JSONObject, upstream_model: str, settings: UpstreamSettings
    ) -> UpstreamRequest: ...

    def decoder(self) -> UpstreamDecoder: ...

    def completion_from_upstream(self, body: bytes) -> bytes: ...

    def retryable(self, status: int, body: bytes) -> bool: ...


# -- canonical chunks ------------------------------------------------------------------------------


class ChunkWriter:
    """Writes canonical ``chat.completion.chunk`` payloads for one stream (a decoder's output)."""

    __slots__ = ("_head", "_text_head", "id", "model")

    def __init__(self, *, id: str, model: str, created: int | None = None) -> None:
        self.id = id
        self.model = model
        self._head: JSONObject = {
            "id": id,
            "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created,
            "model": model,
        }
        # Text deltas are most events: their constant part is encoded once per stream.
        self._text_head = orjson.dumps(self._head)[:-1] + b',"choices":[{"index":'

    def text(self, content: str, *, index: int = 0) -> bytes:
        """A text delta (the same bytes ``delta({"content": ...})`` gives, made cheaper)."""
        return (
            self._text_head
            + str(index).encode()
            + b',"delta":{"content":'
            + orjson.dumps(content)
            + b'},"logprobs":null,"finish_reason":null}]}'
        )

    def delta(self, delta: JSONObject, *, index: int = 0, finish: str | None = None) -> bytes:
        """One choice's delta (role, content or tool_calls), optionally with its finish reason."""
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return orjson.dumps({**self._head, "choices": [choice]})

    def tool_start(self, position: int, call_id: str, name: str, *, index: int = 0) -> bytes:
        """The first delta of a tool call: its id and name, no arguments yet."""
        call = {
            "index": position,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self.delta({"tool_calls": [call]}, index=index)

    def tool_arguments(self, position: int, fragment: str, *, index: int = 0) -> bytes:
        """A piece of a tool call's JSON arguments."""
        call = {"index": position, "function": {"arguments": fragment}}
        return self.delta({"tool_calls": [call]}, index=index)

    def usage(self, prompt: int, completion: int, cached: int = 0) -> bytes:
        """The final usage chunk."""
        return orjson.dumps(
            {**self._head, "choices": [], "usage": usage(prompt, completion, cached)}
        )


def usage(prompt: int, completion: int, cached: int = 0) -> JSONObject:
    """A canonical usage object."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def cached_tokens(usage: JSONObject) -> int:
    """The cached-prompt tokens of a canonical usage object (0 when not reported)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) else 0


def load_object(raw: bytes, what: str = "The request body") -> JSONObject:
    """Decode a JSON object or raise the InvalidRequest a client sees."""
    from gateway.errors import InvalidJSON

    if not raw.strip():
        raise InvalidJSON(f"{what} is empty; send a JSON object.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object.")
    return value


def require(body: JSONObject, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[key]``, which must be present and of ``kind``; InvalidRequest names the param."""
    if key not in body or body[key] is None:
        raise InvalidRequest(f"Missing required parameter: '{key}'.", param=key)
    return expect(body[key], kind, key, what)


def expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    """``value`` if it is a ``kind`` (bools are not numbers), else InvalidRequest naming it."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidRequest(f"'{param}' must be {what}.", param=param)
    if not isinstance(value, kind):
        raise InvalidRequest(f"'{param}' must be {what}.", param=param)
    return value


def json_arguments(arguments: Any) -> Any:
    """A tool call's arguments string as a JSON value ({} when empty, the string if not JSON)."""
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    if not arguments.strip():
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments


def text_of(content: Any) -> str:
    """The text of a chat message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
