"""Anthropic Messages as an upstream type: canonical requests out, Messages streams back in.

The request maps system prompts to ``system``, tool results to ``tool_result`` blocks in a user
turn, images to ``image`` blocks, ``stop`` to ``stop_sequences``; ``max_tokens`` is required by
Anthropic, so a request without one gets ``DEFAULT_MAX_TOKENS``; ``n`` > 1 is refused (no such
thing in Messages). The stream's ``message_stop`` is its end marker; ``event: error`` (for
instance ``overloaded_error``) becomes a :class:`ProviderError`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import orjson

from gateway.dialects.base import (
    ChunkWriter,
    JSONObject,
    ProviderError,
    UpstreamRequest,
    UpstreamSettings,
    bad_request,
    bad_upstream,
    json_arguments,
    text_of,
)
from gateway.dialects.base import usage as canonical_usage
from gateway.errors import InvalidRequest, UpstreamProtocolError
from gateway.sse import SSEEvent

log = logging.getLogger(__name__)

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRYABLE_KINDS = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})
_MAPPED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stream", "stream_options", "stop", "user", "tools", "tool_choice",
        "parallel_tool_calls", "n",
    }
)  # fmt: skip


# -- request ---------------------------------------------------------------------------------------


@bad_request("The request could not be translated for this upstream")
def to_messages(canonical: JSONObject, model: str) -> JSONObject:
    """A canonical chat request as an Anthropic Messages request."""
    if (canonical.get("n") or 1) > 1:
        raise InvalidRequest("'n' greater than 1 is not supported by this model.", param="n")
    system: list[str] = []
    turns: list[JSONObject] = []
    for message in canonical.get("messages") or ():
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": text_of(message.get("content")),
            }
            _append(turns, "user", [result])
        else:
            _append(turns, "assistant" if role == "assistant" else "user", _blocks(message))
    limit = canonical.get("max_completion_tokens") or canonical.get("max_tokens")
    out: JSONObject = {"model": model, "messages": turns, "max_tokens": limit or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "stream"):
        if canonical.get(key) is not None:
            out[key] = canonical[key]
    stop = canonical.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(canonical.get("user"), str):
        out["metadata"] = {"user_id": canonical["user"]}
    tools = [_tool(t) for t in canonical.get("tools") or () if t.get("type") == "function"]
    if tools:
        out["tools"] = tools
    choice = _tool_choice(canonical.get("tool_choice"), canonical.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    dropped = sorted(canonical.keys() - _MAPPED)
    if dropped:
        log.debug("anthropic: dropped fields Messages has no equivalent for: %s", dropped)
    return out


def _append(turns: list[JSONObject], role: str, blocks: list[JSONObject]) -> None:
    """Add blocks as a turn; consecutive turns of one role merge (Messages alternates roles)."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _blocks(message: JSONObject) -> list[JSONObject]:
    content = message.get("content")
    blocks: list[JSONObject] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            if part.get("type") == "text":
                blocks.append({"type": "text", "text": part.get("text", "")})
            elif part.get("type") == "image_url":
                blocks.append(image_block(str((part.get("image_url") or {}).get("url", ""))))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json_arguments(function.get("arguments")),
            }
        )
    return blocks


def image_block(url: str) -> JSONObject:
    """An image block for a URL or a base64 ``data:`` URL."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool(tool: JSONObject) -> JSONObject:
    function = tool.get("function") or {}
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {}}
    if not out["input_schema"]:
        out["input_schema"] = {"type": "object", "properties": {}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> JSONObject | None:
    out: JSONObject | None
    if choice is None:
        out = None
    elif isinstance(choice, dict):
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        out = {"type": {"required": "any"}.get(choice, choice)}
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


# -- answers ---------------------------------------------------------------------------------------


def usage_counts(usage: JSONObject) -> tuple[int, int, int]:
    """(prompt, completion, cached) from an Anthropic usage object; prompt includes cache."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + created
    return prompt, int(usage.get("output_tokens") or 0), cached


def provider_error(data: Any) -> ProviderError:
    """An Anthropic error object as a ProviderError."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ProviderError("The upstream reported an unreadable error.")
    kind = str(error.get("type", "api_error"))
    message = str(error.get("message", kind))
    return ProviderError(message, kind=kind, retryable=kind in RETRYABLE_KINDS)


class AnthropicDecoder:
    """A Messages stream -> canonical chunks."""

    __slots__ = ("_blocks", "_calls", "_usage", "_writer", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._writer: ChunkWriter | None = None
        self._blocks: dict[int, int] = {}  # content block index -> tool call position
        self._calls = 0
        self._usage: JSONObject = {}

    @bad_upstream("The upstream sent an event the gateway could not read")
    def feed(self, event: SSEEvent) -> list[bytes]:
        data = orjson.loads(event.data)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "error" or event.event == b"error":
            raise provider_error(data)
        if kind == "message_start":
            message = data.get("message") or {}
            self._writer = ChunkWriter(id=str(message.get("id")), model=str(message.get("model")))
            self._usage = dict(message.get("usage") or {})
            return [self._writer.delta({"role": "assistant", "content": ""})]
        writer = self._writer
        if writer is None:
            if kind == "ping":
                return []
            raise UpstreamProtocolError("The Anthropic stream did not start with message_start.")
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._blocks[data.get("index", 0)] = position = self._calls
                self._calls += 1
                return [writer.tool_start(position, str(block.get("id")), str(block.get("name")))]
            if block.get("text"):
                return [writer.text(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [writer.text(str(delta.get("text", "")))]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                position = self._blocks.get(data.get("index", 0), 0)
                return [writer.tool_arguments(position, delta["partial_json"])]
            return []  # thinking and signature deltas have no chat equivalent
        if kind == "message_delta":
            self._usage.update(
                {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            )
            reason = (data.get("delta") or {}).get("stop_reason")
            return [writer.delta({}, finish=FINISH_REASONS.get(str(reason), "stop"))]
        if kind == "message_stop":
            self.finished = True
            return [writer.usage(*usage_counts(self._usage))]
        return []  # ping, content_block_stop

    def at_eof(self) -> list[bytes]:
        if not self.finished:
            raise UpstreamProtocolError("The Anthropic stream ended before message_stop.")
        return []


@bad_upstream("The upstream sent an answer the gateway could not read")
def completion_from_message(body: bytes) -> JSONObject:
    """An Anthropic ``message`` as a canonical chat completion."""
    message = orjson.loads(body)
    if not isinstance(message, dict) or message.get("type") == "error":
        raise provider_error(message)
    text = "".join(
        b.get("text", "") for b in message.get("content") or () if b.get("type") == "text"
    )
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input")).decode()},
        }
        for b in message.get("content") or ()
        if b.get("type") == "tool_use"
    ]
    reply: JSONObject = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    finish = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": canonical_usage(*usage_counts(message.get("usage") or {})),
    }


class AnthropicUpstream:
    """``type: anthropic`` deployments (base URL ``https://api.anthropic.com/v1``)."""

    name: ClassVar[str] = "anthropic"

    def build_request(
        self, canonical: JSONObject, upstream_model: str, settings: UpstreamSettings
    ) -> UpstreamRequest:
        headers = {"anthropic-version": settings.api_version or DEFAULT_VERSION}
        headers.update(settings.headers)
        if settings.api_key:
            headers["x-api-key"] = settings.api_key
        body = orjson.dumps(to_messages(canonical, upstream_model))
        return UpstreamRequest("/messages", headers, body)

    def decoder(self) -> AnthropicDecoder:
        return AnthropicDecoder()

    def completion_from_upstream(self, body: bytes) -> bytes:
        return orjson.dumps(completion_from_message(body))

    def retryable(self, status: int, body: bytes) -> bool:
        return status in RETRYABLE_STATUSES
