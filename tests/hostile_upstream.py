"""A hostile OpenAI-compatible upstream of the test suite's own, run as a real process.

The request's model name picks the misbehaviour, so a gateway passing model names through reaches
every one of them:

    echo-401, echo-403   the status, with a body echoing the Authorization header and the host
    echo-400             a 400 whose OpenAI-shaped error echoes the key, the host and all headers
    echo-500-text        a text/plain 500 that dumps the request headers
    echo-stream          one content event, then an error event that echoes the key
    reset                the connection is cut before any answer
    reset-mid-stream     one content event, then the connection is cut
    redirect             a 307 to another host (the stream engine must not follow it)
    anything else        a small, well-behaved completion (JSON or SSE)

``GET /_hostile/seen`` returns the Authorization headers received, so a test can show the secret
really went out (and would have come back without redaction).

Run: ``python -m tests.hostile_upstream --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiohttp import web

SEEN = web.AppKey("seen", list[str])


def _echo(request: web.Request) -> dict[str, Any]:
    authorization = request.headers.get("Authorization", "")
    return {
        "error": {
            "message": f"Incorrect API key provided: {authorization} (host {request.host})",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        },
        "request_headers": {str(k): v for k, v in request.headers.items()},
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


CONTENT = {
    "id": "x",
    "object": "chat.completion.chunk",
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
}


async def _stream(request: web.Request, body: dict[str, Any], ending: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_event(CONTENT))
    if ending == "error":
        await response.write(_event(_echo(request)))
        await response.write_eof()
    elif ending == "reset":
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
    else:
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions (and /v1/completions, /v1/embeddings): per the model name."""
    request.app[SEEN].append(request.headers.get("Authorization", ""))
    body = orjson.loads(await request.read())
    model = body.get("model", "")
    if model in ("echo-401", "echo-403", "echo-400"):
        return web.json_response(_echo(request), status=int(model[-3:]))
    if model == "echo-500-text":
        dump = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return web.Response(status=500, text=f"internal error while handling:\n{dump}")
    if model == "reset":
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)
    if model == "redirect":
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/chat/completions")
    if body.get("stream"):
        ending = {"echo-stream": "error", "reset-mid-stream": "reset"}.get(model, "done")
        return await _stream(request, body, ending)
    return web.json_response(
        {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )  # fmt: skip


async def seen(request: web.Request) -> web.Response:
    """GET /_hostile/seen: the Authorization headers received so far."""
    return web.json_response(request.app[SEEN])


def make_app() -> web.Application:
    """The hostile upstream's application."""
    app = web.Application()
    app[SEEN] = []
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, completions)
    app.router.add_get("/_hostile/seen", seen)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
