"""Configuration: loaded once, validated fully, frozen.

Sources, later ones winning: embedded defaults, a YAML file, then ``LLM_GATEWAY_*`` environment
variables. An environment variable names a setting by its path with ``__`` between levels
(``LLM_GATEWAY_SERVER__PORT=9000``); server settings may drop the ``SERVER__`` part
(``LLM_GATEWAY_PORT``). Values are read as YAML, so lists and mappings work too
(``LLM_GATEWAY_SERVER__CORS_ORIGINS='[https://app.example]'``).

Every invalid value raises :class:`ConfigError` with a message naming the key and its source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.breaker import BreakerSettings
from gateway.capacity import streams_per_worker
from gateway.errors import ConfigError
from gateway.prices import Price

ENV_PREFIX = "LLM_GATEWAY_"
MOCK_BASE_URL = "mock://"
WILDCARD_MODEL = "*"
DEFAULT_DEMO_MODEL = "demo"
DEFAULT_STORE_FILE = "llm-gateway.sqlite3"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-deployment upstream timeouts, in seconds. There is deliberately no total timeout."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream endpoint and the API it speaks (``type``: openai, azure, anthropic, gemini)."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    max_connections: int = 256
    weight: float = 1.0
    api_keys: tuple[str, ...] = field(
        default=(), repr=False
    )  # a pool, rotated; api_key is the first
    breaker: BreakerSettings = BreakerSettings()
    type: str = "openai"
    api_version: str | None = None  # Azure's api-version, Anthropic's anthropic-version

    @property
    def in_process(self) -> bool:
        """True for the built-in mock provider, which needs no network."""
        return self.base_url == MOCK_BASE_URL


STRATEGIES = ("weighted", "least-busy", "lowest-latency")


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """Hedged streams: a second upstream request when the first event is late."""

    after: float | None = None  # seconds; None: the deployment's own p95 time to first event
    max_extra: int = 1  # hedges at most per request


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A client-facing model name and the deployments that serve it."""

    name: str
    deployments: tuple[str, ...]
    upstream_model: str | None = None
    strategy: str = "weighted"
    fallbacks: tuple[str, ...] = ()  # other client model names, tried when these all failed
    hedge: HedgeSettings | None = None

    def upstream_name(self, requested: str) -> str:
        """The model name sent upstream for a request that asked for ``requested``."""
        return self.upstream_model or requested


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How a worker listens and treats client connections."""

    host: str = "127.0.0.1"
    port: int = 8080
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
    max_streams: int = 0
    shed_lag: float = 0.5  # event-loop lag (s) past which new requests are shed with a 503
    shed_queue: int = 1024  # connections waiting to be accepted past which the same happens

    @property
    def request_cap(self) -> int:
        """Requests in flight one worker takes (``max_streams``, else from the fd limit)."""
        return self.max_streams or streams_per_worker()

    log_level: str = "info"
    access_log: bool = True
    access_log_health: bool = False  # health checks and metric scrapes in the access log too
    # Whether a request's "mock" object (or X-Mock-* headers) may shape the in-process demo model:
    # auto allows it only when listening on loopback.
    mock_overrides: str = "auto"
    # On SIGTERM, readiness answers 503 for this long while the listener stays open, so a
    # balancer that only watches readiness stops sending before connections are refused.
    drain_announce: float = 3.0

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

    path: str = "llm-gateway.sqlite3"  # load_config: under the user's state directory
    url: str | None = field(default=None, repr=False)  # postgresql://...
    pool_size: int = 8  # PostgreSQL connections per worker
    redis_url: str | None = field(default=None, repr=False)
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
    spool_dir: str | None = None  # default: next to store.path ("<path>.spool")
    fsync_interval: float = 0.2  # the spool is fsynced this often (the power-loss window)
    bus: bool = True  # with Redis configured, deliver through the Redis Stream
    consume: bool = True  # this instance's workers consume the bus into the store
    claim_after: float = 30.0  # an event read but not acknowledged this long is claimed


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """API-key authentication. ``auto``: on with a shared (Redis) store or once any key exists."""

    mode: str = "auto"
    master_key: str | None = field(default=None, repr=False)
    cache_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries before the first byte: which failures, how many, how fast, and a budget."""

    attempts: int = 3
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
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

    key_rpm: int | None = None
    key_tpm: int | None = None
    key_concurrent: int | None = None  # requests in flight per key
    ip_rpm: int | None = None
    global_rps: int | None = None
    default_max_tokens: int = 1024  # completion tokens reserved when a request sets no max_tokens
    client_ip_header: str | None = None  # e.g. X-Real-IP, only behind a proxy that sets it
    # A limiter call slower than this falls back to local limits. It counts the worker's own event
    # loop lag too, which under a burst can reach hundreds of milliseconds: keep it generous.
    redis_timeout: float = 1.0
    stream_lease: float = 3600.0  # a concurrency slot held longer than this is freed (crashes)
    # A streaming request draws its key's budgets this many output tokens at a time: the most any
    # one stream can overshoot a budget by.
    budget_lease_tokens: int = 256

    @property
    def any(self) -> bool:
        """Whether any limit is configured (keys may still carry their own)."""
        return any(
            v is not None
            for v in (self.key_rpm, self.key_tpm, self.key_concurrent, self.ip_rpm, self.global_rps)
        )


CACHE_MODES = ("off", "deterministic", "all")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The exact-match response cache and the coalescing of identical requests in flight."""

    mode: str = "deterministic"  # off | deterministic (temperature 0 or a seed) | all
    scope: str = "key"  # key: each API key sees its own entries | global
    ttl: float = 300.0
    model_ttls: tuple[tuple[str, float], ...] = ()
    max_object_bytes: int = 1024 * 1024
    max_entries: int = 10_000  # in memory
    max_bytes: int = 256 * 1024 * 1024  # in memory
    backend: str = "auto"  # auto (Redis when the store is Redis) | memory | redis
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
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # an OTLP/HTTP traces URL
    service_name: str = "llm-gateway"
    sample_ratio: float = 1.0  # of the traces that do not arrive sampled by the client already
    capture_prompts: bool = False  # prompts and answers as span attributes: off, they may be secret


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration of one gateway instance."""

    server: ServerSettings
    deployments: Mapping[str, Deployment]
    models: Mapping[str, ModelRoute]
    source: str = "embedded defaults"
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


# -- loading -------------------------------------------------------------------------------------

_SERVER_KEYS = {f.name for f in dataclasses.fields(ServerSettings)}
_TOP_LEVEL_KEYS = {
    "server",
    "deployments",
    "models",
    "store",
    "stats",
    "auth",
    "routing",
    "limits",
    "cache",
    "streams",
    "telemetry",
    "prices",
}
_SECTION_CLASSES: dict[str, Any] = {
    "limits": LimitSettings,
    "cache": CacheSettings,
    "streams": StreamSettings,
    "telemetry": TelemetrySettings,
}
# Short environment names for settings people set most: LLM_GATEWAY_REDIS_URL and so on.
_ENV_ALIASES = {
    "redis_url": ["store", "redis_url"],
    "database_url": ["store", "url"],
    "master_key": ["auth", "master_key"],
}
_RAW_STRING_KEYS = {"redis_url", "url", "master_key", "api_key", "path", "spool_dir"}
UPSTREAM_TYPE_NAMES = ("openai", "azure", "anthropic", "gemini")
_DEPLOYMENT_KEYS = {
    "type",
    "api_version",
    "base_url",
    "api_key",
    "api_keys",
    "models",
    "timeouts",
    "max_connections",
    "weight",
    "breaker",
}
_ROUTE_KEYS = {"deployments", "upstream_model", "strategy", "fallbacks", "hedge"}


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the frozen Config from defaults, an optional YAML file, the environment and overrides.

    ``overrides`` are command-line values (already typed), applied last, under the same paths.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "embedded defaults"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path))
    env_layer, env_names = _environment_layer(environ)
    _merge(raw, env_layer)
    if overrides:
        _merge(raw, dict(overrides))
    if env_layer and path is None:
        source = "environment"
    try:
        return _build(raw, source, environ)
    except ConfigError as exc:
        raise _blame_variable(exc, source, env_names) from None


def _blame_variable(exc: ConfigError, source: str, env_names: Mapping[str, str]) -> ConfigError:
    """An error about a value the environment set names the variable, not the file."""
    message = str(exc)
    if not message.startswith(f"{source}: "):
        return exc
    rest = message[len(source) + 2 :]
    key = rest.split(":", 1)[0]
    for dotted in sorted(env_names, key=len, reverse=True):
        if key == dotted or key.startswith((dotted + ".", dotted + "[")):
            return ConfigError(f"environment {env_names[dotted]}: {rest}")
    return exc


def passthrough_overrides(upstream_url: str, key_env: str | None) -> dict[str, Any]:
    """Overrides putting one OpenAI-compatible upstream behind the gateway, any model passed on."""
    deployment: dict[str, Any] = {"base_url": upstream_url}
    if key_env:
        deployment["api_key"] = f"env:{key_env}"
    return {
        "deployments": {"upstream": deployment},
        "models": {WILDCARD_MODEL: {"deployments": ["upstream"]}},
    }


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return loaded


def environment_setting(name: str) -> list[str] | None:
    """The setting path an ``LLM_GATEWAY_*`` variable sets, or None when it sets none."""
    if not name.startswith(ENV_PREFIX):
        return None
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    if len(parts) == 1 and parts[0] in _ENV_ALIASES:
        return list(_ENV_ALIASES[parts[0]])
    if parts[0] in _TOP_LEVEL_KEYS:
        return parts
    if parts[0] in _SERVER_KEYS:
        return ["server", *parts]
    return None


# LLM_GATEWAY_* variables that are read elsewhere and are not settings.
ENV_NOT_SETTINGS = frozenset({"LLM_GATEWAY_CONFIG"})
_SECTION_FIELDS: dict[str, set[str]] = {
    "server": _SERVER_KEYS,
    # From the dataclasses, so a new setting is settable from the environment at once.
    "store": {f.name for f in dataclasses.fields(StoreSettings)},
    "stats": {f.name for f in dataclasses.fields(StatsSettings)},
    "auth": {f.name for f in dataclasses.fields(AuthSettings)},
    "routing": {"retries", "key_cooldown", "breaker"},
}
_BREAKER_KEYS = {"failures", "recovery", "probes"}


def _known_path(parts: list[str]) -> bool:
    """Whether a setting path from the environment names something a config file could set."""
    top, rest = parts[0], parts[1:]
    if not rest:
        return True
    if top in ("deployments", "models"):
        if len(rest) == 1:
            return True
        if top == "models":
            return len(rest) == 2 and rest[1] in _ROUTE_KEYS
        nested = {"timeouts": {"connect", "first_byte", "idle"}, "breaker": _BREAKER_KEYS}
        return rest[1] in _DEPLOYMENT_KEYS and (
            len(rest) == 2 or (len(rest) == 3 and rest[2] in nested.get(rest[1], set()))
        )
    fields = _SECTION_FIELDS.get(top)
    if fields is None and top in _SECTION_CLASSES:
        fields = {f.name for f in dataclasses.fields(_SECTION_CLASSES[top])}
    if fields is None:
        return True  # a section checked by its own builder (its errors name the key)
    if rest[0] not in fields:
        return False
    if top == "routing" and len(rest) == 2:
        inner = (
            {f.name for f in dataclasses.fields(RetrySettings)}
            if rest[0] == "retries"
            else (_BREAKER_KEYS if rest[0] == "breaker" else set())
        )
        return rest[1] in inner
    return len(rest) == 1 or (top == "cache" and rest[0] == "model_ttls" and len(rest) == 2)


def _environment_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the environment sets, and which variable set each (dotted path -> name).

    An ``LLM_GATEWAY_*`` variable that sets nothing, or is set to nothing, is an error: a typo
    must not start a gateway with a setting silently at its default (auth off, say).
    """
    layer: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        parts = environment_setting(name)
        if parts is None or not _known_path(parts):
            raise ConfigError(
                f"environment {name}: no such setting (variables are LLM_GATEWAY_ plus a "
                "setting's path with __ between levels, e.g. LLM_GATEWAY_AUTH__MODE)"
            )
        if not text.strip():
            raise ConfigError(f"environment {name}: empty; unset it or give it a value")
        names[".".join(parts)] = name
        try:
            value = text if parts[-1] in _RAW_STRING_KEYS else yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {name}: not a valid value: {exc}") from exc
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return layer, names


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _build(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    _reject_unknown(raw, _TOP_LEVEL_KEYS, "", source)
    server = _build_server(_mapping(raw.get("server", {}), "server", source), source)
    routing = _build_routing(_mapping(raw.get("routing", {}), "routing", source), source)
    deployments_raw = _mapping(raw.get("deployments", {}), "deployments", source)
    if not deployments_raw:
        deployments_raw = {DEFAULT_DEMO_MODEL: {"base_url": MOCK_BASE_URL, "models": ["demo"]}}
    deployments = {
        name: _build_deployment(str(name), spec, source, environ, routing.breaker)
        for name, spec in deployments_raw.items()
    }
    models = _build_models(_mapping(raw.get("models", {}), "models", source), deployments, source)
    return Config(
        server=server,
        deployments=deployments,
        models=models,
        source=source,
        store=_build_store(_mapping(raw.get("store", {}), "store", source), source, environ),
        stats=_build_stats(_mapping(raw.get("stats", {}), "stats", source), source),
        auth=_build_auth(_mapping(raw.get("auth", {}), "auth", source), source, environ),
        routing=routing,
        limits=_build_limits(_mapping(raw.get("limits", {}), "limits", source), source),
        cache=_build_cache(_mapping(raw.get("cache", {}), "cache", source), source),
        streams=_build_streams(_mapping(raw.get("streams", {}), "streams", source), source),
        telemetry=_build_telemetry(_mapping(raw.get("telemetry", {}), "telemetry", source), source),
        prices=_build_prices(_mapping(raw.get("prices", {}), "prices", source), source),
    )


def _build_prices(raw: Mapping[str, Any], source: str) -> dict[str, Price]:
    """``MODEL: {input: 2.5, cached_input: 1.25, output: 10}``, USD per million tokens."""
    prices: dict[str, Price] = {}
    for model, spec_raw in raw.items():
        key = f"prices.{model}"
        spec = _mapping(spec_raw, key, source)
        _reject_unknown(spec, {"input", "cached_input", "output"}, f"{key}.", source)
        for required in ("input", "output"):
            if required not in spec:
                raise ConfigError(f"{source}: {key}.{required}: required (USD per million tokens)")
        cached = spec.get("cached_input")
        prices[str(model)] = Price(
            input=_non_negative_price(spec["input"], f"{key}.input", source),
            output=_non_negative_price(spec["output"], f"{key}.output", source),
            cached_input=None
            if cached is None
            else _non_negative_price(cached, f"{key}.cached_input", source),
        )
    return prices


def _non_negative_price(value: Any, key: str, source: str) -> float:
    _check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e6,
        value, key, source, "a price in USD per million tokens (0 or more)",
    )  # fmt: skip
    return float(value)


def default_store_path(environ: Mapping[str, str]) -> Path:
    """The per-user SQLite file: ``$XDG_STATE_HOME/llm-gateway/``, else ``~/.local/state/...``."""
    state = environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "llm-gateway" / DEFAULT_STORE_FILE


def _build_telemetry(raw: Mapping[str, Any], source: str) -> TelemetrySettings:
    known = {f.name for f in dataclasses.fields(TelemetrySettings)}
    _reject_unknown(raw, known, "telemetry.", source)
    values: dict[str, Any] = {}
    for name in ("enabled", "capture_prompts"):
        if name in raw:
            values[name] = _boolean(raw[name], f"telemetry.{name}", source)
    if "endpoint" in raw:
        endpoint = _string(raw["endpoint"], "telemetry.endpoint", source)
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"{source}: telemetry.endpoint: must be an http:// or https:// OTLP/HTTP URL"
            )
        values["endpoint"] = endpoint
    if "service_name" in raw:
        values["service_name"] = _string(raw["service_name"], "telemetry.service_name", source)
    if "sample_ratio" in raw:
        ratio = _positive(raw["sample_ratio"], "telemetry.sample_ratio", source)
        if ratio > 1:
            raise ConfigError(f"{source}: telemetry.sample_ratio: must be at most 1, got {ratio}")
        values["sample_ratio"] = ratio
    return TelemetrySettings(**values)


def _build_streams(raw: Mapping[str, Any], source: str) -> StreamSettings:
    _reject_unknown(raw, {f.name for f in dataclasses.fields(StreamSettings)}, "streams.", source)
    values: dict[str, Any] = {}
    if "resumable" in raw:
        values["resumable"] = _boolean(raw["resumable"], "streams.resumable", source)
    for name in ("models", "keys"):
        if name in raw:
            values[name] = _strings(raw[name], f"streams.{name}", source)
    for name in ("grace", "retention"):
        if name in raw:
            values[name] = _positive(raw[name], f"streams.{name}", source)
    for name in ("max_events", "max_streams", "max_per_key"):
        if name in raw:
            values[name] = _integer(raw[name], f"streams.{name}", source, minimum=1)
    return StreamSettings(**values)


def _build_cache(raw: Mapping[str, Any], source: str) -> CacheSettings:
    _reject_unknown(raw, {f.name for f in dataclasses.fields(CacheSettings)}, "cache.", source)
    values: dict[str, Any] = {}
    for name, allowed in (
        ("mode", CACHE_MODES),
        ("scope", ("key", "global")),
        ("backend", ("auto", "memory", "redis")),
    ):
        if name in raw:
            value = "off" if raw[name] is False else raw[name]
            if value not in allowed:
                raise ConfigError(
                    f"{source}: cache.{name}: must be one of {', '.join(allowed)}, "
                    f"got {_shown(value)}"
                )
            values[name] = value
    for name in ("ttl", "redis_timeout"):
        if name in raw:
            values[name] = _positive(raw[name], f"cache.{name}", source)
    for name in ("max_object_bytes", "max_entries", "max_bytes"):
        if name in raw:
            values[name] = _integer(raw[name], f"cache.{name}", source, minimum=1)
    if "coalesce" in raw:
        values["coalesce"] = _boolean(raw["coalesce"], "cache.coalesce", source)
    ttls = _mapping(raw.get("model_ttls", {}), "cache.model_ttls", source)
    values["model_ttls"] = tuple(
        (str(model), _positive(ttl, f"cache.model_ttls.{model}", source))
        for model, ttl in ttls.items()
    )
    return CacheSettings(**values)


def _build_limits(raw: Mapping[str, Any], source: str) -> LimitSettings:
    _reject_unknown(raw, {f.name for f in dataclasses.fields(LimitSettings)}, "limits.", source)
    values: dict[str, Any] = {}
    for name in ("key_rpm", "key_tpm", "key_concurrent", "ip_rpm", "global_rps"):
        if raw.get(name) is not None:
            values[name] = _integer(raw[name], f"limits.{name}", source, minimum=1)
    for name in ("default_max_tokens", "budget_lease_tokens"):
        if name in raw:
            values[name] = _integer(raw[name], f"limits.{name}", source, minimum=1)
    if raw.get("client_ip_header") is not None:
        values["client_ip_header"] = _string(
            raw["client_ip_header"], "limits.client_ip_header", source
        )
    for name in ("redis_timeout", "stream_lease"):
        if name in raw:
            values[name] = _positive(raw[name], f"limits.{name}", source)
    return LimitSettings(**values)


def _build_breaker(raw: Any, key: str, source: str, base: BreakerSettings) -> BreakerSettings:
    spec = _mapping(raw, key, source)
    _reject_unknown(spec, {"failures", "recovery", "probes"}, f"{key}.", source)
    return BreakerSettings(
        failures=_integer(
            spec.get("failures", base.failures), f"{key}.failures", source, minimum=1
        ),
        recovery=_positive(spec.get("recovery", base.recovery), f"{key}.recovery", source),
        probes=_integer(spec.get("probes", base.probes), f"{key}.probes", source, minimum=1),
    )


def _build_routing(raw: Mapping[str, Any], source: str) -> RoutingSettings:
    _reject_unknown(raw, {"retries", "key_cooldown", "breaker"}, "routing.", source)
    retries_raw = _mapping(raw.get("retries", {}), "routing.retries", source)
    known = {f.name for f in dataclasses.fields(RetrySettings)}
    _reject_unknown(retries_raw, known, "routing.retries.", source)
    base = RetrySettings()
    values: dict[str, Any] = {}
    for name in ("attempts", "budget_min"):
        if name in retries_raw:
            values[name] = _integer(retries_raw[name], f"routing.retries.{name}", source, minimum=1)
    for name in ("backoff_base", "backoff_max", "budget_ratio", "max_time"):
        if name in retries_raw:
            values[name] = _positive(retries_raw[name], f"routing.retries.{name}", source)
    if "statuses" in retries_raw:
        statuses = retries_raw["statuses"]
        _check(
            lambda v: isinstance(v, list) and all(isinstance(s, int) and 400 <= s < 600 for s in v),
            statuses, "routing.retries.statuses", source, "a list of HTTP error statuses",
        )  # fmt: skip
        values["statuses"] = tuple(statuses)
    return RoutingSettings(
        retries=dataclasses.replace(base, **values),
        key_cooldown=_positive(raw.get("key_cooldown", 30.0), "routing.key_cooldown", source),
        breaker=_build_breaker(
            raw.get("breaker", {}), "routing.breaker", source, BreakerSettings()
        ),
    )


def _build_store(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> StoreSettings:
    known = {"path", "url", "pool_size", "redis_url", "redis_prefix", "timeout"}
    _reject_unknown(raw, known, "store.", source)
    values: dict[str, Any] = {"path": str(default_store_path(environ))}
    if "path" in raw:
        values["path"] = _string(raw["path"], "store.path", source)
    if raw.get("url") is not None:
        url = _secret(raw["url"], "store.url", source, environ)
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{source}: store.url: must start with postgresql:// or postgres://")
        values["url"] = url
    if "pool_size" in raw:
        values["pool_size"] = _integer(raw["pool_size"], "store.pool_size", source, minimum=1)
    if raw.get("redis_url") is not None:
        url = _secret(raw["redis_url"], "store.redis_url", source, environ)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"{source}: store.redis_url: must start with redis://, rediss:// or unix://"
            )
        values["redis_url"] = url
    if "redis_prefix" in raw:
        values["redis_prefix"] = _string(raw["redis_prefix"], "store.redis_prefix", source)
    if "timeout" in raw:
        values["timeout"] = _positive(raw["timeout"], "store.timeout", source)
    return StoreSettings(**values)


def _build_stats(raw: Mapping[str, Any], source: str) -> StatsSettings:
    known = {"flush_interval", "flush_events", "buffer_size", "max_pending_batches", "spool_dir",
             "fsync_interval", "bus", "consume", "claim_after"}  # fmt: skip
    _reject_unknown(raw, known, "stats.", source)
    values: dict[str, Any] = {}
    for key in ("flush_interval", "fsync_interval", "claim_after"):
        if key in raw:
            values[key] = _positive(raw[key], f"stats.{key}", source)
    for key in ("bus", "consume"):
        if key in raw:
            values[key] = _boolean(raw[key], f"stats.{key}", source)
    if "spool_dir" in raw:
        values["spool_dir"] = _string(raw["spool_dir"], "stats.spool_dir", source)
    for key in ("flush_events", "buffer_size", "max_pending_batches"):
        if key in raw:
            values[key] = _integer(raw[key], f"stats.{key}", source, minimum=1)
    return StatsSettings(**values)


MIN_MASTER_KEY_LENGTH = 32


def _build_auth(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> AuthSettings:
    _reject_unknown(raw, {"mode", "master_key", "cache_ttl"}, "auth.", source)
    values: dict[str, Any] = {}
    if "mode" in raw:
        mode = raw["mode"]
        if mode is True or mode is False:
            mode = "on" if mode else "off"
        if mode not in {"auto", "on", "off"}:
            raise ConfigError(f"{source}: auth.mode: must be auto, on or off, got {_shown(mode)}")
        values["mode"] = mode
    if raw.get("master_key") is not None:
        values["master_key"] = _secret(raw["master_key"], "auth.master_key", source, environ)
    if "cache_ttl" in raw:
        values["cache_ttl"] = _positive(raw["cache_ttl"], "auth.cache_ttl", source)
    return AuthSettings(**values)


def _build_server(raw: Mapping[str, Any], source: str) -> ServerSettings:
    _reject_unknown(raw, _SERVER_KEYS, "server.", source)
    defaults = ServerSettings()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerSettings):
        if f.name not in raw:
            continue
        key = f"server.{f.name}"
        default = getattr(defaults, f.name)
        value = raw[f.name]
        if f.name == "mock_overrides":
            value = {True: "on", False: "off"}.get(value, value)
            _check(lambda v: v in ("auto", "on", "off"), value, key, source, "auto, on or off")
            values[f.name] = value
        elif f.name == "drain_announce":
            values[f.name] = _non_negative(value, key, source)
        elif isinstance(default, bool):
            values[f.name] = _boolean(value, key, source)
        elif isinstance(default, int):
            low = 0 if f.name in ("port", "max_streams") else 1
            values[f.name] = _integer(value, key, source, minimum=low)
        elif isinstance(default, float):
            values[f.name] = _positive(value, key, source)
        elif isinstance(default, tuple):
            values[f.name] = _strings(value, key, source)
        else:
            values[f.name] = _string(value, key, source)
    if values.get("port", 0) > 65535:
        raise ConfigError(f"{source}: server.port: must be at most 65535, got {values['port']}")
    level = values.get("log_level", defaults.log_level).lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ConfigError(
            f"{source}: server.log_level: must be debug, info, warning or error, got {level!r}"
        )
    values["log_level"] = level
    if not values.get("max_streams"):
        values["max_streams"] = streams_per_worker()
    return ServerSettings(**values)


def _build_deployment(
    name: str, raw: Any, source: str, environ: Mapping[str, str], breaker: BreakerSettings
) -> Deployment:
    prefix = f"deployments.{name}"
    spec = _mapping(raw, prefix, source)
    _reject_unknown(spec, _DEPLOYMENT_KEYS, f"{prefix}.", source)
    if "base_url" not in spec:
        raise ConfigError(f"{source}: {prefix}.base_url: required")
    base_url = _string(spec["base_url"], f"{prefix}.base_url", source).rstrip("/")
    if base_url != MOCK_BASE_URL.rstrip("/") and not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source}: {prefix}.base_url: must start with http:// or https:// "
            f"(or be {MOCK_BASE_URL}), got {base_url!r}"
        )
    if base_url == MOCK_BASE_URL.rstrip("/"):
        base_url = MOCK_BASE_URL
    timeouts_raw = _mapping(spec.get("timeouts", {}), f"{prefix}.timeouts", source)
    _reject_unknown(timeouts_raw, {"connect", "first_byte", "idle"}, f"{prefix}.timeouts.", source)
    timeouts = Timeouts(
        **{
            key: _positive(value, f"{prefix}.timeouts.{key}", source)
            for key, value in timeouts_raw.items()
        }
    )
    keys: list[str] = []
    if spec.get("api_key") is not None:
        keys.append(_secret(spec["api_key"], f"{prefix}.api_key", source, environ))
    for index, item in enumerate(_strings(spec.get("api_keys", []), f"{prefix}.api_keys", source)):
        keys.append(_secret(item, f"{prefix}.api_keys[{index}]", source, environ))
    return Deployment(
        name=name,
        base_url=base_url,
        api_key=keys[0] if keys else None,
        api_keys=tuple(keys),
        breaker=_build_breaker(spec.get("breaker", {}), f"{prefix}.breaker", source, breaker),
        models=_strings(spec.get("models", []), f"{prefix}.models", source),
        timeouts=timeouts,
        max_connections=_integer(
            spec.get("max_connections", streams_per_worker()),
            f"{prefix}.max_connections",
            source,
            minimum=1,
        ),
        weight=_positive(spec.get("weight", 1.0), f"{prefix}.weight", source),
        type=_choice(spec.get("type", "openai"), UPSTREAM_TYPE_NAMES, f"{prefix}.type", source),
        api_version=None
        if spec.get("api_version") is None
        else _string(spec["api_version"], f"{prefix}.api_version", source),
    )


def _build_models(
    raw: Mapping[str, Any], deployments: Mapping[str, Deployment], source: str
) -> dict[str, ModelRoute]:
    models: dict[str, ModelRoute] = {}
    for deployment in deployments.values():
        for model in deployment.models:
            existing = models.get(model)
            names = (existing.deployments if existing else ()) + (deployment.name,)
            models[model] = ModelRoute(name=model, deployments=names)
    for name, spec_raw in raw.items():
        prefix = f"models.{name}"
        spec = _mapping(spec_raw, prefix, source)
        _reject_unknown(spec, _ROUTE_KEYS, f"{prefix}.", source)
        targets = _strings(spec.get("deployments", []), f"{prefix}.deployments", source)
        if not targets:
            raise ConfigError(f"{source}: {prefix}.deployments: name at least one deployment")
        for target in targets:
            if target not in deployments:
                known = ", ".join(sorted(deployments)) or "none"
                raise ConfigError(
                    f"{source}: {prefix}.deployments: unknown deployment {target!r} "
                    f"(known: {known})"
                )
        upstream = spec.get("upstream_model")
        strategy = spec.get("strategy", "weighted")
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"{source}: {prefix}.strategy: must be one of {', '.join(STRATEGIES)}, "
                f"got {_shown(strategy)}"
            )
        models[str(name)] = ModelRoute(
            name=str(name),
            deployments=targets,
            upstream_model=None
            if upstream is None
            else _string(upstream, f"{prefix}.upstream_model", source),
            strategy=strategy,
            fallbacks=_strings(spec.get("fallbacks", []), f"{prefix}.fallbacks", source),
            hedge=_build_hedge(spec["hedge"], f"{prefix}.hedge", source)
            if spec.get("hedge") is not None
            else None,
        )
    for route in models.values():
        for fallback in route.fallbacks:
            if fallback not in models or fallback == route.name:
                raise ConfigError(
                    f"{source}: models.{route.name}.fallbacks: {fallback!r} is not another model"
                )
    return models


def _build_hedge(raw: Any, key: str, source: str) -> HedgeSettings:
    spec = _mapping(raw, key, source)
    _reject_unknown(spec, {"after", "max_extra"}, f"{key}.", source)
    after_raw = spec.get("after", "p95")
    after = None if after_raw == "p95" else _positive(after_raw, f"{key}.after", source)
    extra = _integer(spec.get("max_extra", 1), f"{key}.max_extra", source, minimum=1)
    return HedgeSettings(after=after, max_extra=extra)


# -- value checks ---------------------------------------------------------------------------------


def _choice(value: Any, choices: tuple[str, ...], key: str, source: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"{source}: {key}: must be one of {', '.join(choices)}, got {_shown(value)}"
        )
    return str(value)


def _reject_unknown(raw: Mapping[str, Any], known: set[str], prefix: str, source: str) -> None:
    for key in raw:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{source}: {prefix}{key}: unknown setting (expected one of: {hint})")


def _mapping(value: Any, key: str, source: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key}: expected a mapping, got {_shown(value)}")
    return value


def _check(
    predicate: Callable[[Any], bool], value: Any, key: str, source: str, expected: str
) -> None:
    if not predicate(value):
        raise ConfigError(f"{source}: {key}: expected {expected}, got {_shown(value)}")


def _integer(value: Any, key: str, source: str, *, minimum: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    _check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
        value,
        key,
        source,
        f"a whole number of at least {minimum}",
    )
    return int(value)


def _positive(value: Any, key: str, source: str) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    _check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
        value,
        key,
        source,
        "a positive number",
    )
    return float(value)


def _non_negative(value: Any, key: str, source: str) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    _check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        value, key, source, "a number of seconds, 0 or more",
    )  # fmt: skip
    return float(value)


def _boolean(value: Any, key: str, source: str) -> bool:
    _check(lambda v: isinstance(v, bool), value, key, source, "true or false")
    return bool(value)


def _string(value: Any, key: str, source: str) -> str:
    _check(lambda v: isinstance(v, str) and v != "", value, key, source, "a non-empty string")
    return str(value)


def _strings(value: Any, key: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    _check(
        lambda v: isinstance(v, list) and all(isinstance(i, str) and i for i in v),
        value,
        key,
        source,
        "a list of strings",
    )
    return tuple(value)


def _secret(value: Any, key: str, source: str, environ: Mapping[str, str]) -> str:
    """A literal secret, or ``env:VAR`` read from the environment at start-up."""
    text = _string(value, key, source)
    if not text.startswith("env:"):
        return text
    variable = text[4:]
    resolved = environ.get(variable)
    if not resolved:
        raise ConfigError(f"{source}: {key}: environment variable {variable} is not set")
    return resolved


def _shown(value: Any) -> str:
    """A value for an error message: its type, never its content (it may be a secret)."""
    if isinstance(value, bool | int | float):
        return repr(value)
    return type(value).__name__ if not isinstance(value, str) else "a string"
