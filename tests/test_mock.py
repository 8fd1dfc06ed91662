"""The mock upstream on a real port: stream shape, determinism, failure injection, records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.mock.answer import expected_text
from gateway.mock.behaviour import DEFAULT_BEHAVIOUR, MOCK_MODELS, MockBehaviour, first_byte_delay
from gateway.mock.server import start_mock_server
from tests.functional.client import chat_body, read_stream


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    runner, port = await start_mock_server("127.0.0.1", 0, MockBehaviour(chunks=8))
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def test_stream_shape_and_usage(mock_url: str) -> None:
    """Role chunk, one chunk per piece, finish chunk, usage only when asked, then [DONE]."""
    body = chat_body("mock-gpt")
    plain = await read_stream(mock_url + "/v1/chat/completions", body)
    events = plain.json_events()
    assert plain.done and len(events) == 8 + 2
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    defaults = MockBehaviour(chunks=8)
    assert plain.text() == expected_text(body, defaults)
    with_usage = await read_stream(
        mock_url + "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    usage_event = with_usage.json_events()[-1]
    assert usage_event["choices"] == []
    assert usage_event["usage"]["completion_tokens"] == 8


async def test_same_request_same_answer(mock_url: str) -> None:
    """The answer depends only on model, messages and seed."""
    first = await read_stream(mock_url + "/v1/chat/completions", chat_body("m"))
    second = await read_stream(mock_url + "/v1/chat/completions", chat_body("m"))
    other = await read_stream(mock_url + "/v1/chat/completions", chat_body("m", seed=5))
    assert first.text() == second.text() != other.text()


@pytest.mark.parametrize(
    ("override", "events", "outcome"),
    [({"die_after": 3}, 3, "failed"), ({"error_after": 3}, 4, "failed")],
)
async def test_mid_stream_failures(
    mock_url: str, override: dict[str, int], events: int, outcome: str
) -> None:
    """die_after cuts the connection after N events; error_after sends an error event."""
    result = await read_stream(mock_url + "/v1/chat/completions", chat_body(mock=override))
    assert len(result.data) == events and not result.done
    records = await get_json(mock_url + "/_mock/requests")
    assert records[-1]["outcome"] == outcome


async def test_fail_status_with_retry_after_and_header_overrides(mock_url: str) -> None:
    """fail_status answers that status with an OpenAI error; headers override too."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            mock_url + "/v1/chat/completions",
            json=chat_body(mock={"fail_status": 429, "retry_after": 2}),
        ) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "2"
            assert (await response.json())["error"]["type"] == "rate_limit_error"
        async with session.post(
            mock_url + "/v1/chat/completions",
            json=chat_body(stream=False),
            headers={"X-Mock-Chunks": "3"},
        ) as response:
            answer = await response.json()
            assert answer["usage"]["completion_tokens"] == 3


async def test_invalid_override_is_a_400_naming_mock(mock_url: str) -> None:
    """An unknown or bad override is refused with an OpenAI-shaped 400."""
    async with aiohttp.ClientSession() as session:
        for bad in ({"chunkz": 1}, {"delay": -1}, {"chunks": "many"}):
            async with session.post(
                mock_url + "/v1/chat/completions", json=chat_body(mock=bad)
            ) as response:
                assert response.status == 400
                assert (await response.json())["error"]["param"] == "mock"


async def test_fail_before_first_byte_drops_the_connection(mock_url: str) -> None:
    """The connection closes with no response at all."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(
                mock_url + "/v1/chat/completions",
                json=chat_body(mock={"fail_before_first_byte": True}),
            )


async def test_embeddings_models_and_stats(mock_url: str) -> None:
    """Embeddings are unit vectors; models are listed; stats count what happened."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            mock_url + "/v1/embeddings",
            json={"model": "mock-embed", "input": ["a", "b"], "dimensions": 4},
        ) as response,
    ):
        data = (await response.json())["data"]
    assert len(data) == 2 and len(data[0]["embedding"]) == 4
    assert abs(sum(v * v for v in data[0]["embedding"]) - 1) < 1e-9
    models = await get_json(mock_url + "/v1/models")
    assert {m["id"] for m in models["data"]} == set(MOCK_MODELS)
    stats = await get_json(mock_url + "/_mock/stats")
    assert stats["requests"] == 1 and stats["completed"] == 1 and stats["in_flight"] == 0


async def http_chunks(port: int, body: dict[str, Any]) -> list[bytes]:
    """POST over a raw socket; the chunked response body as the list of its HTTP chunks."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        chunks.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n"
    writer.close()
    return chunks


@pytest.mark.parametrize("delay", [0.0, 0.001])
async def test_unbatched_sends_each_event_as_its_own_chunk(delay: float) -> None:
    """With unbatched, burst or paced, every HTTP chunk holds exactly one whole SSE event."""
    runner, port = await start_mock_server("127.0.0.1", 0)
    try:
        mock_settings = {"chunks": 40, "unbatched": True, "delay": delay}
        chunks = await http_chunks(port, chat_body("mock-gpt", mock=mock_settings))
        batched = await http_chunks(port, chat_body("mock-gpt", mock={"chunks": 40}))
        record = (await get_json(f"http://127.0.0.1:{port}/_mock/requests"))[0]
    finally:
        await runner.cleanup()
    assert record["outcome"] == "completed"
    assert (record["events_sent"], record["completion_tokens_sent"]) == (43, 40)
    assert len(chunks) == 40 + 3  # role, 40 pieces, finish, [DONE]
    assert all(c.startswith(b"data: ") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert len(batched) < len(chunks)  # the default batches unpaced events


async def test_a_client_leaving_a_paced_unbatched_stream_is_recorded() -> None:
    """A client that hangs up mid-stream ends the mock's timed writes and counts as disconnected."""
    runner, port = await start_mock_server("127.0.0.1", 0)
    try:
        body = orjson.dumps(chat_body("mock-gpt", mock={"chunks": 500, "unbatched": True,
                                                         "delay": 0.01}))  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await reader.readuntil(b"data: ")
        writer.close()
        stats: dict[str, int] = {}
        for _ in range(100):
            stats = await get_json(f"http://127.0.0.1:{port}/_mock/stats")
            if not stats["in_flight"]:
                break
            await asyncio.sleep(0.05)
        record = (await get_json(f"http://127.0.0.1:{port}/_mock/requests"))[0]
    finally:
        await runner.cleanup()
    assert stats["disconnected"] == 1 and record["outcome"] == "disconnected"
    assert 1 <= record["events_sent"] < 503


def test_mock_overrides_default_to_loopback_only() -> None:
    """auto allows client mock settings on loopback only; on and off are what they say."""
    from gateway.config import ServerSettings

    assert ServerSettings(host="127.0.0.1").mock_overrides_allowed
    assert not ServerSettings(host="0.0.0.0").mock_overrides_allowed
    assert ServerSettings(host="0.0.0.0", mock_overrides="on").mock_overrides_allowed
    assert not ServerSettings(mock_overrides="off").mock_overrides_allowed


def test_slow_first_events_are_an_exact_share_spread_evenly() -> None:
    """slow_first_ratio picks the same requests every run: every 1/ratio-th, exactly that share."""
    behaviour = MockBehaviour(slow_first_ratio=0.1, slow_first_delay=2.0)
    delays = [first_byte_delay(behaviour, n) for n in range(1, 1001)]
    assert [n for n, d in enumerate(delays, 1) if d][:3] == [10, 20, 30]
    assert delays.count(2.0) == 100 and delays.count(0.0) == 900
    quarter = behaviour.merged({"slow_first_ratio": "0.25", "first_byte_delay": 0.1})
    slow = [n for n in range(1, 10) if first_byte_delay(quarter, n) == 2.0]
    assert slow == [4, 8] and first_byte_delay(quarter, 5) == 0.1
    assert first_byte_delay(DEFAULT_BEHAVIOUR, 10) == 0.0
    with pytest.raises(ValueError, match="slow_first_ratio"):
        behaviour.merged({"slow_first_ratio": 1.5})


async def test_the_server_delays_its_slow_share_of_requests() -> None:
    """Started with a slow share, the mock makes every 2nd request wait; X-Mock-* headers set it."""
    runner, port = await start_mock_server(
        "127.0.0.1", 0, MockBehaviour(slow_first_ratio=0.5, slow_first_delay=0.4)
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    took: list[float] = []
    try:
        headers: list[dict[str, str]] = [{}, {}, {}, {"X-Mock-Slow-First-Ratio": "0"}]
        for extra in headers:
            began = time.monotonic()
            result = await read_stream(url, chat_body("mock-gpt"), headers=extra)
            assert result.done
            took.append(time.monotonic() - began)
    finally:
        await runner.cleanup()
    fast, slow = [took[0], took[2], took[3]], took[1]
    assert slow >= 0.4 and max(fast) < 0.3
