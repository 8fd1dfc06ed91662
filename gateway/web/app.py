"""make_app(config): the aiohttp application of one worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import metrics, redact
from gateway.breaker import BreakerState
from gateway.bus import BusConsumer, BusPublisher, stream_key
from gateway.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from gateway.cache.service import ResponseCache
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.eventlog import RedisLogs
from gateway.load import LoadMonitor
from gateway.prices import PriceTable
from gateway.ratelimit import RateLimiter
from gateway.redisconn import RedisConn, connect_redis
from gateway.relay import LiveStreams
from gateway.resumable import ResumableStreams
from gateway.router import Router
from gateway.spool import Spool
from gateway.stats import StatsSidecar, UsageSink
from gateway.store import Store, StoreUnavailable, describe, make_store
from gateway.stream import Termination
from gateway.upstream import UpstreamPool, Upstreams
from gateway.web import budgets, info, proxy, streams
from gateway.web.accounting import LiveRequests, accounting_middleware
from gateway.web.admin import add_admin_routes
from gateway.web.attempts import ObservedUpstreams
from gateway.web.auth import Authenticator, auth_middleware
from gateway.web.limits import LIMIT_SCOPES, shed_middleware
from gateway.web.middlewares import (
    add_response_headers,
    cors_middleware,
    error_middleware,
    request_id_middleware,
)
from gateway.web.models import ModelCatalog, model_catalog
from gateway.web.state import (
    AUTHENTICATOR,
    BUS_CONSUMER,
    CACHE,
    CONFIG,
    LIMITER,
    LIVE_REQUESTS,
    LIVE_STREAMS,
    LOAD,
    MODEL_CATALOG,
    POOL,
    PRICES,
    REDIS,
    RESUMABLE_QUOTA,
    ROUTER,
    SIDECAR,
    SPOOL,
    STORE,
    STREAMS,
    WORKER_STATE,
    WorkerState,
)

if TYPE_CHECKING:
    from gateway.web.telemetry import Tracing

log = logging.getLogger("gateway.web")
STATIC = Path(__file__).parent / "static"

# How long the final stats flush may keep retrying an unreachable store at shutdown.
FINAL_FLUSH_SECONDS = 10.0


def make_app(
    config: Config,
    *,
    upstreams: Upstreams | None = None,
    store: Store | None = None,
    tracing: Tracing | None = None,
) -> web.Application:
    """Build the application: routes, middlewares, the store, the stats sidecar, the upstream pool.

    ``upstreams``, ``store`` and ``tracing`` replace the real ones (tests pass fakes or their own).
    """
    tracing = tracing or _tracing(config)
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            shed_middleware,
            request_id_middleware,
            accounting_middleware,
            *([tracing.middleware(config)] if tracing is not None else []),
            error_middleware,
            cors_middleware,
            auth_middleware,
        ],
    )
    app[CONFIG] = config
    app[PRICES] = PriceTable(config.prices)
    redact.install(redact.Redactor.for_config(config))
    app[LIVE_STREAMS] = LiveStreams()
    app[WORKER_STATE] = WorkerState()
    app[LOAD] = LoadMonitor(max_lag=config.server.shed_lag, max_queue=config.server.shed_queue)
    app[POOL] = upstreams or UpstreamPool(config)
    # One Redis connection for the worker (store, limits, cache, streams, usage bus).
    redis = connect_redis(config.store) if config.store.redis_url else None
    if redis is not None:
        app[REDIS] = redis
    app[STORE] = store or make_store(config.store, redis)
    # The router sends through a wrapper that counts each attempt and, with tracing on, traces it.
    app[ROUTER] = Router(config, ObservedUpstreams(app[POOL], tracing), app[POOL].in_flight)
    _usage_delivery(app, config, redis)
    budgets.install(app, config, redis)
    app[AUTHENTICATOR] = Authenticator(app[STORE], config.auth, config.store)
    app[LIMITER] = RateLimiter(
        redis, timeout=config.limits.redis_timeout, lease_seconds=config.limits.stream_lease
    )
    # Started in this order, stopped in reverse: stats are flushed before the store closes.
    app[CACHE] = ResponseCache(config.cache, _cache_backend(config, redis))
    app[MODEL_CATALOG] = ModelCatalog(config)
    app[STREAMS] = ResumableStreams(
        config.streams,
        RedisLogs(redis, settings=config.streams) if redis is not None else None,
    )
    app[RESUMABLE_QUOTA] = streams.ResumableQuota(config.streams.max_per_key)
    app.cleanup_ctx.extend(
        [
            _store,
            budgets.settle_at_shutdown,
            _usage,
            _limiter,
            _cache,
            _upstream_pool,
            _load_monitor,
            model_catalog,
        ]
    )
    if tracing is not None:
        app.cleanup_ctx.append(_telemetry(tracing))
    app.on_response_prepare.append(add_response_headers)
    app.on_shutdown.append(_drain_streams)
    app.on_shutdown.append(_end_resumable_streams)
    app.router.add_post("/v1/chat/completions", proxy.chat_completions)
    app.router.add_post("/v1/completions", proxy.completions)
    app.router.add_post("/v1/embeddings", proxy.embeddings)
    app.router.add_post("/v1/responses", proxy.responses)
    app.router.add_post("/v1/messages", proxy.messages)
    app.router.add_post("/v1/messages/count_tokens", info.count_tokens)
    app.router.add_get("/v1/models", info.list_models)
    app.router.add_get("/v1/models/{model}", info.get_model)
    app.router.add_get("/health", info.health)
    app.router.add_get("/health/ready", info.ready)
    app.router.add_get("/health/detailed", info.health_detailed)
    app.router.add_get("/metrics", info.metrics_exposition)
    app.router.add_get("/", info.playground)
    app.router.add_static("/playground/", STATIC, show_index=False)
    app.router.add_get("/v1/streams/{stream_id}", streams.resume)
    app.router.add_post("/v1/streams/{stream_id}/cancel", streams.cancel)
    add_admin_routes(app)
    return app


def _tracing(config: Config) -> Tracing | None:
    """The worker's tracer when telemetry is enabled; OpenTelemetry is imported only then."""
    if not config.telemetry.enabled:
        return None
    from gateway.web.telemetry import Tracing

    try:
        return Tracing(config.telemetry)
    except ImportError as exc:
        raise ConfigError(
            "telemetry.enabled needs the otel extra: pip install 'llm-gateway[otel]'"
        ) from exc


def _telemetry(tracing: Tracing) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        tracing.activate()
        log.info("tracing on", extra={"endpoint": app[CONFIG].telemetry.endpoint})
        yield
        # The exporter's last flush blocks on HTTP: off the loop, after the streams ended.
        await asyncio.to_thread(tracing.shutdown)

    return run


def _usage_delivery(app: web.Application, config: Config, redis: RedisConn | None) -> None:
    """The spool, and the sink its events go to: the usage bus with Redis, else the store."""
    settings = config.stats
    spool = Spool(
        Path(settings.spool_dir or f"{config.store.path}.spool"),
        fsync_interval=settings.fsync_interval,
    )
    app[SPOOL] = spool
    app[LIVE_REQUESTS] = LiveRequests(spool)
    sink: UsageSink
    if redis is not None and settings.bus:
        stream = stream_key(redis.prefix)
        sink = BusPublisher(redis, stream=stream, settings=settings, spool=spool)
        if settings.consume:
            app[BUS_CONSUMER] = BusConsumer(redis, app[STORE], stream=stream, settings=settings)
    else:
        sink = StatsSidecar(app[STORE], settings, spool=spool)
    app[SIDECAR] = sink


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    try:
        await store.open()
    except StoreUnavailable as exc:
        # Not fatal: stats stay buffered and key lookups fail closed until the store answers.
        log.error("store unreachable at start-up", extra={"store": describe(app[CONFIG].store),
                                                            "error": str(exc)})  # fmt: skip
    yield
    await app[AUTHENTICATOR].close()
    await store.close()
    redis = app.get(REDIS)
    if redis is not None:
        await redis.aclose()  # after the store, which may share it (closing twice is a no-op)


async def _usage(app: web.Application) -> AsyncIterator[None]:
    """Start: adopt dead workers' spools, start delivering (and consuming). Stop: the reverse,
    after the last request was accounted."""
    spool, sink, live = app[SPOOL], app[SIDECAR], app[LIVE_REQUESTS]
    sink.replay(spool.open())
    spool.start()
    sink.start()
    live.start()
    consumer = app.get(BUS_CONSUMER)
    if consumer is not None:
        consumer.start()
    yield
    deadline = time.monotonic() + FINAL_FLUSH_SECONDS
    await live.stop()
    await sink.stop(deadline)
    if consumer is not None:
        await consumer.stop(deadline)
    await spool.close()
    log.info("stats flushed at shutdown", extra=sink.statistics()._asdict())


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[LIMITER].close()  # settle what finished requests booked, before the store closes


def _cache_backend(config: Config, redis: RedisConn | None) -> CacheBackend:
    settings = config.cache
    # backend: redis without Redis is refused by load_config, naming the file.
    if settings.backend != "memory" and redis is not None:
        return RedisBackend(
            redis,
            timeout=settings.redis_timeout,
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
        )
    return MemoryBackend(settings.max_entries, settings.max_bytes)


async def _cache(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[CACHE].close()


async def _upstream_pool(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL]
    await pool.start()
    for deployment in app[CONFIG].deployments.values():
        metrics.UPSTREAM_CAPACITY.labels(deployment.name).set(deployment.max_connections)
    config = app[CONFIG]
    metrics.initialise(
        stream_causes=[cause.value for cause in Termination],
        deployments=list(config.deployments),
        breaker_states=[state.name.lower() for state in BreakerState],
        fallbacks=[(m.name, f) for m in config.models.values() for f in m.fallbacks],
        limit_scopes=LIMIT_SCOPES,
    )
    yield
    await pool.close()


async def _load_monitor(app: web.Application) -> AsyncIterator[None]:
    app[LOAD].start()
    yield
    app[LOAD].stop()


async def _end_resumable_streams(app: web.Application) -> None:
    """On shutdown: resumable streams get the drain grace, then are cancelled (and accounted)."""
    await app[STREAMS].close(app[CONFIG].server.drain_grace)


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
