"""The test suite's one fake upstream that breaks the rules on purpose, over real sockets.

A raw asyncio server, not a web framework, so that it can send what no framework would: a reset
after the headers, a chunk size that is not one, a gzip body nobody asked for. Each request plays
one behaviour of ``BEHAVIOURS``: the next one a test queued in ``plan``, else the one the request's
model names (so a gateway passing model names through reaches every one), else ``ok``.

    ok                   a short, well-formed chat completion: SSE when asked to stream, else JSON
    reset                200 with event-stream headers, then the connection is reset
    silent               the headers, then nothing (``closed_by_peer`` counts the hang-ups)
    garbage              bytes that are not SSE, then not even a chunk size
    redirect             a 307 to ``redirect_to`` (the stream engine must not follow it)
    redirect-302         the same as a 302
    gzip                 a gzip-compressed event stream, which the gateway did not ask for
    echo-401, echo-403   the status, with a body echoing the Authorization header and the host
    echo-400             a 400 whose OpenAI-shaped error echoes the key, the host and all headers
    echo-500-text        a text/plain 500 that dumps the request headers
    echo-stream          one content event, then an error event that echoes the key (no [DONE])
    reset-before-answer  the connection is reset before any answer
    reset-mid-stream     one content event, then the connection is reset

``echo-stream`` and ``reset-mid-stream`` answer a request that does not stream as ``ok`` does.
``seen`` lists the behaviours played; ``GET /_hostile/seen`` returns the Authorization headers
received, so a test can show a secret really went out (and would have come back unredacted).

In the test's process: ``server = HostileUpstream(); await server.start()``. As a process of its
own (the ``hostile_upstream`` fixture): ``python -m tests.hostile_upstream --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import http
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
WORDS = ["alpha", " beta", " gamma", " delta"]
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass
class Request:
    """One request as read off the socket."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # as sent, names in their own case
    body: dict[str, Any]

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def event(data: dict[str, Any]) -> bytes:
    """One SSE event, in its own chunk."""
    return chunk(b"data: " + orjson.dumps(data) + b"\n\n")


def completion_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


def good_stream() -> bytes:
    """The whole answer of ``ok`` when streaming: role, four words, stop, usage, [DONE]."""
    events = [completion_chunk({"role": "assistant", "content": ""})]
    events += [completion_chunk({"content": word}) for word in WORDS]
    events.append(completion_chunk({}, "stop"))
    events.append({"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    body = b"".join(event(e) for e in events)
    return STREAM_HEAD + body + chunk(b"data: [DONE]\n\n") + LAST_CHUNK


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def echo(request: Request) -> dict[str, Any]:
    """An OpenAI-shaped error that repeats the credentials and headers it was sent."""
    return {
        "error": {
            "message": f"Incorrect API key provided: {request.header('Authorization')} "
            f"(host {request.header('Host')})",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        },
        "request_headers": dict(request.headers),
    }


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HostileUpstream:
    """The server; ``port`` and ``url`` once started. ``seen`` lists the behaviours played,
    ``authorizations`` the Authorization headers received, ``closed_by_peer`` the connections the
    gateway closed while this server was still holding them open."""

    def __init__(
        self, *, port: int = 0, redirect_to: str = "http://127.0.0.1:9/v1/chat/completions"
    ) -> None:
        self.plan: collections.deque[str] = collections.deque()
        self.seen: list[str] = []
        self.authorizations: list[str] = []
        self.closed_by_peer = 0
        self.redirect_to = redirect_to
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._answer(await read_request(reader), reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is finished with."""
        if request.method == "GET" and request.path == "/_hostile/seen":
            writer.write(response(200, orjson.dumps(self.authorizations)))
        elif request.method == "POST" and request.path in COMPLETION_PATHS:
            self.authorizations.append(request.header("Authorization"))
            model = str(request.body.get("model", ""))
            name = self.plan.popleft() if self.plan else model if model in BEHAVIOURS else "ok"
            self.seen.append(name)
            if not await BEHAVIOURS[name](self, request, reader, writer):
                return False
        else:
            writer.write(response(404, b"404: Not Found", "text/plain"))
        await writer.drain()
        return True


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Read one request: the head, then a Content-Length body parsed as JSON when it is JSON."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, target, _ = head[0].split(" ", 2)
    headers = [
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:] if line)
    ]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    raw = await reader.readexactly(length)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {}
    return Request(method, target.split("?", 1)[0], headers, body if isinstance(body, dict) else {})


Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Behaviour = Callable[[HostileUpstream, Request, Reader, Writer], Awaitable[bool]]


async def ok(up: HostileUpstream, request: Request, reader: Reader, writer: Writer) -> bool:
    if request.stream:
        writer.write(good_stream())
        return True
    message = {"role": "assistant", "content": "".join(WORDS)}
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": request.body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    writer.write(response(200, orjson.dumps(body)))
    return True


async def reset_after_head(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    writer.write(STREAM_HEAD)
    await writer.drain()
    reset(writer)
    return False


async def silent(up: HostileUpstream, request: Request, reader: Reader, writer: Writer) -> bool:
    writer.write(STREAM_HEAD)
    await writer.drain()
    if await reader.read(1) == b"":
        up.closed_by_peer += 1
    return False


async def garbage(up: HostileUpstream, request: Request, reader: Reader, writer: Writer) -> bool:
    writer.write(STREAM_HEAD + chunk(b"\x00\x01 this is not an event stream at all"))
    writer.write(b"zz\r\n")  # not a chunk size either
    await writer.drain()
    return False


def redirect(status: int) -> Behaviour:
    async def behaviour(
        up: HostileUpstream, request: Request, reader: Reader, writer: Writer
    ) -> bool:
        phrase = http.HTTPStatus(status).phrase
        writer.write(
            f"HTTP/1.1 {status} {phrase}\r\nLocation: {up.redirect_to}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        return True

    return behaviour


async def gzipped(up: HostileUpstream, request: Request, reader: Reader, writer: Writer) -> bool:
    body = gzip.compress(b"data: " + b"x" * 1000 + b"\n\n" + b"data: [DONE]\n\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip"
        b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return True


async def echo_status(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    status = int(str(request.body["model"])[-3:])
    writer.write(response(status, orjson.dumps(echo(request))))
    return True


async def echo_500_text(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    dump = "\n".join(f"{k}: {v}" for k, v in request.headers)
    body = f"internal error while handling:\n{dump}".encode()
    writer.write(response(500, body, "text/plain; charset=utf-8"))
    return True


async def echo_stream(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    if not request.stream:
        return await ok(up, request, reader, writer)
    content = event(completion_chunk({"content": "hi"}))
    writer.write(STREAM_HEAD + content + event(echo(request)) + LAST_CHUNK)
    return True


async def reset_before_answer(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    reset(writer)
    return False


async def reset_mid_stream(
    up: HostileUpstream, request: Request, reader: Reader, writer: Writer
) -> bool:
    if not request.stream:
        return await ok(up, request, reader, writer)
    writer.write(STREAM_HEAD + event(completion_chunk({"content": "hi"})))
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)
    return False


BEHAVIOURS: dict[str, Behaviour] = {
    "ok": ok,
    "reset": reset_after_head,
    "silent": silent,
    "garbage": garbage,
    "redirect": redirect(307),
    "redirect-302": redirect(302),
    "gzip": gzipped,
    "echo-401": echo_status,
    "echo-403": echo_status,
    "echo-400": echo_status,
    "echo-500-text": echo_500_text,
    "echo-stream": echo_stream,
    "reset-before-answer": reset_before_answer,
    "reset-mid-stream": reset_mid_stream,
}


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


async def serve(port: int) -> None:
    """Serve on ``port`` until SIGTERM or SIGINT."""
    server = HostileUpstream(port=port)
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
