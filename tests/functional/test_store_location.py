"""Where the key store is: one per-user file, whatever directory a command runs in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import MASTER_KEY, Proc, gateway_command


def isolated_env(state: Path) -> dict[str, str]:
    """The environment with a state directory of the test's own and no store path set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_GATEWAY_")}
    return {**env, "XDG_STATE_HOME": str(state)}


def test_keys_create_writes_the_per_user_store_not_the_working_directory(tmp_path: Path) -> None:
    """`keys create` in some directory puts the store under $XDG_STATE_HOME, not ./var."""
    state, elsewhere = tmp_path / "state", tmp_path / "project"
    elsewhere.mkdir()
    result = subprocess.run(
        gateway_command("keys", "create", "--name", "ops"), capture_output=True, text=True,
        env=isolated_env(state), cwd=elsewhere, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (state / "llm-gateway" / "llm-gateway.sqlite3").is_file()
    assert list(elsewhere.iterdir()) == []


def test_start_up_says_whether_auth_is_on_and_where_the_keys_are(
    start_gateway: Any, tmp_path: Path
) -> None:
    """With no key the log says auth is off; after `keys create` it says on, naming the store."""
    state = tmp_path / "state"
    env = {"LLM_GATEWAY_STORE__PATH": "", "XDG_STATE_HOME": str(state)}
    store = f"sqlite {state / 'llm-gateway' / 'llm-gateway.sqlite3'}"
    first: Proc = start_gateway(env=env)
    assert f"auth is off (no API key exists in {store})" in first.log()
    first.stop()
    created = subprocess.run(
        gateway_command("keys", "create", "--name", "ops"), capture_output=True, text=True,
        env=isolated_env(state), timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    second: Proc = start_gateway(env={**env, "LLM_GATEWAY_MASTER_KEY": MASTER_KEY})
    assert f"auth is on: 1 API key(s) exist in {store}" in second.log()
