"""``LLM_GATEWAY_*`` environment variables: which setting each sets, strictly.

A variable names a setting by its path with ``__`` between levels (``LLM_GATEWAY_SERVER__PORT``);
server settings may drop the ``SERVER__`` part (``LLM_GATEWAY_PORT``), and a few settings people
set most have short names (``LLM_GATEWAY_REDIS_URL``). Values are read as YAML, except settings
whose rule says ``raw`` (URLs, paths, secrets), which are taken as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from gateway.config.schema import entries, setting_at
from gateway.config.settings import Config, ServerSettings
from gateway.errors import ConfigError

ENV_PREFIX = "LLM_GATEWAY_"
# LLM_GATEWAY_* variables that are read elsewhere and are not settings.
ENV_NOT_SETTINGS = frozenset({"LLM_GATEWAY_CONFIG"})
# Short names for settings people set most: LLM_GATEWAY_REDIS_URL and so on.
SHORT_NAMES = {
    "redis_url": ["store", "redis_url"],
    "database_url": ["store", "url"],
    "master_key": ["auth", "master_key"],
}


def environment_setting(name: str) -> list[str] | None:
    """The setting path an ``LLM_GATEWAY_*`` variable sets, or None when it sets none."""
    if not name.startswith(ENV_PREFIX):
        return None
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    if len(parts) == 1 and parts[0] in SHORT_NAMES:
        return list(SHORT_NAMES[parts[0]])
    if parts[0] in entries(Config):
        return parts
    if parts[0] in entries(ServerSettings):
        return ["server", *parts]
    return None


def _known_path(parts: list[str]) -> bool:
    """Whether a setting path from the environment names something a config file could set."""
    return setting_at(parts) is not None


def environment_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
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
        entry = None if parts is None else setting_at(parts)
        if parts is None or entry is None:
            raise ConfigError(
                f"environment {name}: no such setting (variables are LLM_GATEWAY_ plus a "
                "setting's path with __ between levels, e.g. LLM_GATEWAY_AUTH__MODE)"
            )
        if not text.strip():
            raise ConfigError(f"environment {name}: empty; unset it or give it a value")
        names[".".join(parts)] = name
        try:
            value = text if entry.rule.raw else yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {name}: not a valid value: {exc}") from exc
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return layer, names
