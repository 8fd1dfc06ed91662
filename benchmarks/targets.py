"""The systems `make bench` measures side by side, started once for the whole run.

``mock``   the mock upstream answering the load client directly (the workload's own cost);
``relay``  the minimal aiohttp relay of benchmarks/relay.py (the framework's floor);
``off``    the gateway with its features off: no auth, no limits, no cache, no access log;
``on``     the gateway with its features on: an API key, per-key limits, stats into its store,
           metrics and the access log.
``before`` (``--before REF`` only) the gateway at git revision REF, features on as ``on``: run
           from that revision's source in the same virtualenv, for the issue's "x times today's".
Each system under test is pinned to CPU 0, its upstream mock and the load client to CPU 1.
Metrics and stats cannot be switched off: ``off`` still records both. Connection caps and load
shedding are the gateway's defaults (derived from the descriptor limit), as a user gets them.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.processes import BIN, Server, bench_env, start_gateway, start_mock, start_relay

TARGETS = ("mock", "relay", "before", "off", "on")
REPO = Path(__file__).resolve().parent.parent
SUT_CPU, CLIENT_CPU = 0, 1
HUGE = 10**9  # limits that are checked on every request but never reached

DEPLOYMENT = """
deployments:
  mock:
    base_url: http://127.0.0.1:{port}/v1
    models: [mock-gpt]
"""
FEATURES_OFF = """
server: {workers: 1, access_log: false, log_level: warning, backlog: 4096}
auth: {mode: "off"}
cache: {mode: "off"}
"""
FEATURES_ON = f"""
server: {{workers: 1, access_log: true, log_level: info, backlog: 4096}}
auth: {{mode: "on"}}
limits: {{key_rpm: {HUGE}, key_tpm: {HUGE}, key_concurrent: {HUGE}}}
"""


def create_key(config: Path, env: dict[str, str], command: list[str]) -> str:
    """A key with its own (unreachable) limits, made with ``llm-gateway keys create``."""
    result = subprocess.run(
        [*command, "keys", "create", "--config", str(config), "--name", "bench",
         "--rpm", str(HUGE), "--tpm", str(HUGE)],
        capture_output=True, text=True, timeout=60, env=bench_env(env), cwd=config.parent,
        check=True,
    )  # fmt: skip
    fields = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    return fields["key"].strip()


def gateway_on(
    upstream: Server, workdir: Path, *, name: str = "gateway-on", source: Path | None = None
) -> Server:
    """The gateway with every feature on, and a key of its own in its own store; from the
    ``source`` tree of another revision if given."""
    config = FEATURES_ON + DEPLOYMENT.format(port=upstream.port)
    env = {
        "LLM_GATEWAY_MASTER_KEY": secrets.token_urlsafe(32),
        "LLM_GATEWAY_STORE__PATH": str(workdir / f"{name}.sqlite3"),
    }
    command = [str(BIN / "llm-gateway")]
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the editable install of this checkout
        command = [str(BIN / "python"), "-m", "gateway"]
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    key = create_key(path, env, command)
    server = start_gateway(name, SUT_CPU, config, workdir, env, command)
    server.headers = {"Authorization": f"Bearer {key}"}
    server.upstream = upstream
    return server


def gateway_off(upstream: Server, workdir: Path) -> Server:
    """The gateway as a plain pass-through."""
    config = FEATURES_OFF + DEPLOYMENT.format(port=upstream.port)
    server = start_gateway("gateway-off", SUT_CPU, config, workdir)
    server.upstream = upstream
    return server


def source_of(revision: str, workdir: Path) -> Path:
    """The tree of ``revision`` of this repository, extracted under ``workdir``."""
    tree = workdir / "before-source"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, capture_output=True, check=True, timeout=60
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=60)
    return tree


@contextmanager
def started(
    names: tuple[str, ...], workdir: Path, before: str | None = None
) -> Iterator[dict[str, Server]]:
    """Start the named targets (and the upstream mock they share); stop them all on exit."""
    servers: list[Server] = []
    systems: dict[str, Server] = {}
    try:
        upstream = start_mock("mock-upstream", CLIENT_CPU, workdir)
        servers.append(upstream)
        makers = {
            "mock": lambda: start_mock("mock-direct", SUT_CPU, workdir),
            "relay": lambda: start_relay("relay", SUT_CPU, upstream, workdir),
            "off": lambda: gateway_off(upstream, workdir),
            "on": lambda: gateway_on(upstream, workdir),
            "before": lambda: gateway_on(
                upstream, workdir, name="gateway-before", source=source_of(str(before), workdir)
            ),
        }
        for name in names:
            if name == "before" and before is None:
                continue
            systems[name] = makers[name]()
            servers.append(systems[name])
        yield systems
    finally:
        for server in reversed(servers):
            server.stop()
