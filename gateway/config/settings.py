"""The settings: frozen dataclasses, one per config section, each field's rules beside it.

A field made with :func:`setting` carries a :class:`Rule` as dataclass metadata; the loader
(``gateway.config.load``) checks a value by its field's type and rule, and the environment check
(``gateway.config.env``) knows every settable path from the same fields. A field without a rule
is checked by its type alone: a whole number at least 1, a positive number, true or false, a
non-empty string, a list of strings, or a nested section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from gateway.breaker import BreakerSettings
from gateway.capacity import streams_per_worker
from gateway.config.checks import http_statuses, seconds_by_name
from gateway.prices import Price

MOCK_BASE_URL = "mock://"
WILDCARD_MODEL = "*"
DEFAULT_DEMO_MODEL = "demo"
DEFAULT_STORE_FILE = "llm-gateway.sqlite3"
MIN_MASTER_KEY_LENGTH = 32
UPSTREAM_TYPE_NAMES = ("openai", "azure", "anthropic", "gemini")
STRATEGIES = ("weighted", "least-busy", "lowest-latency")
CACHE_MODES = ("off", "deterministic", "all")
SWITCH = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class Rule:
    """What a setting accepts, beyond its type."""

    minimum: float | None = None  # whole numbers: at least this (else 1); numbers: 0 allows 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    fold_case: bool = False  # a choice in any case (INFO is info)
    schemes: tuple[str, ...] = ()  # a URL starting with one of these
    secret: bool = False  # may be env:VAR; never in a repr
    raw: bool = False  # from the environment the text itself, never read as YAML
    parse: Callable[[Any, str], Any] | None = None  # a check of its own: (value, key) -> value
    by_name: bool = False  # a mapping by (model) name: one more level in an environment name
    # Computed at load (from the environment) when the setting is absent, or 0 where 0 is allowed.
    auto: Callable[[Mapping[str, str]], Any] | None = None
    alias: str | None = None  # a deprecated name still accepted
    settable: bool = True  # False: filled in by the loader, never by a file
    limit: bool = False  # a rate limit (LimitSettings.configured)


PLAIN = Rule()
FILLED_BY_LOADER = {"rule": Rule(settable=False)}
_T = TypeVar("_T")


def setting(default: _T, **rule: Any) -> _T:
    """A dataclass field with a default and the rule its value must follow."""
    checked = Rule(**rule)
    return field(default=default, repr=not checked.secret, metadata={"rule": checked})


def rule_of(f: Any) -> Rule:
    """The rule of a dataclass field (PLAIN when it has none)."""
    rule: Rule = f.metadata.get("rule", PLAIN)
    return rule


def _from_fd_limit(environ: Mapping[str, str]) -> int:
    return streams_per_worker()


def default_store_path(environ: Mapping[str, str]) -> Path:
    """The per-user SQLite file: ``$XDG_STATE_HOME/llm-gateway/``, else ``~/.local/state/...``."""
    state = environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "llm-gateway" / DEFAULT_STORE_FILE


def _store_path(environ: Mapping[str, str]) -> str:
    return str(default_store_path(environ))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-deployment upstream timeouts, in seconds. There is deliberately no total timeout."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream endpoint and the API it speaks (``type``: openai, azure, anthropic, gemini)."""

    name: str = field(metadata=FILLED_BY_LOADER)
    base_url: str  # http(s)://, or mock:// for the built-in mock
    api_key: str | None = setting(None, secret=True, raw=True)
    models: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    max_connections: int = setting(256, auto=_from_fd_limit)
    weight: float = 1.0
    # A pool, rotated; api_key is the first.
    api_keys: tuple[str, ...] = setting((), secret=True)
    breaker: BreakerSettings = BreakerSettings()  # in a file: over routing.breaker
    type: str = setting("openai", choices=UPSTREAM_TYPE_NAMES)
    api_version: str | None = None  # Azure's api-version, Anthropic's anthropic-version

    @property
    def in_process(self) -> bool:
        """True for the built-in mock provider, which needs no network."""
        return self.base_url == MOCK_BASE_URL


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """Hedged streams: a second upstream request when the first event is late."""

    after: float | None = (
        None  # seconds; None ("p95"): the deployment's own p95 time to first event
    )
    max_extra: int = 1  # hedges at most per request


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A client-facing model name and the deployments that serve it."""

    name: str = field(metadata=FILLED_BY_LOADER)
    deployments: tuple[str, ...]
    upstream_model: str | None = None
    strategy: str = setting("weighted", choices=STRATEGIES)
    fallbacks: tuple[str, ...] = ()  # other client model names, tried when these all failed
    hedge: HedgeSettings | None = None

    def upstream_name(self, requested: str) -> str:
        """The model name sent upstream for a request that asked for ``requested``."""
        return self.upstream_model or requested


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How a worker listens and treats client connections."""

    host: str = "127.0.0.1"
    port: int = setting(8080, minimum=0, maximum=65535)
    workers: int = 1
    backlog: int = 2048
    max_body_bytes: int = 4 * 1024 * 1024
    max_upstream_body_bytes: int = 32 * 1024 * 1024
    keepalive_interval: float = 30.0
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    write_stall_timeout: float = 30.0
    drain_grace: float = 30.0
    cors_origins: tuple[str, ...] = ()
    # /v1 requests in flight per worker; beyond it an immediate 503. 0: from the fd limit.
    # Called max_streams before: that name is still read, with a deprecation warning.
    max_in_flight: int = setting(0, minimum=0, auto=_from_fd_limit, alias="max_streams")
    shed_lag: float = 0.5  # event-loop lag (s) past which new requests are shed with a 503
    shed_queue: int = 1024  # connections waiting to be accepted past which the same happens
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"), fold_case=True)
    access_log: bool = True
    access_log_health: bool = False  # health checks and metric scrapes in the access log too
    # Whether a request's "mock" object (or X-Mock-* headers) may shape the in-process demo model:
    # auto allows it only when listening on loopback.
    mock_overrides: str = setting("auto", choices=SWITCH)
    # On SIGTERM, readiness answers 503 for this long while the listener stays open, so a
    # balancer that only watches readiness stops sending before connections are refused.
    drain_announce: float = setting(3.0, minimum=0)

    @property
    def request_cap(self) -> int:
        """Requests in flight one worker takes (``max_in_flight``, else from the fd limit)."""
        return self.max_in_flight or streams_per_worker()

    @property
    def mock_overrides_allowed(self) -> bool:
        """Client-controlled mock behaviour: on, off, or (auto) only on a loopback address."""
        if self.mock_overrides != "auto":
            return self.mock_overrides == "on"
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where keys and usage are kept: PostgreSQL when ``url`` is set, else Redis when
    ``redis_url`` is set, else a SQLite file. Redis also carries limits, cache and streams."""

    # load_config: under the user's state directory
    path: str = setting(DEFAULT_STORE_FILE, raw=True, auto=_store_path)
    url: str | None = setting(  # postgresql://...
        None, secret=True, raw=True, schemes=("postgresql://", "postgres://")
    )
    pool_size: int = 8  # PostgreSQL connections per worker
    redis_url: str | None = setting(
        None, secret=True, raw=True, schemes=("redis://", "rediss://", "unix://")
    )
    redis_prefix: str = "llmgw"
    timeout: float = 2.0

    @property
    def shared(self) -> bool:
        """A shared store (PostgreSQL or Redis): the multi-instance mode, auth always on."""
        return self.redis_url is not None or self.url is not None


@dataclass(frozen=True, slots=True)
class StatsSettings:
    """Usage delivery: batches every ``flush_interval`` s or ``flush_events`` events; with Redis
    through the usage bus (a Redis Stream and a consumer group), always through a local spool."""

    flush_interval: float = 5.0
    flush_events: int = 100
    buffer_size: int = 1000
    max_pending_batches: int = 10_000
    spool_dir: str | None = setting(None, raw=True)  # default: next to store.path ("<path>.spool")
    fsync_interval: float = 0.2  # the spool is fsynced this often (the power-loss window)
    bus: bool = True  # with Redis configured, deliver through the Redis Stream
    consume: bool = True  # this instance's workers consume the bus into the store
    claim_after: float = 30.0  # an event read but not acknowledged this long is claimed


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """API-key authentication. ``auto``: on with a shared (Redis) store or once any key exists."""

    mode: str = setting("auto", choices=SWITCH)
    master_key: str | None = setting(None, secret=True, raw=True)
    cache_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries before the first byte: which failures, how many, how fast, and a budget."""

    attempts: int = 3
    statuses: tuple[int, ...] = setting((429, 500, 502, 503, 504), parse=http_statuses)
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    budget_ratio: float = 0.2  # retries in flight at most this share of active requests...
    budget_min: int = 3  # ...but always at least this many
    max_time: float = 15.0  # all attempts of one request within this many seconds


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """How requests are spread, retried and failed over."""

    retries: RetrySettings = RetrySettings()
    key_cooldown: float = 30.0  # an upstream key answered 429 without Retry-After rests this long
    breaker: BreakerSettings = BreakerSettings()


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Rate limits: per API key, per client IP and global. None means no limit.

    A key's own ``rpm``/``tpm`` (``keys create --rpm/--tpm``) win over ``key_rpm``/``key_tpm``.
    """

    key_rpm: int | None = setting(None, limit=True)
    key_tpm: int | None = setting(None, limit=True)
    key_concurrent: int | None = setting(None, limit=True)  # requests in flight per key
    ip_rpm: int | None = setting(None, limit=True)
    global_rps: int | None = setting(None, limit=True)
    default_max_tokens: int = 1024  # completion tokens reserved when a request sets no max_tokens
    client_ip_header: str | None = None  # e.g. X-Real-IP, only behind a proxy that sets it
    # A limiter call slower than this falls back to local limits. It counts the worker's own event
    # loop lag too, which under a burst can reach hundreds of milliseconds: keep it generous.
    redis_timeout: float = 1.0
    stream_lease: float = 3600.0  # a concurrency slot held longer than this is freed (crashes)
    # A streaming request draws its key's budgets this many output tokens at a time: the most any
    # one stream can overshoot a budget by.
    budget_lease_tokens: int = 256

    def configured(self) -> dict[str, int]:
        """The limits that are set, by name (keys may still carry their own)."""
        return {
            f.name: value
            for f in fields(self)
            if rule_of(f).limit and (value := getattr(self, f.name)) is not None
        }

    @property
    def any(self) -> bool:
        """Whether any limit is configured (keys may still carry their own)."""
        return bool(self.configured())


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The exact-match response cache and the coalescing of identical requests in flight."""

    # off | deterministic (temperature 0 or a seed) | all
    mode: str = setting("deterministic", choices=CACHE_MODES)
    scope: str = setting("key", choices=("key", "global"))  # key: each API key its own entries
    ttl: float = 300.0
    model_ttls: tuple[tuple[str, float], ...] = setting((), parse=seconds_by_name, by_name=True)
    max_object_bytes: int = 1024 * 1024
    max_entries: int = 10_000  # in memory
    max_bytes: int = 256 * 1024 * 1024  # in memory
    # auto (Redis when the store is Redis) | memory | redis (needs store.redis_url)
    backend: str = setting("auto", choices=("auto", "memory", "redis"))
    coalesce: bool = True
    redis_timeout: float = 0.25

    def ttl_for(self, model: str) -> float:
        return dict(self.model_ttls).get(model, self.ttl)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Resumable streams: every event buffered under a stream id, so a client can reconnect."""

    resumable: bool = False  # for every stream; else per request (X-Gateway-Resumable) or model
    models: tuple[str, ...] = ()  # client model names whose streams are always resumable
    keys: tuple[str, ...] = ()  # API key ids (key_...) whose streams are always resumable
    grace: float = 60.0  # how long a stream nobody reads keeps running, waiting for a resumer
    retention: float = 300.0  # how long its events can be replayed after it ended
    max_events: int = 10_000  # per stream; older events are dropped beyond it
    max_streams: int = 10_000  # resumable streams kept per worker (oldest ended ones go first)
    max_per_key: int = 16  # running at once per API key (per address without one), per worker


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """OpenTelemetry traces over OTLP/HTTP; off by default, and then nothing is imported."""

    enabled: bool = False
    # an OTLP/HTTP traces URL
    endpoint: str = setting("http://127.0.0.1:4318/v1/traces", schemes=("http://", "https://"))
    service_name: str = "llm-gateway"
    # of the traces that do not arrive sampled by the client already
    sample_ratio: float = setting(1.0, maximum=1)
    capture_prompts: bool = False  # prompts and answers as span attributes: off, they may be secret


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration of one gateway instance."""

    server: ServerSettings
    deployments: Mapping[str, Deployment]
    models: Mapping[str, ModelRoute]
    source: str = setting("embedded defaults", settable=False)
    store: StoreSettings = StoreSettings()
    stats: StatsSettings = StatsSettings()
    auth: AuthSettings = AuthSettings()
    routing: RoutingSettings = RoutingSettings()
    limits: LimitSettings = LimitSettings()
    cache: CacheSettings = CacheSettings()
    streams: StreamSettings = StreamSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    # USD per million tokens by upstream model name, over the built-in table (gateway.prices).
    prices: Mapping[str, Price] = field(default_factory=dict)

    @property
    def embedded_demo(self) -> bool:
        """True when running on the built-in defaults (the in-process demo model only)."""
        return all(d.in_process for d in self.deployments.values())

    def listed_models(self) -> list[str]:
        """Client-facing model names for ``GET /v1/models`` (the wildcard route is not a name)."""
        return [name for name in self.models if name != WILDCARD_MODEL]

    def route_for(self, model: str) -> ModelRoute | None:
        """The route serving ``model``: its own, else the wildcard route, else None."""
        return self.models.get(model) or self.models.get(WILDCARD_MODEL)
