"""A cached answer, and the conversions that let one entry serve both shapes.

A streamed answer is kept as the upstream's SSE bytes (with its usage chunk) plus the time each
chunk arrived, so a hit can be replayed exactly, at once or paced. A non-streaming answer is kept as
its JSON body. A recorded stream answers a non-streaming request as one assembled completion, and a
cached completion answers a streaming request as a well-formed chunk sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.sse import DONE, DONE_EVENT, SSEParser

FORMAT = 1


@dataclass(slots=True)
class CacheEntry:
    """One cached answer."""

    kind: str  # "stream" | "json"
    body: bytes  # SSE bytes of the whole stream, or the JSON body
    marks: list[tuple[int, float]] = field(default_factory=list)  # (chunk end, seconds from start)
    created: float = field(default_factory=time.time)
    deployment: str | None = None

    @property
    def size(self) -> int:
        return len(self.body) + 16 * len(self.marks)

    def age(self) -> int:
        return max(0, int(time.time() - self.created))

    def chunks(self) -> tuple[list[bytes], list[float]]:
        """The recorded chunks and their offsets (one chunk at 0 s for a JSON body)."""
        if not self.marks:
            return [self.body], [0.0]
        chunks, offsets, start = [], [], 0
        for end, offset in self.marks:
            chunks.append(self.body[start:end])
            offsets.append(offset)
            start = end
        return chunks, offsets

    def dumps(self) -> bytes:
        """For Redis: one JSON document (the body is whole, so it is valid UTF-8)."""
        return orjson.dumps(
            {
                "v": FORMAT,
                "kind": self.kind,
                "body": self.body.decode(),
                "marks": self.marks,
                "created": self.created,
                "deployment": self.deployment,
            }
        )

    @classmethod
    def loads(cls, raw: str | bytes) -> CacheEntry | None:
        """An entry, or None for anything unreadable (another version, a damaged value)."""
        try:
            data = orjson.loads(raw)
            if data.get("v") != FORMAT:
                return None
            return cls(
                kind=data["kind"],
                body=data["body"].encode(),
                marks=[(int(end), float(at)) for end, at in data["marks"]],
                created=float(data["created"]),
                deployment=data.get("deployment"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def stream_is_complete(body: bytes) -> bool:
    """Whether recorded SSE bytes end with [DONE] and carry no error event."""
    return body.rstrip().endswith(b"data: [DONE]") and b'data: {"error"' not in body


def assemble_completion(sse: bytes) -> bytes:
    """The JSON completion equivalent to a recorded chat or text completion stream."""
    events = [e.data for e in SSEParser().feed(sse) if e.data != DONE]
    chunks = [orjson.loads(data) for data in events if data.startswith(b"{")]
    if not chunks:
        raise ValueError("no chunks recorded")
    first = chunks[0]
    chat = first.get("object") == "chat.completion.chunk"
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            into = choices.setdefault(index, _empty_choice(index, chat))
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
            if chat:
                _merge_delta(into["message"], choice.get("delta") or {})
            else:
                into["text"] += choice.get("text") or ""
    answer: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if first.get("system_fingerprint") is not None:
        answer["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        answer["usage"] = usage
    return orjson.dumps(answer)


def _empty_choice(index: int, chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": None},
            "logprobs": None,
            "finish_reason": None,
        }
    return {"index": index, "text": "", "logprobs": None, "finish_reason": None}


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    if delta.get("content") is not None:
        message["content"] = (message.get("content") or "") + delta["content"]
    if delta.get("refusal") is not None:
        message["refusal"] = (message.get("refusal") or "") + delta["refusal"]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        index = call.get("index", len(calls))
        while len(calls) <= index:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        into = calls[index]
        if call.get("id"):
            into["id"] = call["id"]
        if call.get("type"):
            into["type"] = call["type"]
        function = call.get("function") or {}
        into["function"]["name"] += function.get("name") or ""
        into["function"]["arguments"] += function.get("arguments") or ""


def completion_to_stream(body: bytes) -> bytes:
    """A well-formed SSE chunk sequence carrying a cached JSON completion, with its usage."""
    answer = orjson.loads(body)
    chat = answer.get("object") == "chat.completion"
    base = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer.get("created"),
        "model": answer.get("model"),
    }
    events: list[dict[str, Any]] = []
    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
            events.append({**base, "choices": [_chunk_choice(index, delta)]})
            if message.get("content"):
                content = {"content": message["content"]}
                events.append({**base, "choices": [_chunk_choice(index, content)]})
            if message.get("tool_calls"):
                calls = [{"index": n, **call} for n, call in enumerate(message["tool_calls"])]
                tools = {"tool_calls": calls}
                events.append({**base, "choices": [_chunk_choice(index, tools)]})
            final = _chunk_choice(index, {}, choice.get("finish_reason"))
        else:
            text = {"index": index, "text": choice.get("text", ""), "finish_reason": None}
            events.append({**base, "choices": [text]})
            final = {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
        events.append({**base, "choices": [final]})
    if answer.get("usage") is not None:
        events.append({**base, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + DONE_EVENT


def _chunk_choice(
    index: int, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
