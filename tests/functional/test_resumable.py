"""Resumable streams end to end: cut a client, resume from its last event id, across workers."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.mock.answer import expected_text
from tests.conftest import Proc, create_key, write_config
from tests.event_stream import Event, EventStreamParser
from tests.functional.client import chat_body
from tests.functional.test_accounting import totals, usage_rows, wait_for_requests
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]

URL = "/v1/chat/completions"
RESUMABLE = {"X-Gateway-Resumable": "true"}


def request_body(content: str, **mock_settings: Any) -> dict[str, Any]:
    body = chat_body("mock-gpt", mock={"chunks": 40, "delay": 0.03, **mock_settings})
    body["messages"] = [{"role": "user", "content": content}]
    return body


async def read_events(response: aiohttp.ClientResponse, limit: int | None = None) -> list[Event]:
    """Read events until the stream ends, or stop (and drop the connection) after ``limit``."""
    parser, events = EventStreamParser(), []
    async for chunk in response.content.iter_any():
        events.extend(parser.feed(chunk))
        if limit is not None and len(events) >= limit:
            response.close()  # the client's connection drops here
            return events[:limit]
    return events


async def start_and_cut(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], k: int, headers: dict[str, str]
) -> tuple[str, list[Event]]:
    response = await session.post(url + URL, json=body, headers={**RESUMABLE, **headers})
    assert response.status == 200
    stream_id = response.headers["X-Gateway-Stream-Id"]
    return stream_id, await read_events(response, k)


def text_of(events: list[Event]) -> str:
    pieces = []
    for event in events:
        if event.data.startswith(b"{"):
            for choice in orjson.loads(event.data).get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or "")
    return "".join(pieces)


async def test_cut_after_k_events_and_resume_gets_exactly_the_rest(gateway_on_mock: Proc) -> None:
    """A stream cut after 7 events resumes from Last-Event-ID (or ?after=) with no gap or repeat."""
    body = request_body("resume me")
    async with aiohttp.ClientSession() as session:
        stream_id, first = await start_and_cut(session, gateway_on_mock.url, body, 7, {})
        assert [e.id for e in first] == [str(n).encode() for n in range(1, 8)]
        await asyncio.sleep(0.3)  # the upstream goes on meanwhile
        resumed = await session.get(
            f"{gateway_on_mock.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": "7"}
        )
        assert resumed.status == 200
        rest = await read_events(resumed)
        # ?after= works too, for fetch clients that cannot set the header.
        again = await session.get(f"{gateway_on_mock.url}/v1/streams/{stream_id}?after=40")
        tail = await read_events(again)
    ids = [int(e.id or 0) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no duplicate
    assert rest[-1].data == b"[DONE]"
    assert text_of(first + rest) == expected_text(body)
    assert [int(e.id or 0) for e in tail] == list(range(41, len(ids) + 1))
    records = await upstream_records(gateway_on_mock)
    assert [r["outcome"] for r in records] == ["completed"]  # one upstream request, finished


async def upstream_records(gateway: Proc) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.extra["mock_url"] + "/_mock/requests") as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


async def test_resume_across_two_workers_on_redis(
    start_gateway: Any,
    mock_upstream: Proc,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    keyed_env: dict[str, str],
) -> None:
    """Produced by one instance, resumed through another that shares the Redis."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
    }
    _, key = create_key(env)
    _, other_key = create_key(env)
    auth, other = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other_key}"}
    config = str(write_config(tmp_path, mock_upstream.url))
    first: Proc = start_gateway("--config", config, env=env)
    second: Proc = start_gateway("--config", config, env=env)
    body = request_body("across instances")
    async with aiohttp.ClientSession() as session:
        stream_id, head = await start_and_cut(session, first.url, body, 5, auth)
        resume_url = f"{second.url}/v1/streams/{stream_id}"
        refused = await session.get(resume_url, headers={"Last-Event-ID": "5", **other})
        assert refused.status == 403
        assert (await refused.json())["error"]["code"] == "stream_not_yours"
        resumed = await session.get(resume_url, headers={"Last-Event-ID": "5", **auth})
        assert resumed.status == 200
        rest = await read_events(resumed)
    ids = [int(e.id or 0) for e in head + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].data == b"[DONE]"
    assert text_of(head + rest) == expected_text(body)
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(f"{redis_prefix}:{{s:{stream_id}}}:*")]
    ttls = [await client.ttl(k) for k in keys]
    await client.aclose()
    assert len(keys) == 2 and all(0 < ttl <= 300 for ttl in ttls)  # retention after the end


async def test_resume_by_another_key_is_refused_and_expired_is_204(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """Another key may not resume or cancel (403); a bad id is 400; after retention it is 204."""
    env = {**keyed_env, "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5"}
    _, key = create_key(env)
    _, other_key = create_key(env)
    config = write_config(tmp_path, mock_upstream.url)
    config.write_text(config.read_text() + "streams: {retention: 1}\n")
    gateway: Proc = start_gateway("--config", str(config), env=env)
    auth, other = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other_key}"}
    body = request_body("mine", chunks=5, delay=0.01)
    async with aiohttp.ClientSession() as session:
        stream_id, events = await start_and_cut(session, gateway.url, body, 100, auth)
        assert events[-1].data == b"[DONE]"
        url = f"{gateway.url}/v1/streams/{stream_id}"
        async with session.get(url, headers=other) as response:
            assert response.status == 403
        async with session.post(url + "/cancel", headers=other) as response:
            assert response.status == 403
        async with session.get(url, headers={"Last-Event-ID": "x", **auth}) as response:
            assert response.status == 400
        async with session.get(url, headers=auth) as response:
            assert response.status == 200  # within retention: the whole stream again
            assert len(await read_events(response)) == len(events)
        await asyncio.sleep(1.3)
        async with session.get(url, headers=auth) as response:
            assert response.status == 204  # expired: an EventSource stops reconnecting
        async with session.get(f"{gateway.url}/v1/streams/strm_unknown", headers=auth) as r:
            assert r.status == 204
    await wait_for_requests(env, 1, timeout=10)
    assert totals(usage_rows(env))["completion_tokens"] == 5


async def test_no_resumer_within_the_grace_period_cancels_the_upstream(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path
) -> None:
    """With no resumer within the grace period, the upstream is cancelled; one record is kept."""
    env = {
        "LLM_GATEWAY_STORE__PATH": str(tmp_path / "s.sqlite3"),
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5",
    }
    config = write_config(tmp_path, mock_upstream.url)
    config.write_text(config.read_text() + "streams: {grace: 1.5}\n")
    gateway: Proc = start_gateway("--config", str(config), env=env)
    gateway.extra["mock_url"] = mock_upstream.url
    body = request_body("abandoned", chunks=400, delay=0.02)  # 8 s if it ran to the end
    async with aiohttp.ClientSession() as session:
        await start_and_cut(session, gateway.url, body, 3, {})
    started = time.monotonic()
    while True:
        records = await upstream_records(gateway)
        if records and records[0]["outcome"] != "in_flight":
            break
        assert time.monotonic() - started < 6, records
        await asyncio.sleep(0.1)
    waited = time.monotonic() - started
    assert records[0]["outcome"] == "disconnected"
    assert 1.0 <= waited <= 4.0  # kept running through the grace period, then cancelled
    await wait_for_requests(env, 1, timeout=10)
    rows = usage_rows(env)
    assert totals(rows)["requests"] == 1


async def test_explicit_cancel_stops_the_generation(gateway_on_mock: Proc) -> None:
    """POST /cancel ends the stream with a stream_cancelled event and disconnects the upstream."""
    body = request_body("stop it", chunks=400, delay=0.02)
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway_on_mock.url + URL, json=body, headers=RESUMABLE)
        stream_id = response.headers["X-Gateway-Stream-Id"]
        reading = asyncio.create_task(read_events(response))
        await asyncio.sleep(0.3)
        async with session.post(f"{gateway_on_mock.url}/v1/streams/{stream_id}/cancel") as r:
            assert r.status == 200
        events = await asyncio.wait_for(reading, 5)
    assert b'"code":"stream_cancelled"' in events[-1].data
    await asyncio.sleep(0.3)
    records = await upstream_records(gateway_on_mock)
    assert records[0]["outcome"] == "disconnected"


@pytest.mark.parametrize("configured", ["model", "key", "all"])
async def test_resumable_by_configuration(
    start_gateway: Any,
    mock_upstream: Proc,
    tmp_path: Path,
    keyed_env: dict[str, str],
    configured: str,
) -> None:
    """Streams are resumable by model, key or for all by configuration; a client can opt out."""
    key_id, key = create_key(keyed_env)
    _, other_key = create_key(keyed_env)
    setting = {
        "model": "streams: {models: [mock-gpt]}",
        "key": f"streams: {{keys: [{key_id}]}}",
        "all": "streams: {resumable: true}",
    }[configured]
    config = write_config(tmp_path, mock_upstream.url)
    config.write_text(config.read_text() + setting + "\n")
    gateway: Proc = start_gateway("--config", str(config), env=keyed_env)
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        first = request_body("x", chunks=3)
        async with session.post(gateway.url + URL, json=first, headers=auth) as response:
            assert response.headers.get("X-Gateway-Stream-Id", "").startswith("strm_")
        opt_out = {"X-Gateway-Resumable": "false", **auth}
        second = request_body("y", chunks=3)
        async with session.post(gateway.url + URL, json=second, headers=opt_out) as response:
            assert "X-Gateway-Stream-Id" not in response.headers
        other = {"Authorization": f"Bearer {other_key}"}
        async with session.post(gateway.url + URL, json=second, headers=other) as response:
            resumable = "X-Gateway-Stream-Id" in response.headers
            assert resumable == (configured != "key")  # the key setting is that key's alone


async def test_sigterm_lets_a_resumable_stream_finish(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path
) -> None:
    """On SIGTERM a resumable stream in flight finishes whole and the gateway exits 0."""
    gateway: Proc = start_gateway("--config", str(write_config(tmp_path, mock_upstream.url)))
    body = request_body("draining", chunks=30, delay=0.05)
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.url + URL, json=body, headers=RESUMABLE)
        reading = asyncio.create_task(read_events(response))
        await asyncio.sleep(0.3)
        gateway.signal(signal.SIGTERM)
        events = await asyncio.wait_for(reading, 10)
    assert events[-1].data == b"[DONE]"
    assert text_of(events) == expected_text(body)
    assert gateway.stop() == 0
