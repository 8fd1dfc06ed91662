"""The ``llm-gateway`` command: each subcommand parses options and calls a plain function."""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import orjson

from gateway import manage
from gateway.budget import Budget, Unit, parse_budget
from gateway.config import Config, load_config, passthrough_overrides
from gateway.errors import ConfigError
from gateway.keys import key_view, parse_expiry
from gateway.mock.command import mock_upstream
from gateway.store import StoreUnavailable, describe

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llm-gateway")
def main() -> None:
    """llm-gateway: many upstream LLMs behind one OpenAI-compatible streaming endpoint."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="LLM_GATEWAY_CONFIG",
    help="YAML config file (also LLM_GATEWAY_CONFIG).",
)
@click.option("--host", help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on; 0 picks a free one [default: 8080].")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [default: 1].")
@click.option(
    "--upstream",
    metavar="URL",
    help="Put one OpenAI-compatible upstream (e.g. http://host:8000/v1) behind the "
    "gateway, every model name passed through.",
)
@click.option(
    "--upstream-key-env", metavar="VAR", help="Environment variable holding the --upstream API key."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Lowest level logged (JSON lines on stderr) [default: info].",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="One JSON line per request (server.access_log) [default: on].",
)
@click.option(
    "--mock-overrides/--no-mock-overrides",
    default=None,
    help="Let requests shape the demo model with a 'mock' object or X-Mock-* headers "
    "[default: only when listening on loopback].",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    upstream: str | None,
    upstream_key_env: str | None,
    log_level: str | None,
    access_log: bool | None,
    mock_overrides: bool | None,
) -> None:
    """Start the gateway (embedded defaults when no config: the built-in `demo` model)."""
    from gateway import supervisor
    from gateway.capacity import raise_fd_limit

    raise_fd_limit()  # before the config: connection caps default to what the limit allows
    if upstream_key_env and not upstream:
        raise click.UsageError("--upstream-key-env needs --upstream")
    overrides: dict[str, Any] = {}
    if upstream:
        overrides.update(passthrough_overrides(upstream, upstream_key_env))
    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level,
        "access_log": access_log,
    }
    if mock_overrides is not None:
        given["mock_overrides"] = "on" if mock_overrides else "off"
    server = {k: v for k, v in given.items() if v is not None}
    if server:
        overrides["server"] = server
    try:
        config = load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        click.echo(f"llm-gateway: invalid configuration: {exc}", err=True)
        sys.exit(2)
    sys.exit(supervisor.run(config))


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
def check_config(path: str | None) -> None:
    """Validate a config file, or with no PATH the LLM_GATEWAY_* environment alone, and
    summarise what the gateway would run with."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: {config.source}")
    for deployment in config.deployments.values():
        click.echo(f"  deployment {deployment.name}: {deployment.base_url}")
    for route in config.models.values():
        target = ", ".join(route.deployments)
        upstream = f" as {route.upstream_model}" if route.upstream_model else ""
        extra = f" ({route.strategy}"
        extra += f", then {', '.join(route.fallbacks)})" if route.fallbacks else ")"
        click.echo(f"  model {route.name} -> {target}{upstream}{extra}")
    limits = config.limits
    set_limits = [f"{name}={value}" for name, value in limits.configured().items()]
    click.echo(f"  limits: {', '.join(set_limits) or 'none (keys may carry their own)'}")
    click.echo(
        f"  cache: {config.cache.mode}, scope {config.cache.scope}, ttl {config.cache.ttl:g} s"
    )
    streams = config.streams
    resumable = "all" if streams.resumable else ", ".join(streams.models) or "on request"
    click.echo(f"  resumable streams: {resumable}")
    click.echo(f"  store: {describe(config.store)}")
    telemetry = config.telemetry
    click.echo(f"  telemetry: {telemetry.endpoint if telemetry.enabled else 'off'}")


def _load(config_path: str | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"llm-gateway: invalid configuration: {exc}", err=True)
        sys.exit(2)


def _run(work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except StoreUnavailable as exc:
        click.echo(f"llm-gateway: the store cannot be used: {exc}", err=True)
        sys.exit(1)


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), envvar="LLM_GATEWAY_CONFIG",
    help="YAML config file (its store section says where keys live).",
)  # fmt: skip


@main.group()
def keys() -> None:
    """Create, list, show and revoke API keys (stored hashed; a key is shown once)."""


@keys.command("create")
@config_option
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--models", help="Comma-separated models the key may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute.")
@click.option("--max-requests", type=click.IntRange(min=1), help="Lifetime request quota.")
@click.option("--expires", metavar="24h|7d|DATE", help="Expiry: a duration or an ISO date.")
@click.option(
    "--budget-usd", "budget_usd", multiple=True, metavar="AMOUNT/PERIOD",
    help="A spend budget in USD per day, month or lifetime (25/month); repeatable.",
)  # fmt: skip
@click.option(
    "--budget-tokens", "budget_tokens", multiple=True, metavar="AMOUNT/PERIOD",
    help="A token budget per day, month or lifetime (100000/day); repeatable.",
)  # fmt: skip
def keys_create(
    config_path: str | None,
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    max_requests: int | None,
    expires: str | None,
    budget_usd: tuple[str, ...],
    budget_tokens: tuple[str, ...],
) -> None:
    """Create a key and print it once."""
    config = _load(config_path)
    budgets = _budgets(budget_usd, "usd", "--budget-usd") + _budgets(
        budget_tokens, "tokens", "--budget-tokens"
    )
    expires_at = None
    if expires:
        try:
            expires_at = parse_expiry(expires)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires") from None
    allowed = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    unknown = [m for m in allowed or () if config.route_for(m) is None]
    if unknown:
        raise click.BadParameter(
            f"not served by this gateway's configuration: {', '.join(unknown)}",
            param_hint="--models",
        )
    key, record = _run(
        manage.create_key(
            config, name, models=allowed, rpm=rpm, tpm=tpm, max_requests=max_requests,
            expires_at=expires_at, budgets=budgets,
        )
    )  # fmt: skip
    click.echo(f"id:  {record.id}")
    click.echo(f"key: {key}")
    click.echo("Store the key now: only its hash is kept, it cannot be shown again.", err=True)


def _budgets(texts: tuple[str, ...], unit: Unit, option: str) -> tuple[Budget, ...]:
    try:
        return tuple(parse_budget(text, unit) for text in texts)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@keys.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def keys_list(config_path: str | None, as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    views = [key_view(r) for r in _run(manage.list_keys(_load(config_path)))]
    if as_json:
        click.echo(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode())
        return
    columns = ("id", "name", "prefix", "status", "models", "rpm", "tpm", "max_requests")
    _table(columns, [[_shown(v[c]) for c in columns] for v in views])


@keys.command("show")
@config_option
@click.argument("key_id")
def keys_show(config_path: str | None, key_id: str) -> None:
    """Show one key and its usage counters."""
    found = _run(manage.show_key(_load(config_path), key_id))
    if found is None:
        click.echo(f"no key with id {key_id}", err=True)
        sys.exit(1)
    record, counters, spent = found
    for name, value in key_view(record).items():
        if name == "budgets":
            value = ", ".join(str(b) for b in record.budgets) or None
        click.echo(f"{name:14} {_shown(value)}")
    for budget, used in zip(record.budgets, spent, strict=True):
        amount = f"${used:.6f}" if budget.unit == "usd" else f"{used:g} tokens"
        click.echo(f"{'spent':14} {amount} of {budget} (stored usage, this window)")
    for name in ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors"):
        click.echo(f"{name:14} {getattr(counters, name)}")
    click.echo(f"{'last_used':14} {_shown(counters.last_used)}")


@keys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key (running gateways stop accepting it within the key cache TTL, 5 s)."""
    if not _run(manage.revoke_key(_load(config_path), key_id)):
        click.echo(f"no key with id {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")


@main.command()
@config_option
@click.option("--key", "key_id", help="Only this key id.")
@click.option("--model", help="Only this model.")
@click.option("--since", metavar="YYYY-MM-DD", help="From this day (UTC) on.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def usage(
    config_path: str | None,
    key_id: str | None,
    model: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """Usage per key, model and day (flushed by running gateways every 5 s)."""
    if since is not None:
        try:
            datetime.date.fromisoformat(since)
        except ValueError:
            raise click.BadParameter("expected YYYY-MM-DD", param_hint="--since") from None
    rows = _run(manage.usage(_load(config_path), key_id=key_id, model=model, since=since))
    if as_json:
        click.echo(orjson.dumps([r.view() for r in rows]).decode())
        return
    _table(USAGE_COLUMNS, [_usage_cells(r.view()) for r in rows])
    if any(r.estimated_cost_nanousd or r.unknown_cost_requests for r in rows):
        click.echo("cost_usd: ~ part estimated (the upstream reported no usage); "
                   "+N? requests of models without a price, not in it")  # fmt: skip


USAGE_COLUMNS = (
    "day", "key_id", "model", "requests", "prompt_tokens", "completion_tokens",
    "estimated_requests", "cache_hits", "errors", "cost_usd", "hedge_cost_usd",
)  # fmt: skip


def _usage_cells(view: dict[str, Any]) -> list[str]:
    """A usage row's table cells; its cost says when part of it is estimated or unknown."""
    cost = f"{view['cost_usd']:.6f}"
    if view["estimated_cost_usd"]:
        cost = "~" + cost
    if view["unknown_cost_requests"]:
        cost += f" +{view['unknown_cost_requests']}?"
    return [*(str(view[c]) for c in USAGE_COLUMNS[:-2]), cost, f"{view['hedge_cost_usd']:.6f}"]


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value > 1e9:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
    return str(value)


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> None:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if not rows:
        click.echo("(none)")


main.add_command(mock_upstream)


if __name__ == "__main__":
    main()
