"""What the mock answers a chat request with, decided before any byte is written.

Deterministic in the request, like the rest of the mock: text pieces from a seeded word list; a
JSON document when ``response_format`` asks for one; one tool call (arguments built from the
tool's JSON Schema) when tools are offered and the conversation does not end with a tool result;
``n`` choices; cut at ``max_tokens`` / ``max_completion_tokens`` (one piece is one token) with
``finish_reason: length``. A configured ``reply`` replaces all of it with its own text.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.mock.behaviour import DEFAULT_BEHAVIOUR, MockBehaviour, behaviour_for

VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while streams of tokens flow through the gateway "
    "to every patient reader who waits for words that arrive one by one like rain on a quiet "
    "roof and each small piece carries meaning forward until the answer is whole again"
).split()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call: its id, the function's name, its JSON arguments in streamed pieces."""

    id: str
    name: str
    pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class Choice:
    """One choice of the answer."""

    pieces: list[str]
    tool: ToolCall | None
    finish: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.tool.pieces) if self.tool else len(self.pieces)


def source_of(body: Mapping[str, Any]) -> Any:
    """What the answer is derived from: the messages, prompt or input."""
    return body.get("messages", body.get("prompt", body.get("input")))


def _rng(body: Mapping[str, Any], choice: int) -> random.Random:
    parts = [body.get("model"), source_of(body), body.get("seed")]
    if choice:
        parts.append(choice)  # choice 0 keeps the key every earlier answer was derived from
    digest = hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return random.Random(int.from_bytes(digest.digest(), "big"))


def words(body: Mapping[str, Any], chunks: int, chunk_size: int, choice: int = 0) -> list[str]:
    """The answer's text pieces, deterministic in (model, messages or prompt, seed, choice)."""
    rng = _rng(body, choice)
    pieces: list[str] = []
    for index in range(chunks):
        text = " ".join(rng.choices(VOCABULARY, k=chunk_size))
        pieces.append(text if index == 0 else " " + text)
    return pieces


def split(text: str, count: int) -> list[str]:
    """``text`` in ``count`` nearly equal pieces (fewer when it is shorter)."""
    count = max(1, min(count, len(text)))
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def value_for(schema: Any, rng: random.Random) -> Any:
    """A value that satisfies a simple JSON Schema (types, properties, enums, arrays)."""
    if not isinstance(schema, Mapping):
        return " ".join(rng.choices(VOCABULARY, k=2))
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: value_for(spec, rng) for name, spec in properties.items()}
    if kind == "array":
        return [value_for(schema.get("items"), rng)]
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return rng.randint(1, 1000) / 10
    if kind == "boolean":
        return True
    return " ".join(rng.choices(VOCABULARY, k=2))


def _tool_to_call(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function to call, or None when the mock should answer in text."""
    tools = [t for t in body.get("tools") or () if isinstance(t, Mapping) and t.get("function")]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    messages = body.get("messages") or ()
    if messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "tool":
        return None  # the tool answered: now the model speaks
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        named = [t["function"] for t in tools if t["function"].get("name") == wanted]
        if named:
            return dict(named[0])
    return dict(tools[0]["function"])


def _json_document(body: Mapping[str, Any], rng: random.Random) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return orjson.dumps(value_for(schema or {"type": "object"}, rng)).decode()
    if fmt.get("type") == "json_object":
        return orjson.dumps({"answer": " ".join(rng.choices(VOCABULARY, k=6))}).decode()
    return None


def plan(
    body: Mapping[str, Any], chunks: int, chunk_size: int, *, honour_limit: bool = True
) -> list[Choice]:
    """Every choice of the answer to a chat request (cut at max_tokens if ``honour_limit``)."""
    n = body.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) else 1
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    function = _tool_to_call(body)
    choices: list[Choice] = []
    for index in range(max(1, count)):
        if function is not None:
            rng = _rng(body, index)
            arguments = orjson.dumps(value_for(function.get("parameters"), rng)).decode()
            call_id = (
                "call_mock_"
                + hashlib.blake2b(orjson.dumps([source_of(body), index]), digest_size=6).hexdigest()
            )
            call = ToolCall(call_id, str(function.get("name")), split(arguments, chunks))
            choices.append(Choice([], call, "tool_calls"))
            continue
        document = _json_document(body, _rng(body, index))
        if document is not None:
            pieces = split(document, chunks)
        else:
            pieces = words(body, chunks, chunk_size, index)
        finish = "stop"
        if honour_limit and limit is not None and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
        choices.append(Choice(pieces, None, finish))
    return choices


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A whitespace word count of the prompt, messages or input: the mock's idea of tokens."""
    source = source_of(body)
    texts: list[str] = []
    if isinstance(source, str):
        texts.append(source)
    elif isinstance(source, list):
        for item in source:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, Mapping):
                content = item.get("content")
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    texts.extend(
                        p["text"]
                        for p in content
                        if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                    )
    return sum(len(text.split()) for text in texts)


def answer_words(body: Mapping[str, Any], behaviour: MockBehaviour) -> list[str]:
    """The answer's pieces, deterministic in (model, messages or prompt, seed)."""
    if behaviour.reply is not None:
        return _reply_pieces(behaviour)
    return words(body, behaviour.chunks, behaviour.chunk_size)


def _reply_pieces(behaviour: MockBehaviour) -> list[str]:
    """The configured reply cut into ``chunks`` pieces."""
    reply = behaviour.reply or ""
    size = max(1, math.ceil(len(reply) / behaviour.chunks))
    return [reply[i : i + size] for i in range(0, len(reply), size)]


def answer(body: Mapping[str, Any], behaviour: MockBehaviour) -> list[Choice]:
    """Every choice the mock answers a chat request with (text, JSON or a tool call)."""
    if behaviour.reply is not None:
        return [Choice(pieces=_reply_pieces(behaviour), tool=None, finish="stop")]
    return plan(
        body, behaviour.chunks, behaviour.chunk_size, honour_limit=behaviour.honour_max_tokens
    )


def expected_text(body: Mapping[str, Any], defaults: MockBehaviour | None = None) -> str:
    """The full text the mock answers ``body`` with (what a client should end up with)."""
    behaviour = behaviour_for(defaults or DEFAULT_BEHAVIOUR, body, {})
    if "messages" in body:
        return answer(body, behaviour)[0].text
    return "".join(answer_words(body, behaviour))
