"""Every kind of bad input or failing upstream gets a clear OpenAI-shaped error, never a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Proc, free_port, write_config
from tests.functional.client import chat_body, read_stream


async def post(
    url: str, data: bytes | None = None, *, json: Any = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=data, json=json, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        return response.status, await response.json()


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    """The body is exactly {"error": {message, type, param, code}}."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": 5, "messages": []}', 400, "model"),
        (b'{"model": "demo"}', 400, "messages"),
        (b'{"model": "demo", "messages": "hi"}', 400, "messages"),
        (b'{"model": "demo", "messages": [{"role": "boss"}]}', 400, "messages[0].role"),
        (b'{"model": "demo", "stream": "yes", "messages": [{"role": "user"}]}', 400, "stream"),
        (
            b'{"model": "demo", "temperature": 9, "messages": [{"role": "user"}]}',
            400,
            "temperature",
        ),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ],
)
async def test_bad_requests(start_gateway, payload: bytes, status: int, param: str | None) -> None:  # type: ignore[no-untyped-def]
    """Malformed JSON, missing or mistyped fields and unknown models name the problem."""
    proc: Proc = start_gateway()
    got, body = await post(proc.url + "/v1/chat/completions", payload)
    assert got == status
    assert assert_openai_error(body)["param"] == param


async def test_oversized_body_and_unknown_path(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A body past the limit gets 413 and an unknown path 404, both as OpenAI errors."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_MAX_BODY_BYTES": "1000"})
    big = chat_body(stream=False, padding="x" * 5000)
    status, body = await post(proc.url + "/v1/chat/completions", json=big)
    assert status == 413
    assert assert_openai_error(body)["code"] == "payload_too_large"
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/v1/nothing") as response:
            assert response.status == 404
            assert_openai_error(await response.json())
        async with session.get(proc.url + "/v1/chat/completions") as response:
            assert response.status == 405
            assert_openai_error(await response.json())


async def test_security_headers_and_request_id(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Every response carries the security headers and echoes a sane X-Request-Id."""
    proc: Proc = start_gateway()
    async with (
        aiohttp.ClientSession() as session,
        session.get(proc.url + "/v1/models", headers={"X-Request-Id": "abc-123"}) as response,
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Request-Id"] == "abc-123"


async def test_cors_for_configured_origin(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A configured origin passes preflight and sees CORS headers; another origin does not."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_CORS_ORIGINS": "[https://app.example]"})
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    }
    async with aiohttp.ClientSession() as session:
        async with session.options(proc.url + "/v1/chat/completions", headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        other = {**preflight, "Origin": "https://evil.example"}
        async with session.options(proc.url + "/v1/chat/completions", headers=other) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    result = await read_stream(
        proc.url + "/v1/chat/completions", chat_body(), headers={"Origin": "https://app.example"}
    )
    assert result.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_upstream_unreachable_is_502(start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A deployment nobody listens on answers 502 quickly."""
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    proc: Proc = start_gateway("--config", str(config))
    status, body = await post(proc.url + "/v1/chat/completions", json=chat_body("mock-gpt"))
    assert status == 502
    assert assert_openai_error(body)["code"] == "upstream_unreachable"


async def test_upstream_timeout_is_504(start_gateway, mock_upstream: Proc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No first event within the deployment's first-byte timeout gives 504."""
    config = write_config(tmp_path, mock_upstream.url, deployment="    timeouts: {first_byte: 0.5}")
    proc: Proc = start_gateway("--config", str(config))
    for stream in (True, False):
        body = chat_body("mock-gpt", stream=stream, mock={"first_byte_delay": 3})
        status, error = await post(proc.url + "/v1/chat/completions", json=body)
        assert status == 504
        assert assert_openai_error(error)["code"] == "upstream_timeout"


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_error_status_passes_through(gateway_on_mock: Proc, stream: bool) -> None:
    """An upstream 4xx/5xx before the first byte keeps its status and OpenAI body."""
    for code in (400, 422, 429, 503):
        body = chat_body("mock-gpt", stream=stream, mock={"fail_status": code})
        status, error = await post(gateway_on_mock.url + "/v1/chat/completions", json=body)
        assert status == code
        assert_openai_error(error)


async def test_failure_before_first_byte_is_502(gateway_on_mock: Proc) -> None:
    """An upstream that drops the connection before answering becomes a 502."""
    body = chat_body("mock-gpt", mock={"fail_before_first_byte": True})
    status, error = await post(gateway_on_mock.url + "/v1/chat/completions", json=body)
    assert status == 502
    assert_openai_error(error)


@pytest.mark.parametrize("failure", [{"die_after": 4, "delay": 0.01}, {"error_after": 4}])
async def test_mid_stream_failure_ends_with_one_error_event(
    gateway_on_mock: Proc, failure: dict[str, int]
) -> None:
    """A failure after the headers ends the stream with one error event and no [DONE]."""
    result = await read_stream(
        gateway_on_mock.url + "/v1/chat/completions", chat_body("mock-gpt", mock=failure)
    )
    assert result.status == 200
    assert not result.done
    events = result.json_events()
    assert len(events) == 5
    assert "error" in events[-1] and all("error" not in e for e in events[:-1])
    assert set(events[-1]["error"]) == {"message", "type", "param", "code"}


async def test_stalled_upstream_hits_the_idle_timeout(
    start_gateway, mock_upstream: Proc, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An upstream that goes silent mid-stream ends with a timeout error event."""
    config = write_config(tmp_path, mock_upstream.url, deployment="    timeouts: {idle: 0.5}")
    proc: Proc = start_gateway("--config", str(config))
    result = await asyncio.wait_for(
        read_stream(
            proc.url + "/v1/chat/completions", chat_body("mock-gpt", mock={"stall_after": 3})
        ),
        timeout=10,
    )
    events = result.json_events()
    assert len(events) == 4 and events[-1]["error"]["code"] == "upstream_timeout"
    assert not result.done
