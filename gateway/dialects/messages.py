"""Anthropic Messages as a client dialect: ``POST /v1/messages`` in front of any upstream.

A Messages request becomes a canonical chat request (system prompt first, tool results as tool
messages, images as ``image_url`` parts); the canonical stream goes out as Messages events
(``message_start``, ``content_block_start/delta/stop``, ``message_delta`` with the stop reason and
usage, ``message_stop``), each with its ``event:`` line, which the Anthropic SDK requires.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson

from gateway.dialects import canonical as c
from gateway.dialects.base import (
    JSONObject,
    bad_request,
    bad_upstream,
    expect,
    json_arguments,
    load_object,
    require,
)
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
ERROR_KINDS = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
    }
)
_MAPPED = frozenset(
    {
        "model", "max_tokens", "messages", "system", "temperature", "top_p", "stop_sequences",
        "stream", "metadata", "tools", "tool_choice",
    }
)  # fmt: skip


_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def event(name: str, data: JSONObject) -> bytes:
    """One Messages SSE event, with the ``event:`` line the Anthropic SDK dispatches on."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_object(err: GatewayError) -> JSONObject:
    """An Anthropic error object for a gateway error."""
    kind = getattr(err, "kind", None)
    if kind not in ERROR_KINDS:
        kind = "api_error"
        for cls, name in _ERROR_TYPES.items():
            if isinstance(err, cls):
                kind = name
                break
    return {"type": "error", "error": {"type": kind, "message": err.message}}


_ERROR_TYPES: dict[type[GatewayError], str] = {
    NotFound: "not_found_error",
    InvalidRequest: "invalid_request_error",
    AuthenticationError: "authentication_error",
    PermissionDenied: "permission_error",
    RateLimited: "rate_limit_error",
    ServiceUnavailable: "overloaded_error",
}


# -- request ---------------------------------------------------------------------------------------


@bad_request("The request could not be read")
def to_canonical(body: JSONObject) -> JSONObject:
    """A validated Messages request as a canonical chat request."""
    model = require(body, "model", str, "a string")
    max_tokens = require(body, "max_tokens", int, "an integer")
    if max_tokens < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    raw_messages = require(body, "messages", list, "an array")
    messages: list[JSONObject] = []
    system = body.get("system")
    if system is not None:
        text = system if isinstance(system, str) else _text_blocks(system, "system")
        messages.append({"role": "system", "content": text})
    for index, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{index}]"))
    out: JSONObject = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = expect(body[key], (int, float), key, "a number")
    if body.get("stop_sequences") is not None:
        out["stop"] = expect(body["stop_sequences"], list, "stop_sequences", "an array")
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("tools"):
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        _tool_choice(expect(body["tool_choice"], dict, "tool_choice", "an object"), out)
    dropped = sorted(body.keys() - _MAPPED)
    if dropped:
        log.debug("messages: dropped fields with no chat equivalent: %s", dropped)
    return out


def _text_blocks(blocks: Any, param: str) -> str:
    expect(blocks, list, param, "a string or an array of text blocks")
    return "".join(b.get("text", "") for b in blocks if isinstance(b, dict))


def _message(message: Any, param: str) -> list[JSONObject]:
    expect(message, dict, param, "an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(
            f"'{param}.role' must be 'user' or 'assistant'.", param=f"{param}.role"
        )
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    expect(content, list, f"{param}.content", "a string or an array of content blocks")
    parts: list[JSONObject] = []
    calls: list[JSONObject] = []
    results: list[JSONObject] = []
    for index, block in enumerate(content):
        where = f"{param}.content[{index}]"
        expect(block, dict, where, "an object")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": expect(block.get("text"), str, where, "text")})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind == "tool_result":
            result = block.get("content")
            text = result if isinstance(result, str) else _text_blocks(result or [], where)
            results.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise InvalidRequest(f"'{where}.type' {kind!r} is not supported.", param=where)
    out: list[JSONObject] = list(results)
    if parts or calls:
        text_only = all(p["type"] == "text" for p in parts)
        body: Any = "".join(p["text"] for p in parts) if text_only else parts
        entry: JSONObject = {"role": role, "content": body if parts else None}
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    return out


def _image(block: JSONObject, where: str) -> JSONObject:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise InvalidRequest(f"'{where}.source' must be base64 or url.", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool(tool: Any, param: str) -> JSONObject:
    expect(tool, dict, param, "an object")
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(f"'{param}': server tools are not supported.", param=param)
    function = {
        "name": expect(tool.get("name"), str, f"{param}.name", "a string"),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: JSONObject, out: JSONObject) -> None:
    kind = choice.get("type")
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif mapped is not None:
        out["tool_choice"] = mapped
    else:
        raise InvalidRequest(
            "'tool_choice.type' must be auto, any, tool or none.", param="tool_choice"
        )
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


# -- answers ---------------------------------------------------------------------------------------


class MessagesEncoder:
    """Canonical chunks -> Messages events, one content block open at a time."""

    __slots__ = ("_block", "_blocks", "_id", "_model", "_started", "_stop", "_tools", "_usage")

    def __init__(self, *, model: str, id: str | None = None) -> None:
        self._model = model
        self._id = id
        self._started = False
        self._block: tuple[str, int] | None = None  # the open block: ("text", 0) or ("tool", pos)
        self._blocks = 0  # blocks opened so far
        self._tools: set[int] = set()
        self._stop = "end_turn"
        self._usage = c.Usage(0, 0, 0)

    @bad_upstream("The upstream sent a chunk the gateway could not read")
    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self._start(chunk))
        for happening in c.read_chunk(chunk):
            if isinstance(happening, c.Failure):
                out.append(event("error", {"type": "error", "error": _failure(happening)}))
            elif getattr(happening, "choice", 0) != 0:
                continue  # Messages has one answer; other choices are not asked for
            elif isinstance(happening, c.Text):
                out.append(self._open("text", 0, {"type": "text", "text": ""}))
                out.append(
                    _TEXT_DELTA
                    + str(self._blocks - 1).encode()
                    + b',"delta":{"type":"text_delta","text":'
                    + orjson.dumps(happening.text)
                    + b"}}\n\n"
                )
            elif isinstance(happening, c.ToolStart):
                block = {"type": "tool_use", "id": happening.call_id, "name": happening.name}
                out.append(self._open("tool", happening.position, {**block, "input": {}}))
            elif isinstance(happening, c.ToolArguments):
                delta = {"type": "input_json_delta", "partial_json": happening.fragment}
                out.append(self._delta(delta))
            elif isinstance(happening, c.Finish):
                self._stop = STOP_REASONS.get(happening.reason, "end_turn")
            elif isinstance(happening, c.Usage):
                self._usage = happening
        return b"".join(out)

    def _start(self, chunk: bytes) -> bytes:
        self._started = True
        if self._id is None:
            head = orjson.loads(chunk)
            self._id = "msg_" + str(head.get("id", "gateway") if isinstance(head, dict) else "")
        message: JSONObject = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )

    def _open(self, kind: str, position: int, block: JSONObject) -> bytes:
        if self._block == (kind, position):
            return b""
        closing = self._close()
        self._block = (kind, position)
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._blocks - 1, "content_block": block}
        return closing + event("content_block_start", start)

    def _delta(self, delta: JSONObject) -> bytes:
        body = {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta}
        return event("content_block_delta", body)

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return event(
            "content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1}
        )

    def done(self) -> bytes:
        head = b"" if self._started else self._start(b"{}")
        usage = self._usage
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": {
                "input_tokens": usage.prompt - usage.cached,
                "output_tokens": usage.completion,
                "cache_read_input_tokens": usage.cached,
                "cache_creation_input_tokens": 0,
            },
        }
        stop = event("message_stop", {"type": "message_stop"})
        return head + self._close() + event("message_delta", delta) + stop

    def error(self, err: GatewayError) -> bytes:
        return event("error", error_object(err))


def _failure(failure: c.Failure) -> JSONObject:
    kind = failure.kind if failure.kind in ERROR_KINDS else "api_error"
    return {"type": kind, "message": failure.message}


def message_from_completion(canonical: bytes) -> JSONObject:
    """A canonical chat completion as a Messages ``message`` object."""
    answer = c.read_completion(canonical)
    content: list[JSONObject] = []
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json_arguments(function.get("arguments")),
            }
        )
    usage = answer.usage
    return {
        "id": "msg_" + answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": STOP_REASONS.get(answer.finish, "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.prompt - usage.cached,
            "output_tokens": usage.completion,
            "cache_read_input_tokens": usage.cached,
            "cache_creation_input_tokens": 0,
        },
    }


class MessagesDialect:
    """``POST /v1/messages``."""

    name: ClassVar[str] = "messages"

    def parse_request(self, raw: bytes) -> JSONObject:
        return to_canonical(load_object(raw))

    def encoder(self, *, model: str) -> MessagesEncoder:
        return MessagesEncoder(model=model)

    def completion_to_client(self, canonical: bytes) -> bytes:
        return orjson.dumps(message_from_completion(canonical))

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))

    def count_tokens(self, raw: bytes) -> bytes:
        """``POST /v1/messages/count_tokens``: the gateway's estimate of the prompt's tokens."""
        from gateway.openai import estimate_prompt_tokens

        body = load_object(raw)
        canonical = to_canonical({"max_tokens": 1, **body})
        for tool in canonical.get("tools", ()):
            canonical["messages"].append({"role": "system", "content": orjson.dumps(tool).decode()})
        return orjson.dumps({"input_tokens": estimate_prompt_tokens(canonical)})
