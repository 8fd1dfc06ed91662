"""make_app(config): the aiohttp application of one worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import Config
from gateway.relay import LiveStreams
from gateway.upstream import UpstreamPool, Upstreams
from gateway.web import handlers
from gateway.web.keys import CONFIG, LIVE_STREAMS, POOL, WORKER_STATE, WorkerState
from gateway.web.middlewares import (
    add_response_headers,
    cors_middleware,
    error_middleware,
    request_id_middleware,
)

log = logging.getLogger("gateway.web")


def make_app(config: Config, *, upstreams: Upstreams | None = None) -> web.Application:
    """Build the application: routes, middlewares, the upstream pool and the drain hook.

    ``upstreams`` replaces the real pool (tests pass a scripted fake).
    """
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware, cors_middleware],
    )
    app[CONFIG] = config
    app[LIVE_STREAMS] = LiveStreams()
    app[WORKER_STATE] = WorkerState()
    app[POOL] = upstreams or UpstreamPool(config)
    app.cleanup_ctx.append(_upstream_pool)
    app.on_response_prepare.append(add_response_headers)
    app.on_shutdown.append(_drain_streams)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model}", handlers.get_model)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/health/ready", handlers.ready)
    return app


async def _upstream_pool(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL]
    await pool.start()
    yield
    await pool.close()


async def _drain_streams(app: web.Application) -> None:
    """On shutdown: readiness says draining; live streams get their grace, then are ended."""
    app[WORKER_STATE].draining = True
    live = app[LIVE_STREAMS]
    if not len(live):
        return
    grace = app[CONFIG].server.drain_grace
    log.info("draining live streams", extra={"streams": len(live), "grace_s": grace})
    ended = await live.drain(grace)
    if ended:
        log.warning("ended streams still running after the grace period", extra={"streams": ended})
