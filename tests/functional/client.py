"""A small raw SSE client for the functional tests: it sees the exact bytes the gateway sent.

It parses them with the suite's own parser (tests/event_stream.py), never with gateway.sse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.event_stream import EventStreamParser


def chat_body(model: str = "demo", *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    """A minimal chat completion request."""
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "tell me something"}],
        **extra,
    }


@dataclass
class StreamRead:
    """What a client received from one streamed response."""

    status: int
    headers: dict[str, str]
    raw: bytes = b""
    data: list[bytes] = field(default_factory=list)
    comments: int = 0

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == b"[DONE]"

    def json_events(self) -> list[dict[str, Any]]:
        return [orjson.loads(d) for d in self.data if d != b"[DONE]"]

    def text(self) -> str:
        pieces = []
        for event in self.json_events():
            for choice in event.get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
        return "".join(pieces)


async def read_stream(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> StreamRead:
    """POST and read the whole response, parsing SSE from the raw bytes."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers or {}) as response,
    ):
        parser = EventStreamParser()
        result = StreamRead(response.status, dict(response.headers))
        try:
            async for chunk in response.content.iter_any():
                result.raw += chunk
                result.data.extend(event.data for event in parser.feed(chunk))
        except aiohttp.ClientPayloadError:
            pass
        result.data.extend(event.data for event in parser.end())
        result.comments = parser.comments
        return result
