"""The relay against a scripted upstream: framing, peeking, keep-alives and failures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import load_config
from gateway.errors import UpstreamProtocolError
from gateway.store.sqlite import SQLiteStore
from gateway.web import make_app
from tests.fakes import FakeUpstreams, Step

Client = TestClient  # type: ignore[type-arg]
BODY = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstreams() -> FakeUpstreams:
    return FakeUpstreams()


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]], upstreams: FakeUpstreams, tmp_path: Path
) -> Client:
    environ = {
        "LLM_GATEWAY_KEEPALIVE_INTERVAL": "0.2",
        "LLM_GATEWAY_STORE__PATH": str(tmp_path / "store.sqlite3"),  # its spool goes beside it
    }
    store = SQLiteStore(tmp_path / "store.sqlite3")
    app = make_app(load_config(None, environ), upstreams=upstreams, store=store)
    return await aiohttp_client(app)


async def post(client: Client, body: dict[str, Any] = BODY) -> tuple[int, bytes]:
    response = await client.post("/v1/chat/completions", json=body)
    return response.status, await response.read()


async def test_events_split_anywhere_are_reassembled(
    client: Client, upstreams: FakeUpstreams
) -> None:
    """Events cut mid-line and mid-CRLF arrive whole, LF-framed, with `data: ` prefixes."""
    stream = b'data:{"a":1}\r\n\r\ndata: {"b":2}\r\rdata: x\ndata: y\n\ndata: [DONE]\n\n'
    upstreams.script(*(Step(stream[i : i + 3]) for i in range(0, len(stream), 3)))
    status, raw = await post(client)
    assert status == 200
    assert raw == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n'


async def test_nothing_is_read_after_done(client: Client, upstreams: FakeUpstreams) -> None:
    """The stream ends at [DONE] and the upstream is closed."""
    response = upstreams.script(Step(b"data: 1\n\ndata: [DONE]\n\n"), Step(b"data: late\n\n"))
    _, raw = await post(client)
    assert raw == b"data: 1\n\ndata: [DONE]\n\n"
    assert response.closed


async def test_failure_before_first_event_is_a_real_status(
    client: Client, upstreams: FakeUpstreams
) -> None:
    """An upstream that breaks before its first event is retried, then an HTTP error."""
    for _ in range(3):  # routing.retries.attempts
        upstreams.script(Step(b": hello\n\n"), Step(error=UpstreamProtocolError("boom")))
    status, raw = await post(client)
    assert status == 502
    assert b'"upstream_protocol_error"' in raw
    assert len(upstreams.sent) == 3 and not upstreams.responses


async def test_failure_after_first_event_ends_with_error_event(
    client: Client, upstreams: FakeUpstreams
) -> None:
    """After the headers a failure is one final error event and no [DONE]."""
    upstreams.script(Step(b"data: 1\n\n"), Step(error=UpstreamProtocolError("boom")))
    status, raw = await post(client)
    assert status == 200
    assert raw.startswith(b'data: 1\n\ndata: {"error":')
    assert raw.endswith(b"\n\n") and b"[DONE]" not in raw


async def test_eof_without_done_is_an_error(client: Client, upstreams: FakeUpstreams) -> None:
    """An upstream that just stops before [DONE] is reported, never passed off as complete."""
    upstreams.script(Step(b"data: 1\n\n"))
    _, raw = await post(client)
    assert b"before [DONE]" in raw and b"[DONE]\n" not in raw


async def test_slow_first_event_sends_headers_and_keepalive(
    client: Client, upstreams: FakeUpstreams
) -> None:
    """Waiting longer than the keep-alive interval commits to 200 and sends `: keep-alive`."""
    upstreams.script(Step(b"data: 1\n\ndata: [DONE]\n\n", delay=0.5))
    status, raw = await post(client)
    assert status == 200
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.endswith(b"data: 1\n\ndata: [DONE]\n\n")


async def test_upstream_error_event_is_final(client: Client, upstreams: FakeUpstreams) -> None:
    """An error event from the upstream itself is forwarded and ends the stream."""
    upstreams.script(Step(b'data: 1\n\ndata: {"error": {"message": "x"}}\n\ndata: 2\n\n'))
    _, raw = await post(client)
    assert raw == b'data: 1\n\ndata: {"error": {"message": "x"}}\n\n'


async def test_streaming_request_answered_with_json_is_rejected(
    client: Client, upstreams: FakeUpstreams
) -> None:
    """An upstream that ignores stream=true is a protocol error, not a silent JSON passthrough."""
    for _ in range(3):
        upstreams.script(Step(b"{}"), content_type="application/json")
    status, _ = await post(client)
    assert status == 502
    assert len(upstreams.sent) == 3
