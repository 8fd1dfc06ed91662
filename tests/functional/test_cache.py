"""The response cache and request coalescing end to end: real gateway, real mock upstream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.mock.answer import expected_text
from tests.conftest import Proc, create_key, write_config
from tests.event_stream import EventStreamParser
from tests.functional.client import StreamRead, chat_body, read_stream
from tests.functional.test_accounting import totals, usage_rows, wait_for_requests
from tests.functional.test_shared_store import metric, scrape
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]

URL = "/v1/chat/completions"


async def upstream_records(mock_proc: Proc) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(mock_proc.url + "/_mock/requests") as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


async def post_json(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers or {}) as response,
    ):
        return response.status, dict(response.headers), await response.json(content_type=None)


def body(content: str = "cache me", stream: bool = True, **mock_settings: Any) -> dict[str, Any]:
    request = chat_body("mock-gpt", stream=stream, temperature=0, mock=mock_settings or None)
    request["messages"] = [{"role": "user", "content": content}]
    if not mock_settings:
        del request["mock"]
    return request


async def test_hit_miss_bypass_and_stored(gateway_on_mock: Proc) -> None:
    """Miss, then a byte-identical hit without upstream; bypass, opt-in, no-store, no-cache."""
    url = gateway_on_mock.url + URL
    first = await read_stream(url, body())
    assert first.headers["X-Gateway-Cache"] == "miss" and first.done
    await asyncio.sleep(0.2)  # the entry is written just after the answer
    second = await read_stream(url, body())
    assert second.headers["X-Gateway-Cache"] == "hit"
    assert int(second.headers["Age"]) >= 0
    assert second.data == first.data  # the same events, byte for byte
    assert len(await upstream_records_of(gateway_on_mock)) == 1  # a hit makes no upstream call

    # `stream`, `stream_options` and `user` are not part of the key.
    varied = {**body(), "user": "someone", "stream_options": {"include_usage": True}}
    third = await read_stream(url, varied)
    assert third.headers["X-Gateway-Cache"] == "hit"
    assert third.json_events()[-1]["usage"]["completion_tokens"] > 0  # asked for, so kept

    # Not deterministic: bypassed, unless the client opts in.
    random_sampling = {**body("other"), "temperature": 0.7}
    assert (await read_stream(url, random_sampling)).headers["X-Gateway-Cache"] == "bypass"
    opted = await read_stream(url, random_sampling, {"X-Gateway-Cache": "on"})
    assert opted.headers["X-Gateway-Cache"] == "miss"
    # no-store neither looks up nor stores; no-cache skips the lookup but stores.
    no_store = await read_stream(url, body(), {"Cache-Control": "no-store"})
    assert no_store.headers["X-Gateway-Cache"] == "bypass"
    no_cache = {"Cache-Control": "no-cache"}
    status, headers, _ = await post_json(url, body("json", stream=False), no_cache)
    assert status == 200 and headers["X-Gateway-Cache"] == "stored"
    status, headers, _ = await post_json(url, body("json", stream=False))
    assert headers["X-Gateway-Cache"] == "hit"
    mocked = await upstream_records_of(gateway_on_mock)
    assert len(mocked) == 5  # first, bypassed, opted in, no-store, no-cache

    status, _, error = await post_json(url, body(), {"X-Gateway-Cache-TTL": "soon"})
    assert status == 400 and error["error"]["param"] == "X-Gateway-Cache-TTL"

    text = await scrape(gateway_on_mock.url)
    assert metric(text, "llm_gateway_cache_lookups_total", result="hit") == 3
    assert metric(text, "llm_gateway_cache_stores_total") >= 3


async def upstream_records_of(gateway: Proc) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.extra["mock_url"] + "/_mock/requests") as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "failure",
    [{"die_after": 3, "delay": 0.01}, {"error_after": 3}, {"fail_status": 400}],
    ids=["connection-died", "error-event", "error-status"],
)
async def test_failed_or_truncated_streams_are_never_cached(
    gateway_on_mock: Proc, failure: dict[str, Any]
) -> None:
    """A stream that dies, ends in an error event or fails with a status is not cached."""
    url = gateway_on_mock.url + URL
    request = body("fails", chunks=10, **failure)
    for _ in range(2):
        result = await read_stream(url, request)
        assert result.headers.get("X-Gateway-Cache") in {"miss", None}
        await asyncio.sleep(0.2)
    assert len(await upstream_records_of(gateway_on_mock)) == 2


async def test_client_that_leaves_early_is_not_cached_and_does_not_poison(
    gateway_on_mock: Proc,
) -> None:
    """A client cancelling a miss cancels the upstream; nothing truncated is stored."""
    url = gateway_on_mock.url + URL
    request = body("leaves", chunks=30, delay=0.02)
    async with aiohttp.ClientSession() as session, session.post(url, json=request) as response:
        await response.content.readuntil(b"\n\n")
    await asyncio.sleep(0.5)
    again = await read_stream(url, request)
    assert again.headers["X-Gateway-Cache"] == "miss" and again.done
    assert again.text() == expected_text(request)


async def test_stream_answers_json_and_json_answers_stream(gateway_on_mock: Proc) -> None:
    """A cached stream answers a JSON request, and a cached JSON answer replays as a stream."""
    url = gateway_on_mock.url + URL
    streamed = await read_stream(url, body("shape A", chunks=12))
    await asyncio.sleep(0.2)
    status, headers, answer = await post_json(url, body("shape A", stream=False, chunks=12))
    assert headers["X-Gateway-Cache"] == "hit"
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": streamed.text()}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 12

    status, _, direct = await post_json(url, body("shape B", stream=False, chunks=9))
    assert status == 200
    replayed = await read_stream(url, body("shape B", chunks=9))
    assert replayed.headers["X-Gateway-Cache"] == "hit" and replayed.done
    assert replayed.text() == direct["choices"][0]["message"]["content"]
    events = replayed.json_events()
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(await upstream_records_of(gateway_on_mock)) == 2


async def timed_stream(
    url: str, request: dict[str, Any], headers: dict[str, str]
) -> tuple[StreamRead, list[float]]:
    """Read a stream, noting when each event arrived (seconds from the first)."""
    times: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=request, headers=headers) as response,
    ):
        parser = EventStreamParser()
        result = StreamRead(response.status, dict(response.headers))
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                result.data.append(event.data)
                times.append(time.monotonic())
    return result, [t - times[0] for t in times]


async def test_paced_replay_keeps_the_recorded_timing(gateway_on_mock: Proc) -> None:
    """A paced replay keeps the recorded timing within 10 %; the default replay is immediate."""
    url = gateway_on_mock.url + URL
    request = body("paced", chunks=20, delay=0.05)
    live, live_times = await timed_stream(url, request, {})
    await asyncio.sleep(0.2)
    paced, paced_times = await timed_stream(url, request, {"X-Gateway-Cache-Replay": "paced"})
    fast, fast_times = await timed_stream(url, request, {})
    assert paced.headers["X-Gateway-Cache"] == fast.headers["X-Gateway-Cache"] == "hit"
    assert paced.data == live.data == fast.data
    assert live_times[-1] > 0.9
    assert abs(paced_times[-1] - live_times[-1]) <= 0.1 * live_times[-1]
    assert fast_times[-1] < 0.1 * live_times[-1]


async def test_cache_is_scoped_per_key(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """One key's entry is not another key's hit; the hit is in its own key's statistics."""
    env = {**keyed_env, "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5"}
    key_a_id, key_a = create_key(env)
    _, key_b = create_key(env)
    gateway: Proc = start_gateway(
        "--config", str(write_config(tmp_path, mock_upstream.url)), env=env
    )
    url = gateway.url + URL
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    assert (await read_stream(url, body(), a)).headers["X-Gateway-Cache"] == "miss"
    await asyncio.sleep(0.2)
    assert (await read_stream(url, body(), b)).headers["X-Gateway-Cache"] == "miss"
    await asyncio.sleep(0.2)
    assert (await read_stream(url, body(), a)).headers["X-Gateway-Cache"] == "hit"
    assert len(await upstream_records(mock_upstream)) == 2
    # The hit is in key A's statistics, with the tokens it saved.
    await wait_for_requests(env, 3, timeout=10)
    rows = [r for r in usage_rows(env) if r["key_id"] == key_a_id]
    assert totals(rows)["requests"] == 2 and sum(r["cache_hits"] for r in rows) == 1
    assert totals(rows)["completion_tokens"] == 2 * 16


async def test_coalescing_fifty_identical_streams_make_one_upstream_call(
    gateway_on_mock: Proc,
) -> None:
    """Fifty identical concurrent streams make one upstream call and all get the same events."""
    url = gateway_on_mock.url + URL
    request = body("together", chunks=20, delay=0.03)
    results = await asyncio.gather(*(read_stream(url, request) for _ in range(50)))
    assert len(await upstream_records_of(gateway_on_mock)) == 1
    assert all(r.status == 200 and r.done for r in results)
    assert all(r.data == results[0].data for r in results)  # identical events for everyone
    assert results[0].text() == expected_text(request)
    joined = sum(r.headers.get("X-Gateway-Coalesced") == "true" for r in results)
    assert joined == 49
    text = await scrape(gateway_on_mock.url)
    assert metric(text, "llm_gateway_coalesced_requests_total") == 49


async def test_coalescing_survives_the_leader_leaving(gateway_on_mock: Proc) -> None:
    """A follower gets the whole stream when the client that started it disconnects."""
    url = gateway_on_mock.url + URL
    request = body("leader leaves", chunks=30, delay=0.03)
    async with aiohttp.ClientSession() as session:
        leader = await session.post(url, json=request)
        await leader.content.readuntil(b"\n\n")
        follower = asyncio.create_task(read_stream(url, request))
        await asyncio.sleep(0.2)
        leader.close()  # the first client disconnects mid-stream
        result = await follower
    assert result.done and result.text() == expected_text(request)
    assert result.headers["X-Gateway-Coalesced"] == "true"
    records = await upstream_records_of(gateway_on_mock)
    assert [r["outcome"] for r in records] == ["completed"]  # the upstream kept going


async def test_coalesced_clients_share_an_upstream_failure(gateway_on_mock: Proc) -> None:
    """Coalesced clients all get the same final error event when the shared upstream dies."""
    url = gateway_on_mock.url + URL
    request = body("fails together", chunks=30, delay=0.03, die_after=10)
    results = await asyncio.gather(*(read_stream(url, request) for _ in range(5)))
    assert len(await upstream_records_of(gateway_on_mock)) == 1
    finals = [r.json_events()[-1] for r in results]
    assert all(not r.done for r in results)
    assert all(f == finals[0] and "error" in f for f in finals)
    assert all(r.data == results[0].data for r in results)


async def test_redis_cache_degrades_to_misses_when_redis_dies(
    start_gateway: Any,
    mock_upstream: Proc,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    redis_server: RedisServer | None,
    keyed_env: dict[str, str],
) -> None:
    """The Redis cache is shared by two instances; with Redis down requests are fast misses."""
    assert redis_server is not None, "needs the suite's own redis-server (unset REDIS_URL)"
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_STORE__TIMEOUT": "0.5",
    }
    _, key = create_key(env)
    auth = {"Authorization": f"Bearer {key}"}
    config = str(write_config(tmp_path, mock_upstream.url))
    first: Proc = start_gateway("--config", config, env=env)
    second: Proc = start_gateway("--config", config, env=env)
    request = body("shared", chunks=8)
    assert (await read_stream(first.url + URL, request, auth)).headers["X-Gateway-Cache"] == "miss"
    await asyncio.sleep(0.3)
    hit = await read_stream(second.url + URL, request, auth)  # another instance
    assert hit.headers["X-Gateway-Cache"] == "hit"

    redis_server.stop()
    try:
        for n in range(6):
            started = time.monotonic()
            result = await read_stream(first.url + URL, body(f"during outage {n}"), auth)
            assert result.status == 200 and result.done
            assert time.monotonic() - started < 2.0
            assert result.headers["X-Gateway-Cache"] == "miss"
    finally:
        redis_server.start()
    assert metric(await scrape(first.url), "llm_gateway_cache_errors_total") > 0
