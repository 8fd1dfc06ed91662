"""The access log: one JSON line per request, with what operators grep for.

A /v1 POST is logged by the accounting middleware once it has its stats event (for a resumable
stream that is when the stream ends, not when its first client left), from the request record:
one dict, encoded once by the JSON formatter. Every other request is logged by aiohttp's access
logger hook below, except health checks and metric scrapes unless ``server.access_log_health``.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.config import Config
from gateway.logs import REQUEST_ID
from gateway.stats import StatsEvent
from gateway.web.state import CONFIG

log = logging.getLogger("gateway.access")

SCRAPE_PATHS = frozenset({"/health", "/health/ready", "/health/detailed", "/metrics"})
_APIS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


def upstream_model(config: Config, model: str | None, served_by: str | None) -> str | None:
    """The model name sent upstream: the serving route's, a fallback's when one answered."""
    if model is None:
        return None
    route = config.models.get(served_by) if served_by else config.route_for(model)
    return None if route is None else route.upstream_name(model)


def request_line(
    request: web.Request,
    event: StatsEvent,
    *,
    upstream: str | None,
    stream: bool,
    cache: str | None,
    coalesced: bool,
    retries: int,
    hedges: int,
    cost: float | None,
) -> dict[str, object]:
    """The fields of one /v1 request's access line."""
    fields: dict[str, object] = {
        "request_id": event.request_id,
        "key_id": event.key_id,
        "method": request.method,
        "path": request.path,
        "api": _APIS.get(request.path, request.path),
        "model": event.model,
        "upstream_model": upstream,
        "deployment": event.deployment,
        "status": event.status,
        "stream": stream,
        "ttfb_ms": None if event.ttfb_ms is None else round(event.ttfb_ms, 2),
        "duration_ms": round(event.latency_ms, 2),
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "tokens_estimated": not event.tokens_exact,
        "cache": "hit" if event.cache_hit else cache,
        "coalesced": coalesced,
        "retries": retries,
        "hedges": hedges,
        "termination": event.termination,
        "remote": request.remote,
    }
    if cost is not None:
        fields["cost"] = cost
    return fields


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's per-response hook, for requests the accounting middleware does not log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.method == "POST" and request.path.startswith("/v1/"):
            return  # logged once by the accounting middleware, with its stats event
        if request.path in SCRAPE_PATHS and not _log_scrapes(request):
            return
        self.logger.info(
            "request",
            extra={
                "request_id": request.get(REQUEST_ID),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _log_scrapes(request: web.BaseRequest) -> bool:
    return isinstance(request, web.Request) and request.app[CONFIG].server.access_log_health
