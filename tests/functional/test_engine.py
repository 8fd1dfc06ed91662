"""The stream engine against an upstream that breaks the rules: retries before the first event,
no redirects followed, nothing inflated, flow control, default capacity and load shedding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Proc
from tests.functional.client import chat_body, read_stream
from tests.hostile_upstream import ConnectionCounter, HostileUpstream

CHAT = "/v1/chat/completions"


@pytest.fixture
async def odd() -> AsyncIterator[HostileUpstream]:
    counter = ConnectionCounter()
    await counter.start()
    server = HostileUpstream(redirect_to=f"http://127.0.0.1:{counter.port}/steal")
    server.counter = counter  # type: ignore[attr-defined]
    await server.start()
    yield server
    await server.stop()
    await counter.stop()


@pytest.fixture
def gateway_on_odd(start_gateway, odd: HostileUpstream, tmp_path: Path) -> Proc:  # type: ignore[no-untyped-def]
    """A gateway whose only deployment is the hostile upstream (first event within 1 s)."""
    path = tmp_path / "odd.yaml"
    path.write_text(
        f"""
routing:
  retries: {{attempts: 3, backoff_base: 0.01, backoff_max: 0.02}}
deployments:
  odd:
    base_url: {odd.url}/v1
    models: [odd-gpt]
    timeouts: {{first_byte: 1, idle: 2}}
"""
    )
    proc: Proc = start_gateway("--config", str(path))
    return proc


async def stream_text(proc: Proc) -> tuple[int, Any]:
    result = await read_stream(proc.url + CHAT, chat_body("odd-gpt"))
    return result.status, result


@pytest.mark.parametrize("behaviour", ["reset", "silent", "garbage"])
async def test_a_stream_that_breaks_before_its_first_event_is_retried(
    gateway_on_odd: Proc, odd: HostileUpstream, behaviour: str
) -> None:
    """200 with event-stream headers and then a reset, silence past first_byte or garbage is
    retried like a refused connection: the client sees one clean stream."""
    odd.plan.extend([behaviour])
    status, result = await stream_text(gateway_on_odd)
    assert status == 200 and result.done
    assert result.text() == "alpha beta gamma delta"
    assert odd.seen == [behaviour, "ok"]
    if behaviour == "silent":
        assert odd.closed_by_peer == 1  # the stalled upstream request was closed, not leaked


async def test_a_stream_that_always_breaks_ends_as_a_real_status(
    gateway_on_odd: Proc, odd: HostileUpstream
) -> None:
    """When every attempt breaks before the first event the client gets an HTTP error status."""
    odd.plan.extend(["reset", "reset", "reset"])
    status, result = await stream_text(gateway_on_odd)
    assert status == 502
    assert orjson.loads(result.raw)["error"]["code"] == "upstream_protocol_error"
    assert odd.seen == ["reset"] * 3


@pytest.mark.parametrize("behaviour", ["redirect", "redirect-302"])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_redirect_is_never_followed(
    gateway_on_odd: Proc, odd: HostileUpstream, behaviour: str, stream: bool
) -> None:
    """A 3xx is an upstream error: the prompt never reaches the host it names."""
    odd.plan.extend([behaviour] * 3)
    result = await read_stream(gateway_on_odd.url + CHAT, chat_body("odd-gpt", stream=stream))
    assert result.status == 502
    error = orjson.loads(result.raw)["error"]
    assert "redirect" in error["message"] and "steal" not in error["message"]
    assert odd.counter.connections == 0  # type: ignore[attr-defined]


async def test_a_compressed_answer_is_refused_not_inflated(
    gateway_on_odd: Proc, odd: HostileUpstream
) -> None:
    """The gateway asks for identity; a gzip body anyway is a protocol error."""
    odd.plan.extend(["gzip"] * 3)
    status, result = await stream_text(gateway_on_odd)
    assert status == 502
    assert "compressed" in orjson.loads(result.raw)["error"]["message"]
    assert odd.seen == ["gzip"] * 3


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def worker_pid(proc: Proc) -> int:
    children = Path(f"/proc/{proc.process.pid}/task/{proc.process.pid}/children").read_text()
    return int(children.split()[0])


async def test_a_slow_client_holds_bounded_memory_and_pauses_the_upstream(
    gateway_on_mock: Proc,
) -> None:
    """A client reading 1 KB/s from a fast 30 MB stream: the worker's memory stays flat and the
    upstream is held back (it has sent a small part of the stream), then the client leaves."""
    mock_url = gateway_on_mock.extra["mock_url"]
    body = orjson.dumps(chat_body("mock-gpt", mock={"chunks": 200_000, "chunk_size": 100}))
    pid = worker_pid(gateway_on_mock)
    before = rss_kib(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_on_mock.port)
    writer.write(
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    # The gateway's socket receive buffer is kept small by reading slowly from a small one.
    received = 0
    for _ in range(6):
        received += len(await reader.read(1024))
        await asyncio.sleep(1)
    grown = rss_kib(pid) - before
    async with aiohttp.ClientSession() as session:
        records = await (await session.get(mock_url + "/_mock/requests")).json()
    sent = records[-1]["events_sent"]
    writer.close()
    assert received > 0
    assert grown < 8 * 1024, f"worker RSS grew {grown} KiB"
    # Kernel socket buffers hold a few MB at most; the rest of the 200,000 events waits upstream.
    assert sent < 60_000, f"the upstream sent {sent} events to a client that read {received} B"


async def test_600_streams_through_passthrough_defaults(start_gateway, mock_upstream: Proc) -> None:  # type: ignore[no-untyped-def]
    """`serve --upstream` with default limits serves 600 concurrent streams without an error.

    The streams start over half a second (as traffic arrives, not as one packet) and each lasts
    about 3 s, so all 600 are open at once.
    """
    proc: Proc = start_gateway("--upstream", mock_upstream.url + "/v1")
    body = chat_body("mock-gpt", mock={"chunks": 10, "delay": 0.3})
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> tuple[int, bytes]:
            await asyncio.sleep(index / 1200)
            async with session.post(proc.url + CHAT, json=body) as response:
                raw = await response.read()
                return response.status, raw[-200:]

        results = await asyncio.gather(*(one(i) for i in range(600)))
    assert [r for r in results if r[0] != 200 or not r[1].endswith(b"data: [DONE]\n\n")] == []
    async with aiohttp.ClientSession() as session:
        stats = await (await session.get(mock_upstream.url + "/_mock/stats")).json()
    assert stats["completed"] == 600


async def test_overload_is_shed_fast(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A burst beyond what one worker can take: the excess gets an immediate 503 `overloaded`,
    counted in the metrics, and no request waits more than a second for its answer.

    The connections are opened first and the requests written all at once, so what is timed is
    the gateway's answer, not this client's own queue.
    """
    proc: Proc = start_gateway(env={"LLM_GATEWAY_SHED_LAG": "0.05"})
    body = orjson.dumps(chat_body("demo", stream=False))
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    connections = [await asyncio.open_connection("127.0.0.1", proc.port) for _ in range(800)]

    async def answer(reader: asyncio.StreamReader, sent_at: float) -> tuple[int, float]:
        head = await reader.readuntil(b"\r\n")
        waited = time.monotonic() - sent_at
        await reader.read()
        return int(head.split()[1]), waited

    waits = []
    for reader, writer in connections:
        writer.write(request)
        waits.append(asyncio.ensure_future(answer(reader, time.monotonic())))
    results = await asyncio.gather(*waits)
    for _, writer in connections:
        writer.close()
    async with aiohttp.ClientSession() as session:
        metrics = await (await session.get(proc.url + "/metrics")).text()
    statuses = [status for status, _ in results]
    slowest = max(waited for _, waited in results)
    shed = statuses.count(503)
    assert statuses.count(200) + shed == len(results)
    assert shed > 0, "nothing was shed: the burst did not overload the worker"
    assert slowest < 1.0, f"slowest answer {slowest:.2f} s ({shed} shed)"
    assert 'llm_gateway_shed_total{reason="lag"}' in metrics
