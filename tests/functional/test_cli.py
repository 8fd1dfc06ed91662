"""The CLI as a user runs it: passthrough to one upstream, and check-config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp

from gateway.mock.answer import expected_text
from tests.conftest import Proc, gateway_command, write_config
from tests.functional.client import chat_body, read_stream


async def test_upstream_flag_passes_every_model_through(start_gateway, mock_upstream: Proc) -> None:  # type: ignore[no-untyped-def]
    """`serve --upstream URL --upstream-key-env VAR` forwards any model name with that key."""
    proc: Proc = start_gateway(
        "--upstream",
        mock_upstream.url + "/v1",
        "--upstream-key-env",
        "TEST_UPSTREAM_KEY",
        env={"TEST_UPSTREAM_KEY": "sk-passthrough-123"},
    )
    body = chat_body("whatever-model-name")
    result = await read_stream(proc.url + "/v1/chat/completions", body)
    assert result.done and result.text() == expected_text(body)
    async with (
        aiohttp.ClientSession() as session,
        session.get(mock_upstream.url + "/_mock/requests") as response,
    ):
        seen = (await response.json())[-1]
    assert seen["model"] == "whatever-model-name"
    assert seen["authorization"] == "Bearer sk-passthrough-123"
    assert "sk-passthrough-123" not in proc.log()


def test_check_config_accepts_and_rejects(tmp_path: Path) -> None:
    """check-config summarises a good file and names the key of a bad one, with exit codes."""
    good = write_config(tmp_path, "http://127.0.0.1:9")
    ok = subprocess.run(gateway_command("check-config", str(good)), capture_output=True, text=True)
    assert ok.returncode == 0
    assert "model alias -> mock as mock-gpt (weighted)" in ok.stdout
    assert "limits: none" in ok.stdout and "cache: deterministic" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: eighty\n")
    failed = subprocess.run(
        gateway_command("check-config", str(bad)), capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "server.port" in failed.stderr and "bad.yaml" in failed.stderr


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    """A bad value fails start-up with exit code 2 and a message naming the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  a:\n    base_url: ftp://nope\n")
    result = subprocess.run(
        gateway_command("serve", "--config", str(bad)), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "deployments.a.base_url" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_command_takes_dash_h_and_documents_every_option() -> None:
    """-h works like --help on every command, and no option lacks its help text."""
    import click

    from gateway.cli import main

    def commands(group: click.Group, path: list[str]) -> list[tuple[list[str], click.Command]]:
        found: list[tuple[list[str], click.Command]] = [(path, group)]
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found.extend(commands(command, [*path, name]))
            else:
                found.append(([*path, name], command))
        return found

    every = commands(main, [])
    assert len(every) > 8
    for path, command in every:
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in {"help", "version"}:
                assert param.help, f"llm-gateway {' '.join(path)} {param.opts[0]} has no help"
    for path in (["-h"], ["serve", "-h"], ["keys", "create", "-h"]):
        result = subprocess.run(gateway_command(*path), capture_output=True, text=True)
        assert result.returncode == 0 and "Usage: llm-gateway" in result.stdout, path
        assert "-h, --help" in result.stdout


def test_check_config_without_a_file_checks_the_environment(tmp_path: Path) -> None:
    """check-config with no PATH validates the LLM_GATEWAY_* environment and says so."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    plain = subprocess.run(gateway_command("check-config"), capture_output=True, text=True,
                           env={**env, "XDG_STATE_HOME": str(tmp_path)})  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "ok: embedded defaults" in plain.stdout and "model demo -> demo" in plain.stdout
    assert f"store: sqlite {tmp_path}/llm-gateway/llm-gateway.sqlite3" in plain.stdout
    ported = subprocess.run(gateway_command("check-config"), capture_output=True, text=True,
                            env={**env, "LLM_GATEWAY_PORT": "9001"})  # fmt: skip
    assert ported.returncode == 0 and "ok: environment" in ported.stdout
    bad = subprocess.run(gateway_command("check-config"), capture_output=True, text=True,
                         env={**env, "LLM_GATEWAY_PORT": "eighty"})  # fmt: skip
    assert bad.returncode == 1 and "server.port" in bad.stderr
