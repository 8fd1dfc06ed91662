"""The framework's floor: a minimal aiohttp relay (no features) that `make bench` measures beside
the gateway. It forwards the body, streams whatever arrives back as it arrives, and does nothing
else: no auth, limits, stats, metrics, logs, parsing or timeouts beyond aiohttp's own.

    python -m benchmarks.relay --port 8000 --upstream http://127.0.0.1:9090
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP_HEADERS = {"content-type", "cache-control"}


async def relay(request: web.Request) -> web.StreamResponse:
    """POST the body upstream; answer with its status, content type and bytes as they come."""
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(
        request.path, data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in HOP_HEADERS}
        if upstream.content_type != "text/event-stream":
            return web.Response(status=upstream.status, body=await upstream.read(), headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_relay_app(upstream: str) -> web.Application:
    """The relay's application, with one pooled client session to ``upstream``."""
    app = web.Application()

    async def session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(upstream, connector=connector, timeout=timeout) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_post("/v1/completions", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, no path")
    args = parser.parse_args()
    app = make_relay_app(args.upstream)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        backlog=4096,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
