"""OpenAI request normalisation: bytes in, a validated request out. No I/O.

Only the fields the gateway relies on, or that commonly arrive mistyped, are checked; every other
field passes through to the upstream untouched, so new OpenAI parameters work without a release.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidJSON, InvalidRequest


class Endpoint(enum.Enum):
    """The OpenAI endpoints the gateway serves, with their upstream paths."""

    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"

    @property
    def streams(self) -> bool:
        """Whether the endpoint can answer with an SSE stream."""
        return self is not Endpoint.EMBEDDINGS


@dataclass(slots=True)
class ParsedRequest:
    """A request body that passed validation, with the fields the gateway acts on pulled out."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool

    def upstream_body(self, upstream_model: str) -> bytes:
        """The body sent upstream: the client's, with the upstream model name, and asking a
        stream for its usage chunk (stripped again for clients that did not ask for it)."""
        body = self.body
        if upstream_model != self.model:
            body = {**body, "model": upstream_model}
        if self.stream and not self.client_wants_usage:
            options = body.get("stream_options") or {}
            body = {**body, "stream_options": {**options, "include_usage": True}}
        return orjson.dumps(body)


# orjson parses up to 1,024 levels but encodes only up to 254: between the two a body would pass
# here and fail when it is re-encoded for the upstream or the cache key. Far above any real schema.
MAX_JSON_DEPTH = 128


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            below.extend(c for c in children if isinstance(c, dict | list))
        level = below
    return False


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def parse_request(raw: bytes, endpoint: Endpoint) -> ParsedRequest:
    """Validate a request body; raise InvalidJSON or InvalidRequest naming the offending field."""
    if not raw.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise InvalidJSON(
            f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels."
        )

    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")

    stream = _optional(body, "stream", _is_bool, "a boolean") or False
    if stream and not endpoint.streams:
        raise InvalidRequest("'stream' is not supported on this endpoint.", param="stream")
    stream_options = _optional(body, "stream_options", _is_object, "an object")
    wants_usage = False
    if stream_options is not None:
        include = _optional(
            stream_options, "include_usage", _is_bool, "a boolean", "stream_options."
        )
        wants_usage = bool(include)

    _CHECKS[endpoint](body)
    return ParsedRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=bool(stream),
        client_wants_usage=wants_usage,
    )


def _check_chat(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            allowed = ", ".join(sorted(_ROLES))
            raise InvalidRequest(
                f"'{param}.role' must be one of: {allowed}.", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"'{param}.content' must be a string or an array of content parts.",
                param=f"{param}.content",
            )
    _check_sampling(body)
    _optional(body, "tools", _is_list, "an array")
    _optional(body, "response_format", _is_object, "an object")
    _optional(body, "max_completion_tokens", _is_positive_int, "a positive integer")


def _check_completions(body: Mapping[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(prompt, str | list):
        raise InvalidRequest("'prompt' must be a string or an array.", param="prompt")
    _check_sampling(body)


def _check_embeddings(body: Mapping[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
    _optional(body, "dimensions", _is_positive_int, "a positive integer")


def _check_sampling(body: Mapping[str, Any]) -> None:
    _optional(body, "temperature", _in_range(0, 2), "a number between 0 and 2")
    _optional(body, "top_p", _in_range(0, 1), "a number between 0 and 1")
    _optional(body, "presence_penalty", _in_range(-2, 2), "a number between -2 and 2")
    _optional(body, "frequency_penalty", _in_range(-2, 2), "a number between -2 and 2")
    _optional(body, "max_tokens", _is_positive_int, "a positive integer")
    _optional(body, "n", _is_positive_int, "a positive integer")
    _optional(body, "seed", _is_int, "an integer")
    _optional(body, "user", _is_str, "a string")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")


_CHECKS: dict[Endpoint, Callable[[Mapping[str, Any]], None]] = {
    Endpoint.CHAT: _check_chat,
    Endpoint.COMPLETIONS: _check_completions,
    Endpoint.EMBEDDINGS: _check_embeddings,
}


def _optional(
    body: Mapping[str, Any],
    name: str,
    valid: Callable[[Any], bool],
    expected: str,
    prefix: str = "",
) -> Any:
    value = body.get(name)
    if value is not None and not valid(value):
        param = f"{prefix}{name}"
        raise InvalidRequest(
            f"Invalid type for '{param}': expected {expected}, got {_type_name(value)}.",
            param=param,
        )
    return value


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
        )

    return check


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return names.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)


# -- usage accounting -----------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Tokens of one request; ``exact`` when the upstream reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    exact: bool = False
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_USAGE_MARK = b'"usage":{'
_CONTENT_MARKS = (b'"content":"', b'"text":"', b'"arguments":"')


def usage_in_event(data: bytes) -> tuple[Usage | None, bool]:
    """The usage an event carries (None for almost every event) and whether it is usage-only.

    A bytes search first, so the JSON of an ordinary content event is never parsed.
    """
    if _USAGE_MARK not in data:
        return None, False
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    usage = _usage_object(event)
    if usage is None:
        return None, False
    return usage, isinstance(event, dict) and event.get("choices") == []


def carries_content(data: bytes) -> bool:
    """Whether a stream event delivers generated text (one streamed chunk is about one token).

    Per event on the hot path: one ``find`` per mark, and a look at the byte after it.
    """
    for mark in _CONTENT_MARKS:
        at = data.find(mark)
        if at >= 0 and data[at + len(mark) : at + len(mark) + 1] != b'"':
            return True
    return False


def usage_in_body(body: bytes) -> Usage | None:
    """The usage of a non-streaming answer."""
    try:
        return _usage_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def _usage_object(answer: Any) -> Usage | None:
    if not isinstance(answer, dict) or not isinstance(answer.get("usage"), dict):
        return None
    usage = answer["usage"]
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not _is_int(prompt) or not _is_int(completion):
        return None
    details = usage.get("prompt_tokens_details")
    cached: Any = details.get("cached_tokens") if isinstance(details, dict) else None
    cached_tokens = int(cached) if _is_int(cached) else 0
    return Usage(prompt, completion, exact=True, cached_tokens=cached_tokens)


def estimate_answer_tokens(body: bytes) -> int:
    """The completion tokens of a non-streaming answer that reported no usage: about four
    characters a token of its text (message content, tool call arguments, completion text)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    choices = answer.get("choices") if isinstance(answer, dict) else None
    chars = 0
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        for text in (message.get("content"), choice.get("text")):
            chars += len(text) if isinstance(text, str) else 0
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            chars += len(arguments) if isinstance(arguments, str) else 0
    return (chars + 3) // 4


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About four characters a token: the estimate used when the upstream reported nothing."""
    source = body.get("messages", body.get("prompt", body.get("input", "")))
    return max(1, len(orjson.dumps(source)) // 4)
