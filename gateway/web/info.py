"""The small routes: models, health, metrics, the playground, and Messages token counting."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from gateway import metrics
from gateway.dialects import CLIENT_DIALECTS
from gateway.dialects.messages import MessagesDialect
from gateway.errors import ModelNotFound
from gateway.web.proxy import read_body
from gateway.web.state import (
    API_KEY,
    CLIENT_DIALECT,
    CONFIG,
    LIVE_STREAMS,
    MODEL_CATALOG,
    ROUTER,
    SIDECAR,
    WORKER_STATE,
)


async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens: the gateway's estimate of a Messages prompt."""
    dialect = CLIENT_DIALECTS["messages"]
    request[CLIENT_DIALECT] = dialect
    raw = await read_body(request, request.app[CONFIG].server)
    assert isinstance(dialect, MessagesDialect)
    return web.Response(body=dialect.count_tokens(raw), content_type="application/json")


MODELS_TTL = 300.0


def _allowed_models(request: web.Request) -> tuple[str, ...] | None:
    record = request.get(API_KEY)
    return None if record is None else record.models


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: configured names and pass-through upstreams' own, as the key may use."""
    body = request.app[MODEL_CATALOG].body(_allowed_models(request))
    response = web.Response(body=body, content_type="application/json")
    response.headers["Cache-Control"] = f"max-age={int(MODELS_TTL)}"
    return response


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: agrees with the list."""
    name = request.match_info["model"]
    entry = request.app[MODEL_CATALOG].find(name, _allowed_models(request))
    if entry is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    return web.json_response(entry)


PLAYGROUND = Path(__file__).parent / "static" / "index.html"


async def playground(request: web.Request) -> web.FileResponse:
    """GET /: the chat playground (plain HTML, CSS and JavaScript shipped in the package)."""
    return web.FileResponse(PLAYGROUND, headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    """GET /health: the process is alive."""
    return web.json_response({"status": "ok"})


async def health_detailed(request: web.Request) -> web.Response:
    """GET /health/detailed: this worker's view of every deployment and its own queues."""
    app = request.app
    return web.json_response(
        {
            "status": "draining" if app[WORKER_STATE].draining else "ready",
            "pid": os.getpid(),
            "live_streams": len(app[LIVE_STREAMS]),
            "stats": app[SIDECAR].statistics()._asdict(),
            "deployments": app[ROUTER].describe(),
        }
    )


async def ready(request: web.Request) -> web.Response:
    """GET /health/ready: 503 once the worker is draining, so balancers stop sending."""
    if request.app[WORKER_STATE].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_exposition(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format, summed over every worker."""
    body, content_type = await metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
