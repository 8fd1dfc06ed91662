"""The CLI as a user runs it: passthrough to one upstream, and check-config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp

from gateway import mock
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
    assert result.done and result.text() == mock.expected_text(body)
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
