"""The gateway's error tree.

Every error carries the HTTP status and the OpenAI error ``type`` it is rendered with, so one
middleware turns any of them into ``{"error": {"message", "type", "param", "code"}}`` before the
response headers are sent, and the relay turns it into a final SSE error event after.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── InvalidJSON               400 (code: invalid_json)
    │   ├── ModelNotFound             404 (code: model_not_found)
    │   ├── NotFound                  404 (code: not_found)
    │   ├── MethodNotAllowed          405 (code: method_not_allowed)
    │   ├── PayloadTooLarge           413 (code: payload_too_large)
    │   └── RequestTimeout            408 (code: request_timeout)
    ├── AuthenticationError           401 authentication_error
    ├── PermissionDenied              403 permission_error
    ├── RateLimited                   429 rate_limit_error
    │   └── BudgetExceeded            429 (code: budget_exceeded; also mid-stream)
    ├── ServiceUnavailable            503 service_unavailable (pool full, draining, overloaded)
    └── UpstreamError                 502 upstream_error
        ├── UpstreamUnreachable       502 (code: upstream_unreachable)
        ├── UpstreamTimeout           504 (code: upstream_timeout)
        ├── UpstreamProtocolError     502 (code: upstream_protocol_error)
        └── UpstreamStatusError       the upstream's own status and body, passed through
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    """Base of every error the gateway renders for a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        """The HTTP status this error is answered with."""
        return self.status

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI-shaped error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """The error object encoded as JSON bytes."""
        return orjson.dumps(self.to_dict())


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    default_code = "invalid_json"


class ModelNotFound(InvalidRequest):
    status = 404
    default_code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class RequestTimeout(InvalidRequest):
    status = 408
    default_code = "request_timeout"


class AuthenticationError(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    default_code = "model_not_allowed"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    default_code = "budget_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    default_code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    default_code = "upstream_protocol_error"


class UpstreamStatusError(UpstreamError):
    """An upstream answered with an error status; its status and body are passed through."""

    def __init__(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        retry_after: str | None = None,
        deployment: str | None = None,
    ) -> None:
        self.upstream_status = status
        self.deployment = deployment
        self.body = body
        self.content_type = content_type
        headers = {"Retry-After": retry_after} if retry_after else None
        super().__init__(_upstream_message(status, body), code="upstream_status", headers=headers)

    @property
    def http_status(self) -> int:
        return self.upstream_status

    def to_json(self) -> bytes:
        """The upstream's own body when it is an OpenAI-shaped error, else a wrapped one."""
        if _is_openai_error(self.body):
            return self.body
        return super().to_json()

    def to_dict(self) -> dict[str, Any]:
        if _is_openai_error(self.body):
            parsed: dict[str, Any] = orjson.loads(self.body)
            return parsed
        return super().to_dict()


def _is_openai_error(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _upstream_message(status: int, body: bytes) -> str:
    if _is_openai_error(body):
        message = orjson.loads(body)["error"].get("message")
        if isinstance(message, str):
            return message
    return f"upstream answered with status {status}"


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key and the source."""
