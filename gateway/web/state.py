"""Everything the application and a request hold, as typed keys, in one place.

``app[CONFIG]``, ``request[RECORD]``: one look here says what a worker keeps and who sets it
(``web/app.py`` builds the application state; the middlewares and handlers the request state).
The web-level classes some keys hold are imported for typing only, so this module imports no
other part of ``web/`` at run time and every part of ``web/`` can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.background import BackgroundTasks
from gateway.bus import BusConsumer
from gateway.cache.service import ResponseCache
from gateway.config import Config
from gateway.dialects.base import ClientDialect
from gateway.ledger import Ledger
from gateway.load import LoadMonitor
from gateway.prices import PriceTable
from gateway.ratelimit import RateLimiter
from gateway.redisconn import RedisConn
from gateway.relay import LiveStreams
from gateway.resumable import ResumableStreams
from gateway.router import Router
from gateway.spool import Spool
from gateway.stats import UsageSink
from gateway.store.base import KeyRecord, Store
from gateway.upstream import Upstreams

if TYPE_CHECKING:
    from gateway.web.accounting import LiveRequests, RequestRecord
    from gateway.web.auth import Authenticator
    from gateway.web.models import ModelCatalog
    from gateway.web.streams import ResumableQuota


@dataclass(slots=True)
class WorkerState:
    """Mutable facts about this worker that handlers read."""

    draining: bool = False
    in_flight: int = 0  # /v1 requests being served, for the admission cap


# -- the application's ------------------------------------------------------------------------
CONFIG = web.AppKey("config", Config)
PRICES = web.AppKey("prices", PriceTable)  # the built-in table with the config's prices on top
WORKER_STATE = web.AppKey("worker_state", WorkerState)
LOAD = web.AppKey("load_monitor", LoadMonitor)
STORE = web.AppKey("store", Store)
REDIS = web.AppKey("redis", RedisConn)  # only with Redis configured
POOL = web.AppKey("upstreams", Upstreams)
ROUTER = web.AppKey("router", Router)
LIVE_STREAMS = web.AppKey("live_streams", LiveStreams)
STREAMS = web.AppKey("resumable_streams", ResumableStreams)
CACHE = web.AppKey("response_cache", ResponseCache)
LIMITER = web.AppKey("rate_limiter", RateLimiter)
LEDGER = web.AppKey("budget_ledger", Ledger)
SETTLING = web.AppKey("budget_settling", BackgroundTasks)  # budget settlements under way
SIDECAR = web.AppKey("stats_sidecar", UsageSink)
SPOOL = web.AppKey("usage_spool", Spool)
BUS_CONSUMER = web.AppKey("usage_bus_consumer", BusConsumer)
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
MODEL_CATALOG: web.AppKey[ModelCatalog] = web.AppKey("model_catalog")
LIVE_REQUESTS: web.AppKey[LiveRequests] = web.AppKey("live_requests")
RESUMABLE_QUOTA: web.AppKey[ResumableQuota] = web.AppKey("resumable_quota")

# -- a request's ------------------------------------------------------------------------------
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("request_record")
API_KEY = web.RequestKey("api_key", KeyRecord)  # set by auth when the request presented one
CLIENT_DIALECT = web.RequestKey("client_dialect", ClientDialect)  # /v1/responses, /v1/messages
# Headers a handler wants on its response, streamed or not (rate-limit state, for one).
RESPONSE_HEADERS = web.RequestKey("response_headers", dict[str, str])
