"""aiohttp's own error answers (unparseable requests) made OpenAI-shaped and free of echoes.

A request whose headers do not parse never reaches the middlewares: aiohttp answers it itself with
a ``text/plain`` body that quotes the offending line, and logs that line with a traceback. The line
may be an ``Authorization`` header, so both would leak a key. :class:`GatewayRunner` makes the
server use a request handler whose ``handle_error`` answers the usual JSON error instead, and logs
only the kind of failure.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import GatewayError, InvalidRequest
from gateway.web.middlewares import error_response

log = logging.getLogger("gateway.web")


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler with an error answer of the gateway's own."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The OpenAI-shaped error for ``status``; the cause is logged by type, never by text."""
        log.info(
            "request refused before routing",
            extra={"status": status, "error": type(exc).__name__ if exc else None},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send an error response")
        error: GatewayError
        if status >= 500:
            error = GatewayError("The gateway failed to handle the request.")
        else:
            error = InvalidRequest("The request is not valid HTTP.", code="bad_http_request")
            error.status = status  # type: ignore[misc]
        response = error_response(error)
        response.force_close()
        return response


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return GatewayRequestHandler(self, loop=self._loop, **kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests the gateway's way."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer  # same object, only its protocol factory differs
        return server
