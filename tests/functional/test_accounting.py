"""Usage accounting end to end: exactly one record per request, tokens as the upstream sent them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Proc, create_key, run_cli, write_config
from tests.event_stream import EventStreamParser
from tests.functional.client import chat_body, read_stream


def usage_rows(env: dict[str, str]) -> list[dict[str, Any]]:
    result = run_cli("usage", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("requests", "prompt_tokens", "completion_tokens", "estimated_requests", "errors")
    return {k: sum(r[k] for r in rows) for k in keys}


async def mock_records(mock: Proc) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(mock.url + "/_mock/requests") as r:
        return await r.json()  # type: ignore[no-any-return]


async def wait_for_requests(env: dict[str, str], count: int, timeout: float) -> float:
    started = time.monotonic()
    while totals(usage_rows(env))["requests"] < count:
        assert time.monotonic() - started < timeout, f"store has {usage_rows(env)}"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def cancel_after(
    url: str, headers: dict[str, str], body: dict[str, Any], events: int
) -> None:
    """Read ``events`` events, then drop the connection."""
    async with aiohttp.ClientSession(headers=headers) as session:
        response = await session.post(url + "/v1/chat/completions", json=body)
        parser, seen = EventStreamParser(), 0
        async for chunk in response.content.iter_any():
            seen += len(parser.feed(chunk))
            if seen >= events:
                break
        response.close()


@pytest.fixture
def env(keyed_env: dict[str, str]) -> dict[str, str]:
    """Keys, and stats flushed every half second."""
    return {**keyed_env, "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5"}


async def test_ground_truth_one_record_per_request_and_exact_tokens(
    start_gateway, mock_upstream: Proc, tmp_path: Path, env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Streams, non-streams, failures and cancels over 2 workers leave exactly N records whose
    completion tokens equal what the mock sent."""
    key_id, key = create_key(env)
    config = write_config(tmp_path, mock_upstream.url)
    with config.open("a") as extra:  # one upstream request per client request: no retries
        extra.write("routing: {retries: {attempts: 1}}\n")
    proc: Proc = start_gateway("--config", str(config), env=env, workers=2)
    url, auth = proc.url + "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
    jobs: list[Any] = []
    for n in range(6):
        jobs.append(read_stream(url, chat_body("mock-gpt", mock={"chunks": 5 + n}), auth))
    for n in range(4):
        jobs.append(
            read_stream(url, chat_body("mock-gpt", stream=False, mock={"chunks": n + 1}), auth)
        )
    for _ in range(3):
        jobs.append(read_stream(url, chat_body("mock-gpt", mock={"fail_status": 500}), auth))
    for _ in range(2):
        # Paced, so the events are read before the connection breaks: an abort right after a
        # write can reset the socket and take unread bytes with it.
        died = {"die_after": 3, "delay": 0.01}
        jobs.append(read_stream(url, chat_body("mock-gpt", mock=died), auth))
    for _ in range(3):
        jobs.append(cancel_after(proc.url, auth, chat_body("mock-gpt", mock={"stall_after": 4}), 4))
    await asyncio.gather(*jobs)
    sent = len(jobs)
    await asyncio.sleep(0.5)
    await wait_for_requests(env, sent, timeout=10)
    await asyncio.sleep(1.0)  # anything late or duplicated would show up now
    store = totals(usage_rows(env))
    records = await mock_records(mock_upstream)
    assert store["requests"] == sent == len(records)
    assert store["completion_tokens"] == sum(r["completion_tokens_sent"] for r in records)
    assert store["estimated_requests"] == 5  # the died and the cancelled streams
    assert store["errors"] == 5  # 3 upstream 500s and 2 died streams; cancels are not errors
    assert {r["key_id"] for r in usage_rows(env)} == {key_id}


async def test_usage_chunk_is_stripped_unless_asked_for(start_gateway, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """The gateway asks upstream for usage; a client that did not ask never sees it, yet tokens
    are exact."""
    _, key = create_key(env)
    proc: Proc = start_gateway(env=env)
    auth = {"Authorization": f"Bearer {key}"}
    plain = await read_stream(proc.url + "/v1/chat/completions", chat_body(), auth)
    asked = await read_stream(
        proc.url + "/v1/chat/completions",
        chat_body(stream_options={"include_usage": True}), auth,
    )  # fmt: skip
    assert all(event["choices"] for event in plain.json_events())
    assert asked.json_events()[-1]["choices"] == []
    await wait_for_requests(env, 2, timeout=10)
    store = totals(usage_rows(env))
    assert store["estimated_requests"] == 0
    assert store["completion_tokens"] == 2 * 24  # the demo model's 24 chunks, both times


async def test_sigterm_flushes_buffered_events(start_gateway, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Events still buffered at SIGTERM are all in the store after the exit."""
    slow = {
        **env,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "600",
        "LLM_GATEWAY_STATS__FLUSH_EVENTS": "1000",
    }
    _, key = create_key(slow)
    proc: Proc = start_gateway(env=slow)
    auth = {"Authorization": f"Bearer {key}"}
    await asyncio.gather(
        *(
            read_stream(proc.url + "/v1/chat/completions", chat_body(stream=False), auth)
            for _ in range(25)
        )
    )
    assert totals(usage_rows(slow))["requests"] == 0
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.process.wait, 30) == 0
    assert totals(usage_rows(slow))["requests"] == 25


async def test_batch_triggers(start_gateway, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """100 events flush promptly; a single event flushes after about the 5 s interval."""
    by_count = {**env, "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "600"}
    proc: Proc = start_gateway(env=by_count)
    await asyncio.gather(
        *(
            read_stream(proc.url + "/v1/chat/completions", chat_body(stream=False))
            for _ in range(100)
        )
    )
    assert await wait_for_requests(by_count, 100, timeout=3) < 2
    proc.stop()

    by_time = {k: v for k, v in env.items() if k != "LLM_GATEWAY_STATS__FLUSH_INTERVAL"}
    by_time["LLM_GATEWAY_STORE__PATH"] += ".2"
    proc = start_gateway(env=by_time)
    await read_stream(proc.url + "/v1/chat/completions", chat_body(stream=False))
    waited = await wait_for_requests(by_time, 1, timeout=10)
    assert 3.5 < waited < 7.0
