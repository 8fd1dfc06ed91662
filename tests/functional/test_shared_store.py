"""Redis as the shared store, metrics across workers, and secrets that never leak."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import MASTER_KEY, Proc, create_key, run_cli, write_config
from tests.functional.client import chat_body, read_stream
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]


def total_requests(env: dict[str, str]) -> int:
    result = run_cli("usage", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return sum(row["requests"] for row in orjson.loads(result.stdout))


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        return await response.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_redis_outage_of_30_s_under_load_loses_nothing(
    start_gateway,
    redis_server: RedisServer | None,
    redis_url: str,
    redis_prefix: str,
    keyed_env: dict[str, str],
) -> None:  # type: ignore[no-untyped-def]
    """Requests keep being served while Redis is down for 30 s; every event lands after."""
    assert redis_server is not None, "needs the suite's own redis-server (unset REDIS_URL)"
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_STORE__TIMEOUT": "0.5",
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "1",
    }
    _, key = create_key(env)
    proc: Proc = start_gateway(env=env, workers=2)
    auth = {"Authorization": f"Bearer {key}"}
    sent = ok = 0
    stop_at = time.monotonic() + 36
    outage = (time.monotonic() + 3, time.monotonic() + 33)
    while time.monotonic() < stop_at:
        now = time.monotonic()
        if redis_server.process is not None and outage[0] <= now < outage[1]:
            redis_server.stop()
        elif redis_server.process is None and now >= outage[1]:
            redis_server.start()
        result = await read_stream(
            proc.url + "/v1/chat/completions", chat_body(mock={"chunks": 2}), auth
        )
        sent += 1
        ok += result.done

        await asyncio.sleep(0.05)
    assert ok == sent  # served all along, from the key cache
    deadline = time.monotonic() + 30
    while total_requests(env) < sent:
        assert time.monotonic() < deadline, f"{total_requests(env)} of {sent} in the store"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)
    assert total_requests(env) == sent
    text = await scrape(proc.url)
    assert metric(text, "llm_gateway_stats_events_dropped_total") == 0
    assert metric(text, "llm_gateway_stats_flush_failures_total") > 0


async def test_metrics_are_summed_over_workers(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Every scrape, whichever worker answers it, counts the requests of both workers."""
    proc: Proc = start_gateway(workers=2)
    for _ in range(20):
        assert (await read_stream(proc.url + "/v1/chat/completions", chat_body())).done
    pids = {int(p) for p in re.findall(r'"msg":"worker ready".*?"pid":(\d+)', proc.log())}
    assert len(pids) == 2
    for _ in range(6):
        text = await scrape(proc.url)
        assert metric(text, "llm_gateway_requests_total", status="200", model="demo") == 20
        assert metric(text, "llm_gateway_completion_tokens_total", model="demo") == 20 * 24
        assert metric(text, "llm_gateway_active_streams") == 0
        assert metric(text, "llm_gateway_stream_terminations_total", cause="completed") == 20
    assert "llm_gateway_time_to_first_byte_seconds_bucket" in text


async def test_secrets_never_appear_in_logs_errors_metrics_or_store(
    start_gateway, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Canary client, upstream and master keys appear nowhere the gateway writes or answers."""
    upstream_canary = "sk-upstream-CANARY-7f3a9c1e5b"
    env = {
        **keyed_env,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.3",
        "UPSTREAM_CANARY": upstream_canary,
    }
    _, client_key = create_key(env)
    config = write_config(tmp_path, mock_upstream.url)
    config.write_text(config.read_text().replace("sk-upstream-test", "env:UPSTREAM_CANARY"))
    proc: Proc = start_gateway("--config", str(config), env=env)
    seen: list[str] = []
    good = {"Authorization": f"Bearer {client_key}"}
    bad = {"Authorization": f"Bearer {client_key[:-4]}XXXX"}
    bodies: list[dict[str, Any]] = [
        chat_body("mock-gpt"), chat_body("mock-gpt", stream=False),
        chat_body("mock-gpt", mock={"fail_status": 401}),
        chat_body("mock-gpt", mock={"error_after": 2}),
        chat_body("nope"), {"model": 3},
    ]  # fmt: skip
    for body in bodies:
        for headers in (good, bad):
            result = await read_stream(proc.url + "/v1/chat/completions", body, headers)
            seen.append(result.raw.decode() + str(result.headers))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {MASTER_KEY}"}) as session:
        for path in ("/admin/keys", "/admin/usage", "/metrics"):
            async with session.get(proc.url + path) as response:
                seen.append(await response.text())
    await asyncio.sleep(1.0)
    proc.stop()
    seen.append(proc.log())
    # The store and the usage spool (store.sqlite3.spool/) too.
    files = [p for p in tmp_path.rglob("store.sqlite3*") if p.is_file()]
    seen.extend(p.read_bytes().decode("latin-1") for p in files)
    for canary in (client_key, client_key[6:], upstream_canary, MASTER_KEY):
        assert not [text for text in seen if canary in text], f"leaked: {canary[:10]}..."
    access = [orjson.loads(line) for line in proc.log().splitlines() if '"gateway.access"' in line]
    assert access and all(re.fullmatch(r"[0-9a-f]{32}", entry["request_id"]) for entry in access)
