"""The gateway relaying a real mock upstream process, read by raw clients and the openai SDK."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from gateway.mock.answer import expected_text
from tests.conftest import Proc
from tests.functional.client import chat_body, read_stream


async def mock_stats(proc: Proc) -> dict[str, int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proc.extra["mock_url"] + "/_mock/stats") as response,
    ):
        return await response.json()  # type: ignore[no-any-return]


async def test_relay_is_faithful_to_the_upstream(gateway_on_mock: Proc) -> None:
    """Every upstream event arrives once, in order, with an identical payload."""
    body = chat_body("mock-gpt", mock={"chunks": 200, "chunk_size": 3})
    direct = await read_stream(gateway_on_mock.extra["mock_url"] + "/v1/chat/completions", body)
    relayed = await read_stream(gateway_on_mock.url + "/v1/chat/completions", body)
    assert relayed.status == 200
    assert relayed.headers["Content-Type"].startswith("text/event-stream")
    assert relayed.headers["X-Accel-Buffering"] == "no"
    assert [_strip_created(e) for e in relayed.json_events()] == [
        _strip_created(e) for e in direct.json_events()
    ]
    assert relayed.done
    assert relayed.text() == expected_text(body)
    assert b"\r" not in relayed.raw
    assert all(line.startswith((b"data: ", b":")) for line in relayed.raw.split(b"\n") if line)


def _strip_created(event: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in event.items() if k not in {"created", "id"}}


async def test_alias_maps_to_upstream_model(gateway_on_mock: Proc) -> None:
    """A client-facing alias is sent upstream under the deployment's model name."""
    result = await read_stream(gateway_on_mock.url + "/v1/chat/completions", chat_body("alias"))
    assert result.done
    assert {e["model"] for e in result.json_events()} == {"mock-gpt"}


async def test_openai_sdk_async_stream_and_json(gateway_on_mock: Proc) -> None:
    """The official async openai client streams and fetches JSON through the gateway unchanged."""
    client = openai.AsyncOpenAI(base_url=gateway_on_mock.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "hello there"}]
    stream = await client.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    expected = expected_text({"model": "mock-gpt", "messages": messages})
    assert "".join(pieces) == expected
    completion = await client.chat.completions.create(model="mock-gpt", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == expected
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    await client.close()


def test_openai_sdk_sync_clients(gateway_on_mock: Proc) -> None:
    """The sync openai client covers chat, completions, embeddings and models."""
    client = openai.OpenAI(base_url=gateway_on_mock.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "hi"}]
    stream = client.chat.completions.create(model="mock-gpt", messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == expected_text({"model": "mock-gpt", "messages": messages})
    completion = client.completions.create(model="mock-gpt", prompt="once upon")
    assert completion.choices[0].text
    streamed = client.completions.create(model="mock-gpt", prompt="once upon", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    vectors = client.embeddings.create(model="mock-embed", input=["a", "b"])
    assert len(vectors.data) == 2
    assert {m.id for m in client.models.list()} >= {"mock-gpt", "mock-embed", "alias"}
    client.close()


async def test_include_usage_passes_through(gateway_on_mock: Proc) -> None:
    """A client that asks for usage gets the usage chunk, right before [DONE]."""
    body = chat_body("mock-gpt", stream_options={"include_usage": True})
    result = await read_stream(gateway_on_mock.url + "/v1/chat/completions", body)
    last = result.json_events()[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("workers", [2])
async def test_several_workers_share_the_port(start_gateway, workers: int) -> None:  # type: ignore[no-untyped-def]
    """With --workers 2 both workers answer on the one port."""
    proc: Proc = start_gateway(workers=workers)
    results = [
        await read_stream(proc.url + "/v1/chat/completions", chat_body(mock={"delay": 0}))
        for _ in range(6)
    ]
    assert all(r.done for r in results)
    assert proc.log().count("worker ready") == workers


async def test_upstream_connection_is_reused_after_a_stream(gateway_on_mock: Proc) -> None:
    """A stream that ended cleanly returns its upstream connection to the pool for the next one."""
    for _ in range(3):
        assert (
            await read_stream(gateway_on_mock.url + "/v1/chat/completions", chat_body("mock-gpt"))
        ).done
        # [DONE] reaches the client as the upstream's last chunk is still arriving; only once the
        # upstream response has ended is its connection back in the pool (a request sent in
        # between rightly opens another one).
        await asyncio.sleep(0.05)
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway_on_mock.extra["mock_url"] + "/_mock/requests") as response,
    ):
        ports = {r["client_port"] for r in await response.json()}
    assert len(ports) == 1
