"""Middlewares and response hooks: request id, CORS, security headers, error rendering.

Headers are added in ``on_response_prepare`` rather than after the handler, because a streamed
response has already sent its headers by the time the handler returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import redact
from gateway.dialects.base import ClientDialect
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamStatusError,
)
from gateway.logs import REQUEST_ID
from gateway.store.base import StoreUnavailable
from gateway.web.state import API_KEY, CLIENT_DIALECT, CONFIG, RECORD, RESPONSE_HEADERS

log = logging.getLogger("gateway.web")

__all__ = ["RESPONSE_HEADERS", "error_response"]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-site",
}
EXPOSED_HEADERS = (
    "X-Request-Id, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
    "X-Gateway-Cache, X-Gateway-Coalesced, Age, X-Gateway-Stream-Id"
)
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# The client dialect of a /v1/responses or /v1/messages request: its errors are in that shape.


def error_response(error: GatewayError, dialect: ClientDialect | None = None) -> web.Response:
    """The JSON answer for an error: OpenAI-shaped, or in the client's dialect."""
    headers = dict(error.headers)
    close = headers.pop("Connection", "").lower() == "close"
    response = web.Response(
        body=error.to_json() if dialect is None else dialect.error_body(error),
        status=error.http_status,
        content_type="application/json",
        headers=headers,
    )
    if close:
        response.force_close()
    return response


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the caller's X-Request-Id when it is sane, else make one."""
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _REQUEST_ID_SHAPE.fullmatch(given) else uuid.uuid4().hex
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as an OpenAI-shaped JSON error; never a traceback."""
    try:
        return await handler(request)
    except GatewayError as exc:
        record = request.get(RECORD)
        if record is not None:
            record.error = exc
        if isinstance(exc, UpstreamStatusError):
            exc = redact.installed().status_error(exc)
        return error_response(exc, request.get(CLIENT_DIALECT))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc, request))
    except StoreUnavailable as exc:
        log.warning("store unreachable", extra={"error": type(exc.__cause__ or exc).__name__})
        return error_response(
            ServiceUnavailable(
                "The key and usage store is unreachable; try again shortly.",
                code="store_unavailable",
                headers={"Retry-After": "2"},
            )
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request.get(REQUEST_ID)})
        return error_response(GatewayError("The gateway failed to handle the request."))


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(f"Unknown path: {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        limit = request.app[CONFIG].server.max_body_bytes
        return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    error = InvalidRequest(exc.reason or "Bad request.")
    error.status = exc.status  # type: ignore[misc]
    return error


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflight requests for the configured origins."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response = web.Response(status=204)
        origin = _allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "authorization, content-type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        return response
    return await handler(request)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = request.app[CONFIG].server.cors_origins
    if "*" in allowed or origin in allowed:
        return origin
    return None


async def add_response_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Request id, security headers and CORS on every response, streamed or not."""
    headers = response.headers
    request_id = request.get(REQUEST_ID)
    if request_id:
        headers["X-Request-Id"] = request_id
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if isinstance(request, web.Request):
        if request.get(API_KEY) is not None or request.path.startswith("/admin"):
            # An answer for one key: no shared cache (a proxy, a CDN) may keep or serve it.
            headers["Cache-Control"] = "private, no-store"
        extra = request.get(RESPONSE_HEADERS)
        if extra:
            for name, value in extra.items():
                headers.setdefault(name, value)
        origin = _allowed_origin(request)
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            headers.add("Vary", "Origin")
