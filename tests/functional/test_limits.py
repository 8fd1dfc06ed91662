"""Rate limits and admission control end to end: real gateway processes, a real mock upstream,
and for the shared limits a real redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Proc, create_key, write_config
from tests.functional.client import chat_body
from tests.functional.test_shared_store import metric, scrape
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]

URL = "/v1/chat/completions"


@pytest.fixture
def redis_env(redis_url: str, redis_prefix: str, keyed_env: dict[str, str]) -> dict[str, str]:
    """Keys in the suite's Redis, with a short store timeout."""
    return {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_STORE__TIMEOUT": "0.5",
    }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def upstream_requests(mock: Proc) -> int:
    async with aiohttp.ClientSession() as session, session.get(mock.url + "/_mock/stats") as r:
        return int((await r.json())["requests"])


async def post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def test_rpm_is_exact_across_two_workers_on_redis(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, redis_env: dict[str, str]
) -> None:
    """1,000 concurrent requests, a key with 100 rpm, 2 workers: 100 admitted, 900 get 429."""
    env = {k: v for k, v in redis_env.items() if k != "LLM_GATEWAY_STORE__TIMEOUT"}
    # The burst is about the limiter, not load shedding (tested in test_engine.py): a busy
    # machine must not turn some of the 900 refusals into 503 overloaded.
    env["LLM_GATEWAY_SHED_LAG"] = "10"
    _, limited = create_key(env, "--rpm", "100")
    _, other = create_key(env, "--rpm", "100")
    gateway: Proc = start_gateway(
        "--config", str(write_config(tmp_path, mock_upstream.url)), env=env, workers=2
    )
    body = chat_body("mock-gpt", stream=False, mock={"chunks": 2})
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(post(session, gateway.url + URL, body, auth(limited)) for _ in range(1000))
        )
        statuses = [status for status, _, _ in results]
        codes = {(s, (e or {}).get("error", {}).get("code")) for s, _, e in results if s != 200}
        assert statuses.count(200) == 100, ({s: statuses.count(s) for s in set(statuses)}, codes)
        assert statuses.count(429) == 900
        _, headers, error = next(r for r in results if r[0] == 429)
        assert error["error"]["type"] == "rate_limit_error"
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert headers["X-RateLimit-Limit"] == "100"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert 1 <= int(headers["X-RateLimit-Reset"]) <= 60
        admitted = next(r for r in results if r[0] == 200)[1]
        assert admitted["X-RateLimit-Limit-Requests"] == "100"
        # Only the admitted requests reached the upstream; the other key is unaffected.
        assert await upstream_requests(mock_upstream) == 100
        others = await asyncio.gather(
            *(post(session, gateway.url + URL, body, auth(other)) for _ in range(20))
        )
        assert [status for status, _, _ in others] == [200] * 20
    text = await scrape(gateway.url)
    assert metric(text, "llm_gateway_rate_limited_total", scope="key_rpm") == 900
    assert metric(text, "llm_gateway_rate_limit_fallbacks_total") == 0  # decided by Redis


async def test_token_budget_is_overshot_by_at_most_one_request(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """Estimates are booked at admission and settled with real usage: the budget holds."""
    _, key = create_key(keyed_env, "--tpm", "3000")
    gateway: Proc = start_gateway(
        "--config", str(write_config(tmp_path, mock_upstream.url)), env=keyed_env
    )
    # The mock is told to ignore max_tokens, so each answer is larger than its estimate.
    body = chat_body(
        "mock-gpt", stream=False, max_tokens=30, mock={"chunks": 120, "honour_max_tokens": False}
    )
    used: list[int] = []
    refused = None
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            status, headers, answer = await post(session, gateway.url + URL, body, auth(key))
            if status == 429:
                refused = (headers, answer)
                break
            assert status == 200
            used.append(answer["usage"]["total_tokens"])
    assert refused is not None, f"never refused after {sum(used)} tokens"
    assert refused[1]["error"]["message"].startswith("This API key is over its limit of tokens")
    assert sum(used) <= 3000 + max(used), used
    assert sum(used) > 3000 - max(used) - 60  # and it was not refused far too early


async def test_redis_stopped_mid_test_requests_keep_being_served(
    start_gateway: Any,
    mock_upstream: Proc,
    tmp_path: Path,
    redis_env: dict[str, str],
    redis_server: RedisServer | None,
) -> None:
    """Redis stopped for 3 s mid-traffic: every request is still a 200, none waits 2 s."""
    assert redis_server is not None, "needs the suite's own redis-server (unset REDIS_URL)"
    _, key = create_key(redis_env, "--rpm", "100000")
    gateway: Proc = start_gateway(
        "--config", str(write_config(tmp_path, mock_upstream.url)), env=redis_env, workers=2
    )
    body = chat_body("mock-gpt", stream=False, mock={"chunks": 2})
    slowest = 0.0
    statuses = []
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        while time.monotonic() - started < 8:
            elapsed = time.monotonic() - started
            if redis_server.process is not None and 2 <= elapsed < 5:
                redis_server.stop()
            elif redis_server.process is None and elapsed >= 5:
                redis_server.start()
            sent = time.monotonic()
            status, _, _ = await post(session, gateway.url + URL, body, auth(key))
            slowest = max(slowest, time.monotonic() - sent)
            statuses.append(status)
            await asyncio.sleep(0.02)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert slowest < 2.0  # bounded waits, never a hang
    text = await scrape(gateway.url)
    assert metric(text, "llm_gateway_rate_limit_fallbacks_total") > 0


async def test_ip_and_global_limits_without_redis(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path
) -> None:
    """Without Redis, ip_rpm refuses the sixth request per address and global_rps caps a burst."""
    config = write_config(tmp_path, mock_upstream.url)
    config.write_text(config.read_text() + "limits: {ip_rpm: 5}\n")
    gateway: Proc = start_gateway("--config", str(config))
    body = chat_body("mock-gpt", stream=False)
    async with aiohttp.ClientSession() as session:
        results = [await post(session, gateway.url + URL, body, {}) for _ in range(7)]
    assert [r[0] for r in results] == [200] * 5 + [429] * 2
    headers = results[-1][1]
    assert headers["X-RateLimit-Limit"] == "5" and headers["X-RateLimit-Remaining"] == "0"
    assert "address" in results[-1][2]["error"]["message"]
    assert await upstream_requests(mock_upstream) == 5

    config.write_text(config.read_text().replace("{ip_rpm: 5}", "{global_rps: 3}"))
    second: Proc = start_gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        statuses = [
            r[0]
            for r in await asyncio.gather(
                *(post(session, second.url + URL, body, {}) for _ in range(10))
            )
        ]
    assert statuses.count(200) == 3 and statuses.count(429) == 7


async def test_worker_cap_and_per_key_concurrency(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """Beyond max_in_flight an immediate 503; beyond a key's concurrent limit a 429."""
    _, key_a = create_key(keyed_env)
    _, key_b = create_key(keyed_env)
    config = write_config(tmp_path, mock_upstream.url, server="  max_in_flight: 3")
    config.write_text(config.read_text() + "limits: {key_concurrent: 2}\n")
    gateway: Proc = start_gateway("--config", str(config), env=keyed_env)
    slow = chat_body("mock-gpt", mock={"chunks": 10, "delay": 0.2})  # a 2 s stream
    fast = chat_body("mock-gpt", stream=False)

    async def hold(session: aiohttp.ClientSession, key: str) -> int:
        async with session.post(gateway.url + URL, json=slow, headers=auth(key)) as response:
            await response.read()
            return response.status

    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(hold(session, key)) for key in (key_a, key_a, key_b)]
        await asyncio.sleep(0.8)
        started = time.monotonic()
        status, headers, error = await post(session, gateway.url + URL, fast, auth(key_b))
        assert status == 503 and error["error"]["code"] == "worker_at_capacity"
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - started < 0.1
        assert await upstream_requests(mock_upstream) == 3
        assert await asyncio.gather(*held) == [200, 200, 200]

        # Two of key_a's requests in flight: a third is refused, key_b is not.
        held = [asyncio.create_task(hold(session, key_a)) for _ in range(2)]
        await asyncio.sleep(0.8)
        status, _, error = await post(session, gateway.url + URL, fast, auth(key_a))
        assert status == 429 and error["error"]["code"] == "concurrency_limit_exceeded"
        status, _, _ = await post(session, gateway.url + URL, fast, auth(key_b))
        assert status == 200
        assert await asyncio.gather(*held) == [200, 200]
        status, _, _ = await post(session, gateway.url + URL, fast, auth(key_a))
        assert status == 200  # the slots were given back
