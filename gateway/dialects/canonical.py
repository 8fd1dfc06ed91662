"""Reading canonical chat chunks back as a few kinds of happening, for the translating encoders.

An encoder for another dialect does not care about chunk layout, only about what happened: text
arrived, a tool call started or grew, a choice finished, usage was reported, the upstream failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from gateway.dialects.base import JSONObject, bad_upstream, cached_tokens


class Text(NamedTuple):
    """Generated text for one choice."""

    choice: int
    text: str


class ToolStart(NamedTuple):
    """A tool call began (``position`` is its index among the choice's tool calls)."""

    choice: int
    position: int
    call_id: str
    name: str


class ToolArguments(NamedTuple):
    """More of a tool call's JSON arguments."""

    choice: int
    position: int
    fragment: str


class Finish(NamedTuple):
    """A choice finished with a canonical finish reason."""

    choice: int
    reason: str


class Usage(NamedTuple):
    """The stream's token counts."""

    prompt: int
    completion: int
    cached: int


class Failure(NamedTuple):
    """The canonical stream carried an error object (an OpenAI-style upstream failed)."""

    message: str
    kind: str


Happening = Text | ToolStart | ToolArguments | Finish | Usage | Failure


def read_chunk(payload: bytes) -> list[Happening]:
    """What one canonical chunk payload says, in order (encoders guard it with bad_upstream)."""
    chunk = orjson.loads(payload)
    if not isinstance(chunk, dict):
        return []
    error = chunk.get("error")
    if isinstance(error, dict):
        return [Failure(str(error.get("message", "upstream error")), str(error.get("type")))]
    found: list[Happening] = []
    for choice in chunk.get("choices") or ():
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            found.append(Text(index, content))
        for call in delta.get("tool_calls") or ():
            position = call.get("index", 0)
            function = call.get("function") or {}
            if call.get("id") or function.get("name"):
                found.append(
                    ToolStart(index, position, str(call.get("id") or ""), str(function.get("name")))
                )
            if function.get("arguments"):
                found.append(ToolArguments(index, position, function["arguments"]))
        if choice.get("finish_reason"):
            found.append(Finish(index, choice["finish_reason"]))
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        found.append(read_usage(usage))
    return found


def read_usage(usage: JSONObject) -> Usage:
    """A canonical usage object as counts."""
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        cached_tokens(usage),
    )


@dataclass(slots=True)
class Answer:
    """A non-streaming chat completion's first choice, read for another dialect."""

    id: str
    model: str
    created: int
    text: str
    tool_calls: list[JSONObject]
    finish: str
    usage: Usage


@bad_upstream("The upstream sent an answer the gateway could not read")
def read_completion(body: bytes) -> Answer:
    """The first choice and usage of a canonical ``chat.completion`` body."""
    completion: Any = orjson.loads(body)
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = message.get("content")
    return Answer(
        id=str(completion.get("id", "")),
        model=str(completion.get("model", "")),
        created=int(completion.get("created") or 0),
        text=content if isinstance(content, str) else "",
        tool_calls=list(message.get("tool_calls") or ()),
        finish=choice.get("finish_reason") or "stop",
        usage=read_usage(completion.get("usage") or {}),
    )
