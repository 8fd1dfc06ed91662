"""Typed keys for what the application holds, and the worker's own state."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.cache.service import ResponseCache
from gateway.config import Config
from gateway.load import LoadMonitor
from gateway.prices import PriceTable
from gateway.relay import LiveStreams
from gateway.router import Router
from gateway.store.base import Store
from gateway.upstream import Upstreams


@dataclass(slots=True)
class WorkerState:
    """Mutable facts about this worker that handlers read."""

    draining: bool = False
    in_flight: int = 0  # /v1 requests being served, for the admission cap


CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("upstreams", Upstreams)
LIVE_STREAMS = web.AppKey("live_streams", LiveStreams)
WORKER_STATE = web.AppKey("worker_state", WorkerState)
STORE = web.AppKey("store", Store)
ROUTER = web.AppKey("router", Router)
CACHE = web.AppKey("response_cache", ResponseCache)
LOAD = web.AppKey("load_monitor", LoadMonitor)
PRICES = web.AppKey("prices", PriceTable)  # the built-in table with the config's prices on top
