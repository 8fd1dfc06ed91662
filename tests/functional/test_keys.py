"""API keys end to end: the CLI makes them, the gateway enforces them, the admin API manages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import MASTER_KEY, Proc, create_key, run_cli, write_config
from tests.functional.client import chat_body


async def call(url: str, key: str | None, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


async def mock_requests(mock: Proc) -> int:
    async with aiohttp.ClientSession() as session, session.get(mock.url + "/_mock/stats") as r:
        return int((await r.json())["requests"])


async def test_every_bad_key_gets_the_same_401_and_no_upstream_call(
    start_gateway, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Missing, malformed, unknown, revoked and expired keys are indistinguishable 401s."""
    _, good = create_key(keyed_env)
    revoked_id, revoked = create_key(keyed_env)
    assert run_cli("keys", "revoke", revoked_id, env=keyed_env).returncode == 0
    _, expired = create_key(keyed_env, "--expires", "2020-01-01")
    proc: Proc = start_gateway(
        "--config", str(write_config(tmp_path, mock_upstream.url)), env=keyed_env
    )
    body = chat_body("mock-gpt", stream=False)
    unknown = "sk-gw-" + "A" * 43
    answers = [await call(proc.url, k, body) for k in (None, "garbage", unknown, revoked, expired)]
    assert {status for status, _ in answers} == {401}
    assert len({str(error) for _, error in answers}) == 1
    assert answers[0][1]["error"]["type"] == "authentication_error"
    assert await mock_requests(mock_upstream) == 0
    status, _ = await call(proc.url, good, body)
    assert status == 200 and await mock_requests(mock_upstream) == 1


async def test_model_limits_and_max_requests(
    start_gateway, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """A key limited to some models gets 403 for others; max-requests is a hard quota."""
    config = str(write_config(tmp_path, mock_upstream.url))
    _, key = create_key(
        keyed_env, "--config", config, "--models", "mock-gpt", "--max-requests", "2"
    )
    proc: Proc = start_gateway("--config", config, env=keyed_env)
    status, error = await call(proc.url, key, chat_body("alias", stream=False))
    assert status == 403 and error["error"]["type"] == "permission_error"
    statuses = [(await call(proc.url, key, chat_body("mock-gpt", stream=False)))[0] for _ in "abc"]
    assert statuses == [200, 200, 429]
    assert await mock_requests(mock_upstream) == 2


async def test_revocation_takes_effect_within_the_cache_ttl(
    start_gateway, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """A key revoked from the CLI stops working on a running gateway within 5 s."""
    key_id, key = create_key(keyed_env)
    proc: Proc = start_gateway(env=keyed_env)
    assert (await call(proc.url, key, chat_body(stream=False)))[0] == 200
    assert run_cli("keys", "revoke", key_id, env=keyed_env).returncode == 0
    started = time.monotonic()
    while (await call(proc.url, key, chat_body(stream=False)))[0] == 200:
        assert time.monotonic() - started < 7
        await asyncio.sleep(0.2)
    assert (await call(proc.url, key, chat_body(stream=False)))[0] == 401


async def test_admin_api(start_gateway, keyed_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The master key manages keys over HTTP; anything else gets 401."""
    proc: Proc = start_gateway(env={**keyed_env, "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.3"})
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/admin/keys") as r:
            assert r.status == 401
        async with session.post(
            proc.url + "/admin/keys",
            json={"name": "web", "models": ["demo"], "rpm": 5},
            headers=admin,
        ) as r:
            assert r.status == 201
            created = await r.json()
        assert created["key"].startswith("sk-gw-") and created["status"] == "active"
        assert (await call(proc.url, created["key"], chat_body(stream=False)))[0] == 200
        async with session.get(proc.url + "/admin/keys", headers=admin) as r:
            listed = (await r.json())["data"]
        assert [k["id"] for k in listed] == [created["id"]]
        assert all("key" not in k and "key_hash" not in k for k in listed)
        await asyncio.sleep(1.0)
        async with session.get(proc.url + f"/admin/keys/{created['id']}", headers=admin) as r:
            assert (await r.json())["usage"]["requests"] == 1
        async with session.get(proc.url + "/admin/usage", headers=admin) as r:
            rows = (await r.json())["data"]
        assert [(row["key_id"], row["requests"]) for row in rows] == [(created["id"], 1)]
        async with session.delete(proc.url + f"/admin/keys/{created['id']}", headers=admin) as r:
            assert (await r.json())["status"] == "revoked"
        async with session.post(proc.url + "/admin/keys", json={"name": 3}, headers=admin) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "name"


@pytest.mark.parametrize(("master", "said"), [(None, "no master key"), ("short-key", "weak")])
def test_start_up_refused_without_a_strong_master_key(
    tmp_path: Path, master: str | None, said: str
) -> None:
    """Once a key exists, a missing or weak master key stops `serve` with a clear message."""
    env = {"LLM_GATEWAY_STORE__PATH": str(tmp_path / "store.sqlite3")}
    create_key(env)
    if master:
        env["LLM_GATEWAY_MASTER_KEY"] = master
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode == 2
    assert said in result.stderr and "LLM_GATEWAY_MASTER_KEY" in result.stderr


def test_open_mode_says_so(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """The embedded default runs without keys and warns about it at start-up."""
    proc: Proc = start_gateway()
    assert "auth is off" in proc.log()
