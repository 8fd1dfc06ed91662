"""Loading: embedded defaults, a YAML file, then ``LLM_GATEWAY_*`` variables, later ones winning.

Most sections are built by one function, :func:`build_section`, from their dataclass's fields and
rules (``settings.py``). Only deployments, models (with their fallbacks and hedging) and prices
have code of their own; checks across sections run last. Every invalid value raises
:class:`ConfigError` with a message naming the key and the file or variable it came from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.breaker import BreakerSettings
from gateway.config import checks
from gateway.config.checks import Invalid, mapping, reject_unknown
from gateway.config.env import environment_layer
from gateway.config.schema import Entry, entries
from gateway.config.settings import (
    DEFAULT_DEMO_MODEL,
    MOCK_BASE_URL,
    WILDCARD_MODEL,
    Config,
    Deployment,
    HedgeSettings,
    ModelRoute,
    RoutingSettings,
)
from gateway.errors import ConfigError
from gateway.prices import Price

log = logging.getLogger("gateway.config")
_S = TypeVar("_S")


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
    env_layer, env_names = environment_layer(environ)
    _merge(raw, env_layer)
    if overrides:
        _merge(raw, dict(overrides))
    if env_layer and path is None:
        source = "environment"
    try:
        return build_config(raw, source, environ)
    except Invalid as exc:
        raise ConfigError(_located(exc, source, env_names)) from None


def _located(exc: Invalid, source: str, env_names: Mapping[str, str]) -> str:
    """The message with where the value came from: the variable that set it, else the file."""
    for dotted in sorted(env_names, key=len, reverse=True):
        if exc.key == dotted or exc.key.startswith((dotted + ".", dotted + "[")):
            return f"environment {env_names[dotted]}: {exc}"
    return f"{source}: {exc}"


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


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def build_config(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    """The Config from merged raw settings; raises :class:`Invalid` naming the first bad key."""
    reject_unknown(raw, set(entries(Config)), "")
    routing = build_section(RoutingSettings, raw.get("routing"), "routing", environ)
    deployments_raw = mapping(raw.get("deployments"), "deployments")
    if not deployments_raw:
        deployments_raw = {DEFAULT_DEMO_MODEL: {"base_url": MOCK_BASE_URL, "models": ["demo"]}}
    deployments = {
        str(name): _deployment(str(name), spec, environ, routing.breaker)
        for name, spec in deployments_raw.items()
    }
    models = _models(mapping(raw.get("models"), "models"), deployments, environ)
    prices = _prices(mapping(raw.get("prices"), "prices"))
    built = {"routing": routing, "deployments": deployments, "models": models, "prices": prices}
    config = build_section(Config, raw, "", environ, given={"source": source, **built})
    check_across(config)
    return config


def check_across(config: Config) -> None:
    """Checks of one setting against another, made at load so the message names the file."""
    if config.cache.backend == "redis" and config.store.redis_url is None:
        raise Invalid("cache.backend", "redis needs Redis (store.redis_url, LLM_GATEWAY_REDIS_URL)")


def build_section(
    cls: type[_S],
    raw: Any,
    key: str,
    environ: Mapping[str, str],
    *,
    base: _S | None = None,
    given: Mapping[str, Any] | None = None,
) -> _S:
    """A section from its raw mapping, each value checked by its field's type and rule.

    ``key`` is the section's dotted path; fields in ``given`` were built by the caller. A field
    the mapping leaves out is computed by its ``auto`` rule; a nested section left out is built
    from nothing (so its own ``auto`` fields are computed); any other keeps ``base``'s value, or
    its default.
    """
    spec = mapping(raw, key)
    prefix = f"{key}." if key else ""
    table = entries(cls)
    reject_unknown(spec, set(table), prefix, listed={entry.name for entry in table.values()})
    values: dict[str, Any] = dict(given or {})
    for name, entry in table.items():
        if name != entry.name or name in values:
            continue  # a deprecated alias (read with its field), or built by the caller
        present = _present_name(spec, entry, prefix)
        if present is None:
            if entry.rule.auto is not None:
                values[name] = entry.rule.auto(environ)
            elif entry.section is not None and base is None:
                values[name] = build_section(entry.section, {}, prefix + name, environ)
            continue
        value = spec[present]
        if value is None and entry.optional:
            values[name] = None
            continue
        values[name] = parse_value(entry, value, prefix + present, environ)
        if not values[name] and entry.rule.auto is not None:
            values[name] = entry.rule.auto(environ)
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


def _present_name(spec: Mapping[str, Any], entry: Entry, prefix: str) -> str | None:
    """Under which name ``spec`` sets ``entry``: its own, its deprecated alias, or neither."""
    alias = entry.rule.alias
    if alias is None or alias not in spec:
        return entry.name if entry.name in spec else None
    if entry.name in spec:
        raise Invalid(f"{prefix}{alias}", f"renamed {entry.name}; set {prefix}{entry.name} only")
    log.warning("%s%s is deprecated: it is called %s%s now", prefix, alias, prefix, entry.name)
    return alias


def parse_value(entry: Entry, value: Any, key: str, environ: Mapping[str, str]) -> Any:
    """One value checked by its field's type and rule."""
    rule = entry.rule
    if rule.parse is not None:
        return rule.parse(value, key)
    if entry.section is not None:
        return build_section(entry.section, value, key, environ)
    kind = entry.kind
    parsed: Any
    if kind is bool:
        return checks.boolean(value, key)
    if kind is int:
        low = 1 if rule.minimum is None else int(rule.minimum)
        parsed = checks.integer(value, key, minimum=low)
    elif kind is float:
        zero = rule.minimum == 0
        parsed = checks.non_negative(value, key) if zero else checks.positive(value, key)
    elif kind is str and rule.choices:
        if rule.fold_case and isinstance(value, str):
            value = value.lower()
        return checks.choice(value, rule.choices, key)
    elif kind is str:
        parsed = checks.secret(value, key, environ) if rule.secret else checks.string(value, key)
        return checks.url(parsed, rule.schemes, key) if rule.schemes else parsed
    elif kind == tuple[str, ...]:
        return checks.strings(value, key)
    else:
        raise TypeError(f"{key}: no check for {kind!r}: give its field a parse rule")
    if rule.maximum is not None and parsed > rule.maximum:
        raise Invalid(key, f"must be at most {rule.maximum}, got {parsed}")
    return parsed


# -- the sections with code of their own ----------------------------------------------------------


def _deployment(
    name: str, raw: Any, environ: Mapping[str, str], breaker: BreakerSettings
) -> Deployment:
    prefix = f"deployments.{name}"
    spec = mapping(raw, prefix)
    reject_unknown(spec, set(entries(Deployment)), f"{prefix}.")
    if "base_url" not in spec:
        raise Invalid(f"{prefix}.base_url", "required")
    base_url = checks.string(spec["base_url"], f"{prefix}.base_url").rstrip("/")
    if base_url == MOCK_BASE_URL.rstrip("/"):
        base_url = MOCK_BASE_URL
    elif not base_url.startswith(("http://", "https://")):
        raise Invalid(
            f"{prefix}.base_url",
            f"must start with http:// or https:// (or be {MOCK_BASE_URL}), got {base_url!r}",
        )
    keys: list[str] = []
    if spec.get("api_key") is not None:
        keys.append(checks.secret(spec["api_key"], f"{prefix}.api_key", environ))
    for index, item in enumerate(checks.strings(spec.get("api_keys", []), f"{prefix}.api_keys")):
        keys.append(checks.secret(item, f"{prefix}.api_keys[{index}]", environ))
    own_breaker = build_section(
        BreakerSettings, spec.get("breaker"), f"{prefix}.breaker", environ, base=breaker
    )
    given = {"name": name, "base_url": base_url, "breaker": own_breaker}
    pool = {"api_key": keys[0] if keys else None, "api_keys": tuple(keys)}
    return build_section(Deployment, spec, prefix, environ, given={**given, **pool})


def _models(
    raw: Mapping[str, Any], deployments: Mapping[str, Deployment], environ: Mapping[str, str]
) -> dict[str, ModelRoute]:
    """Each deployment's own models, then the ``models:`` routes, then their fallbacks checked."""
    models: dict[str, ModelRoute] = {}
    for deployment in deployments.values():
        for model in deployment.models:
            existing = models.get(model)
            names = (existing.deployments if existing else ()) + (deployment.name,)
            models[model] = ModelRoute(name=model, deployments=names)
    for name, spec_raw in raw.items():
        models[str(name)] = _route(str(name), spec_raw, deployments, environ)
    for route in models.values():
        for fallback in route.fallbacks:
            if fallback not in models or fallback == route.name:
                raise Invalid(
                    f"models.{route.name}.fallbacks", f"{fallback!r} is not another model"
                )
    return models


def _route(
    name: str, raw: Any, deployments: Mapping[str, Deployment], environ: Mapping[str, str]
) -> ModelRoute:
    prefix = f"models.{name}"
    spec = mapping(raw, prefix)
    reject_unknown(spec, set(entries(ModelRoute)), f"{prefix}.")
    targets = checks.strings(spec.get("deployments", []), f"{prefix}.deployments")
    if not targets:
        raise Invalid(f"{prefix}.deployments", "name at least one deployment")
    for target in targets:
        if target not in deployments:
            known = ", ".join(sorted(deployments)) or "none"
            raise Invalid(
                f"{prefix}.deployments", f"unknown deployment {target!r} (known: {known})"
            )
    hedge = None
    if spec.get("hedge") is not None:
        hedge = _hedge(spec["hedge"], f"{prefix}.hedge", environ)
    given = {"name": name, "deployments": targets, "hedge": hedge}
    return build_section(ModelRoute, spec, prefix, environ, given=given)


def _hedge(raw: Any, key: str, environ: Mapping[str, str]) -> HedgeSettings:
    """``after``: seconds, or ``p95`` (the default): the deployment's own p95 to first event."""
    after = mapping(raw, key).get("after")
    seconds = None if after in (None, "p95") else checks.positive(after, f"{key}.after")
    return build_section(HedgeSettings, raw, key, environ, given={"after": seconds})


def _prices(raw: Mapping[str, Any]) -> dict[str, Price]:
    """``MODEL: {input: 2.5, cached_input: 1.25, output: 10}``, USD per million tokens."""
    prices: dict[str, Price] = {}
    for model, spec_raw in raw.items():
        key = f"prices.{model}"
        spec = mapping(spec_raw, key)
        reject_unknown(spec, set(entries(Price)), f"{key}.")
        for required in ("input", "output"):
            if required not in spec:
                raise Invalid(f"{key}.{required}", "required (USD per million tokens)")
        cached = spec.get("cached_input")
        prices[str(model)] = Price(
            input=checks.price(spec["input"], f"{key}.input"),
            output=checks.price(spec["output"], f"{key}.output"),
            cached_input=None if cached is None else checks.price(cached, f"{key}.cached_input"),
        )
    return prices
