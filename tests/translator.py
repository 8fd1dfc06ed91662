"""A fake gateway made of gateway.dialects alone, on a real port: client dialect in, upstream out.

It is what the stream engine does with the translators, at its smallest: parse the client's
request to canonical, build the upstream's request, decode its events to canonical chunks, encode
those for the client. Tests point the official SDKs at it, with the real mock process behind it,
so every translator is checked by parsers we did not write. The upstream type comes from the
``X-Upstream-Type`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from gateway.dialects import CLIENT_DIALECTS, UPSTREAM_TYPES
from gateway.dialects.base import ClientDialect, UpstreamSettings
from gateway.errors import GatewayError, UpstreamStatusError
from gateway.sse import SSEParser

# Where each upstream type's versioned API root is on the mock.
ROOTS = {"openai": "/v1", "azure": "/openai", "anthropic": "/v1", "gemini": "/v1beta"}
ROUTES = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/messages": "messages"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
MOCK_URL = web.AppKey("mock_url", str)


def _error(dialect: ClientDialect, err: GatewayError) -> web.Response:
    body = dialect.error_body(err)
    return web.Response(body=body, status=err.http_status, content_type="application/json")


async def _translate(request: web.Request) -> web.StreamResponse:
    dialect = CLIENT_DIALECTS[ROUTES[request.path]]
    upstream = UPSTREAM_TYPES[request.headers.get("X-Upstream-Type", "openai")]
    try:
        canonical = dialect.parse_request(await request.read())
        model = str(canonical["model"])
        outgoing = upstream.build_request(canonical, model, UpstreamSettings(api_key="sk-up"))
    except GatewayError as err:
        return _error(dialect, err)
    url = request.app[MOCK_URL] + ROOTS[upstream.name] + outgoing.path
    headers = {**outgoing.headers, "Content-Type": "application/json"}
    async with request.app[SESSION].post(url, data=outgoing.body, headers=headers) as answer:
        body = b"" if answer.status < 400 else await answer.read()
        if answer.status >= 400:
            return _error(dialect, UpstreamStatusError(answer.status, body))
        if not canonical.get("stream"):
            try:
                completion = upstream.completion_from_upstream(await answer.read())
            except GatewayError as err:
                return _error(dialect, err)
            return web.Response(
                body=dialect.completion_to_client(completion), content_type="application/json"
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        decoder, encoder, parser = upstream.decoder(), dialect.encoder(model=model), SSEParser()
        try:
            async for chunk in answer.content.iter_any():
                for event in parser.feed(chunk):
                    for payload in decoder.feed(event):
                        await response.write(encoder.feed(payload))
                if decoder.finished:
                    break
            for payload in decoder.at_eof():
                await response.write(encoder.feed(payload))
            await response.write(encoder.done())
        except GatewayError as err:
            await response.write(encoder.error(err))
        return response


@asynccontextmanager
async def translator(mock_url: str) -> AsyncIterator[str]:
    """Run the fake gateway on a free port in front of ``mock_url``; yields its base URL."""
    app = web.Application()
    app[MOCK_URL] = mock_url
    for path in ROUTES:
        app.router.add_post(path, _translate)
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
