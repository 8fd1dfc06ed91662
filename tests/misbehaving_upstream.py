"""An HTTP upstream of the test suite's own that breaks the rules on purpose, over real sockets.

Each request takes the next behaviour from a queue the test fills (then ``ok``): ``ok`` streams
a short, well-formed chat completion; ``reset`` sends 200 with event-stream headers and then
resets the connection; ``silent`` sends the headers and then nothing; ``garbage`` sends bytes that
are not SSE; ``redirect`` answers 307 (or 302) to ``redirect_to``; ``gzip`` answers a gzip body.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import socket
import struct

import orjson

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
)
WORDS = ["alpha", " beta", " gamma", " delta"]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def good_stream() -> bytes:
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    )
    body = b"".join(chunk(b"data: " + orjson.dumps(e) + b"\n\n") for e in events)
    return STREAM_HEAD + body + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class MisbehavingUpstream:
    """The server; ``port`` once started. ``seen`` counts requests, ``closed_by_peer`` counts
    connections the gateway closed while this server was still holding them open."""

    def __init__(self, redirect_to: str = "http://127.0.0.1:9/") -> None:
        self.plan: collections.deque[str] = collections.deque()
        self.seen: list[str] = []
        self.closed_by_peer = 0
        self.redirect_to = redirect_to
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                behaviour = self.plan.popleft() if self.plan else "ok"
                self.seen.append(behaviour)
                if not await self._answer(behaviour, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(
        self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is finished with."""
        if behaviour == "ok":
            writer.write(good_stream())
            await writer.drain()
            return True
        if behaviour == "reset":
            writer.write(STREAM_HEAD)
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if behaviour == "silent":
            writer.write(STREAM_HEAD)
            await writer.drain()
            if await reader.read(1) == b"":
                self.closed_by_peer += 1
            return False
        if behaviour == "garbage":
            writer.write(STREAM_HEAD + chunk(b"\x00\x01 this is not an event stream at all"))
            writer.write(b"zz\r\n")  # not a chunk size either
            await writer.drain()
            return False
        if behaviour in ("redirect", "redirect-302"):
            status = b"302 Found" if behaviour == "redirect-302" else b"307 Temporary Redirect"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nLocation: " + self.redirect_to.encode()
                + b"\r\nContent-Length: 0\r\n\r\n"
            )  # fmt: skip
            await writer.drain()
            return True
        if behaviour == "gzip":
            body = gzip.compress(b"data: " + b"x" * 1000 + b"\n\n" + b"data: [DONE]\n\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip"
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
            return True
        raise ValueError(behaviour)


class ConnectionCounter:
    """A listener that only counts who connects (where a redirect would have sent the prompt)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._count, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _count(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
