"""Configuration: loaded once, validated fully, frozen.

Sources, later ones winning: embedded defaults, a YAML file, then ``LLM_GATEWAY_*`` environment
variables. An environment variable names a setting by its path with ``__`` between levels
(``LLM_GATEWAY_SERVER__PORT=9000``); server settings may drop the ``SERVER__`` part
(``LLM_GATEWAY_PORT``). Values are read as YAML, so lists and mappings work too
(``LLM_GATEWAY_SERVER__CORS_ORIGINS='[https://app.example]'``).

Every invalid value raises :class:`ConfigError` with a message naming the key and its source.

``settings.py`` holds the dataclasses, each field's rules beside it; ``load.py`` reads and builds
them (``schema.py`` is the table both read, ``checks.py`` the value checks, ``env.py`` the
environment variables).
"""

from gateway.config.env import (
    ENV_NOT_SETTINGS,
    ENV_PREFIX,
    _known_path,
    environment_setting,
)
from gateway.config.load import load_config, passthrough_overrides
from gateway.config.settings import (
    CACHE_MODES,
    DEFAULT_DEMO_MODEL,
    DEFAULT_STORE_FILE,
    MIN_MASTER_KEY_LENGTH,
    MOCK_BASE_URL,
    STRATEGIES,
    UPSTREAM_TYPE_NAMES,
    WILDCARD_MODEL,
    AuthSettings,
    CacheSettings,
    Config,
    Deployment,
    HedgeSettings,
    LimitSettings,
    ModelRoute,
    RetrySettings,
    RoutingSettings,
    ServerSettings,
    StatsSettings,
    StoreSettings,
    StreamSettings,
    TelemetrySettings,
    Timeouts,
    default_store_path,
)
from gateway.errors import ConfigError

__all__ = [
    "CACHE_MODES",
    "DEFAULT_DEMO_MODEL",
    "DEFAULT_STORE_FILE",
    "ENV_NOT_SETTINGS",
    "ENV_PREFIX",
    "MIN_MASTER_KEY_LENGTH",
    "MOCK_BASE_URL",
    "STRATEGIES",
    "UPSTREAM_TYPE_NAMES",
    "WILDCARD_MODEL",
    "AuthSettings",
    "CacheSettings",
    "Config",
    "ConfigError",
    "Deployment",
    "HedgeSettings",
    "LimitSettings",
    "ModelRoute",
    "RetrySettings",
    "RoutingSettings",
    "ServerSettings",
    "StatsSettings",
    "StoreSettings",
    "StreamSettings",
    "TelemetrySettings",
    "Timeouts",
    "_known_path",
    "default_store_path",
    "environment_setting",
    "load_config",
    "passthrough_overrides",
]
