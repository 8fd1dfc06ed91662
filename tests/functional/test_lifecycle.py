"""Connections and processes over their life: disconnects, keep-alives, stalls, drains, crashes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import ROOT, Proc, free_port, wait_for_port, write_config
from tests.event_stream import EventStreamParser
from tests.functional.client import chat_body, read_stream


async def mock_stats(mock_url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(mock_url + "/_mock/stats") as r:
        return await r.json()  # type: ignore[no-any-return]


async def wait_for_stat(mock_url: str, key: str, value: int, timeout: float) -> float:
    """Poll the mock until stats[key] == value; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if (await mock_stats(mock_url))[key] == value:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"mock {key} never reached {value}: {await mock_stats(mock_url)}")


async def test_client_disconnect_cancels_upstream_within_a_second(gateway_on_mock: Proc) -> None:
    """Closing the client connection mid-stream makes the gateway drop its upstream request."""
    mock_url = gateway_on_mock.extra["mock_url"]
    body = chat_body("mock-gpt", mock={"chunks": 500, "delay": 0.05})
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway_on_mock.url + "/v1/chat/completions", json=body)
        parser = EventStreamParser()
        seen = 0
        async for chunk in response.content.iter_any():
            seen += len(parser.feed(chunk))
            if seen >= 3:
                break
        response.close()  # drops the connection
    elapsed = await wait_for_stat(mock_url, "disconnected", 1, timeout=1.0)
    assert elapsed < 1.0
    assert (await mock_stats(mock_url))["completed"] == 0


async def test_keepalive_comments_while_waiting(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A quiet upstream gets `: keep-alive` comments, also before the first token."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_KEEPALIVE_INTERVAL": "0.2"})
    body = chat_body(mock={"chunks": 3, "first_byte_delay": 0.7, "delay": 0.5})
    result = await read_stream(proc.url + "/v1/chat/completions", body)
    assert result.done
    assert result.raw.startswith(b": keep-alive\n\n")
    assert result.comments >= 4


async def test_sigterm_lets_streams_in_flight_finish(gateway_on_mock: Proc) -> None:
    """SIGTERM during a stream: the stream completes, new connections are refused, exit code 0."""
    body = chat_body("mock-gpt", mock={"chunks": 30, "delay": 0.05})
    task = asyncio.create_task(read_stream(gateway_on_mock.url + "/v1/chat/completions", body))
    await asyncio.sleep(0.4)
    gateway_on_mock.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", gateway_on_mock.port), 1):
        pass
    result = await asyncio.wait_for(task, 10)
    assert result.done and len(result.json_events()) == 32
    assert await asyncio.to_thread(gateway_on_mock.process.wait, 15) == 0


async def test_sigterm_grace_period_ends_long_streams_with_an_error(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A stream still running when the grace period ends gets a final error event, not a cut."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_DRAIN_GRACE": "1"})
    body = chat_body(mock={"chunks": 500, "delay": 0.05})
    task = asyncio.create_task(read_stream(proc.url + "/v1/chat/completions", body))
    await asyncio.sleep(0.5)
    proc.signal(signal.SIGTERM)
    result = await asyncio.wait_for(task, 10)
    assert not result.done
    assert result.json_events()[-1]["error"]["code"] == "shutting_down"
    assert await asyncio.to_thread(proc.process.wait, 15) == 0


async def test_crashed_worker_is_replaced(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Killing a worker: the supervisor starts a new one and the port keeps answering."""
    proc: Proc = start_gateway(workers=2)
    deadline = time.monotonic() + 15
    while proc.log().count("worker ready") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    pids = [int(p) for p in re.findall(r'"msg": ?"worker started".*?"pid": ?(\d+)', proc.log())]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    while proc.log().count("worker ready") < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "worker died; restarting" in proc.log()
    assert proc.log().count("worker ready") == 3
    for _ in range(4):
        assert (await read_stream(proc.url + "/v1/chat/completions", chat_body())).done


async def test_slow_headers_and_body_are_cut_off(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A client dribbling headers is disconnected; a body that never completes gets 408."""
    proc: Proc = start_gateway(
        env={"LLM_GATEWAY_HEADER_TIMEOUT": "1", "LLM_GATEWAY_BODY_TIMEOUT": "1"}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":'
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


async def test_client_that_stops_reading_is_dropped(
    start_gateway, mock_upstream: Proc, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A client that stops reading is dropped after the write-stall timeout; upstream cancelled."""
    config = write_config(tmp_path, mock_upstream.url)
    proc: Proc = start_gateway(
        "--config", str(config), env={"LLM_GATEWAY_WRITE_STALL_TIMEOUT": "1"}
    )
    # About 50 MB: far more than the loopback socket buffers between the mock and the gateway
    # hold (several MB each way), so the mock cannot finish writing before the stall is noticed.
    payload = orjson.dumps(chat_body("mock-gpt", mock={"chunks": 50000, "chunk_size": 150}))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proc.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    try:
        await wait_for_stat(mock_upstream.url, "disconnected", 1, timeout=15)
    finally:
        sock.close()


async def test_full_upstream_pool_answers_503_at_once(
    start_gateway, mock_upstream: Proc, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A deployment at its connection limit refuses the next request with 503, without queueing."""
    config = write_config(tmp_path, mock_upstream.url, deployment="    max_connections: 1")
    proc: Proc = start_gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        holder = await session.post(
            proc.url + "/v1/chat/completions", json=chat_body("mock-gpt", mock={"stall_after": 1})
        )
        await holder.content.readline()
        started = time.monotonic()
        async with session.post(
            proc.url + "/v1/chat/completions", json=chat_body("mock-gpt")
        ) as refused:
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == "upstream_pool_full"
        assert time.monotonic() - started < 0.5
        holder.close()


def test_make_serve_streams_the_demo_model(tmp_path: Path) -> None:
    """`make serve` starts the embedded default; `demo` streams; Ctrl-C stops it cleanly.

    make itself dies of the SIGINT (exit -2) after its child exits; the gateway's own clean stop
    is what the log shows.
    """
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"ARGS=--port {port}"],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "LLM_GATEWAY_STORE__PATH": str(tmp_path / "store.sqlite3")},
        )
    try:
        wait_for_port(port, process, timeout=120)
        result = asyncio.run(
            read_stream(f"http://127.0.0.1:{port}/v1/chat/completions", chat_body())
        )
        assert result.done and len(result.text()) > 20
    finally:
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(30)
    log = log_path.read_text()
    assert "--upstream" in log and "embedded defaults" in log
    assert code in (0, -signal.SIGINT), log
    assert '"msg":"stopped"' in log and "worker did not stop" not in log
