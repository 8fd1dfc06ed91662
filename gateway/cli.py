"""The ``llm-gateway`` command: each subcommand parses options and calls a plain function."""

from __future__ import annotations

import sys
from typing import Any

import click

from gateway.config import load_config, passthrough_overrides
from gateway.errors import ConfigError


@click.group()
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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    upstream: str | None,
    upstream_key_env: str | None,
    log_level: str | None,
) -> None:
    """Start the gateway (embedded defaults when no config: the built-in `demo` model)."""
    from gateway import supervisor

    if upstream_key_env and not upstream:
        raise click.UsageError("--upstream-key-env needs --upstream")
    overrides: dict[str, Any] = {}
    if upstream:
        overrides.update(passthrough_overrides(upstream, upstream_key_env))
    server = {
        k: v
        for k, v in {"host": host, "port": port, "workers": workers, "log_level": log_level}.items()
        if v is not None
    }
    if server:
        overrides["server"] = server
    try:
        config = load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        click.echo(f"llm-gateway: invalid configuration: {exc}", err=True)
        sys.exit(2)
    sys.exit(supervisor.run(config))


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file (with the LLM_GATEWAY_* environment applied) and summarise it."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: {path}")
    for deployment in config.deployments.values():
        click.echo(f"  deployment {deployment.name}: {deployment.base_url}")
    for route in config.models.values():
        target = ", ".join(route.deployments)
        upstream = f" as {route.upstream_model}" if route.upstream_model else ""
        click.echo(f"  model {route.name} -> {target}{upstream}")


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9090, show_default=True)
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Content chunks per completion.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Words per chunk.",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds between events.",
)
@click.option("--first-byte-delay", type=click.FloatRange(min=0), default=0.0, show_default=True)
def mock_upstream(
    host: str, port: int, chunks: int, chunk_size: int, delay: float, first_byte_delay: float
) -> None:
    """Run the built-in OpenAI-compatible mock upstream (demos, tests, benchmarks).

    Every request may override the behaviour with a "mock" object in its body or X-Mock-* headers
    (fail_status, fail_before_first_byte, die_after, stall_after, error_after, ...).
    """
    from gateway.mock import MockBehaviour
    from gateway.mockserver import run_mock

    behaviour = MockBehaviour(
        chunks=chunks, chunk_size=chunk_size, delay=delay, first_byte_delay=first_byte_delay
    )
    run_mock(host, port, behaviour)


if __name__ == "__main__":
    main()
