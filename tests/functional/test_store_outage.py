"""A frozen Redis store (SIGSTOP): known keys answer at once, admin says 503, nothing hangs."""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import time
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from tests.conftest import MASTER_KEY, Proc, create_key, free_port
from tests.functional.client import chat_body
from tests.redis_server import RedisServer

BREAKER_BUDGET = 0.050  # added p99 allowed once the store's breaker is open


@pytest.fixture
def frozen_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, so freezing it disturbs no other test."""
    server = RedisServer(free_port())
    server.start()
    yield server
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


async def timed(session: aiohttp.ClientSession, url: str, key: str) -> tuple[float, int, bytes]:
    started = time.monotonic()
    async with session.post(
        url, json=chat_body(stream=False), headers={"Authorization": f"Bearer {key}"}
    ) as response:
        body = await response.read()
    return time.monotonic() - started, response.status, body


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def test_a_frozen_store_costs_known_keys_nothing(
    frozen_redis: RedisServer, start_gateway, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """After one store call fails, known keys answer from the cache within 50 ms of normal p99."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": frozen_redis.url,
        "LLM_GATEWAY_AUTH__CACHE_TTL": "0.3",  # the key cache expires often during the outage
    }
    _, key = create_key(env)
    proc: Proc = start_gateway(env=env)
    url = proc.url + "/v1/chat/completions"
    assert frozen_redis.process is not None
    async with aiohttp.ClientSession() as session:
        normal = [(await timed(session, url, key))[0] for _ in range(60)]
        frozen_redis.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.4)  # the cached answer expires
        first, status, _ = await timed(
            session, url, key
        )  # waits the store timeout, opens the breaker
        assert status == 200
        outage = []
        deadline = time.monotonic() + 6  # three breaker recovery periods: probes happen meanwhile
        while time.monotonic() < deadline:
            seconds, status, _ = await timed(session, url, key)
            assert status == 200
            outage.append(seconds)
            await asyncio.sleep(0.02)
        unknown_took, status, body = await timed(session, url, "sk-gw-" + "B" * 43)
        assert status == 503 and orjson.loads(body)["error"]["code"] == "key_store_unavailable"
        async with session.get(
            proc.url + "/admin/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"}
        ) as response:
            admin_status, admin_body = response.status, await response.json()
        frozen_redis.process.send_signal(signal.SIGCONT)
    assert first > 1.0  # the store timeout was really waited once (2 s by default)
    assert len(outage) > 50
    assert p99(outage) <= p99(normal) + BREAKER_BUDGET, (p99(normal), p99(outage), max(outage))
    assert unknown_took < 0.5
    assert admin_status == 503 and admin_body["error"]["code"] == "store_unavailable"
    assert "Traceback" not in proc.log()
