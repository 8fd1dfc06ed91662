"""A hostile upstream and hostile bytes: no secret comes back, every error is the gateway's JSON."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Proc, create_key
from tests.functional.client import StreamRead, chat_body, read_stream

UPSTREAM_CANARY = "sk-upstream-CANARY" + secrets.token_hex(8)


def hostile_config(tmp_path: Path, hostile_url: str) -> Path:
    """Auth on, one deployment on the hostile upstream with a canary key, every model passed on."""
    path = tmp_path / "hostile.yaml"
    path.write_text(
        f"""
server: {{log_level: debug}}
auth: {{mode: "on"}}
deployments:
  hostile:
    base_url: {hostile_url}/v1
    api_key: {UPSTREAM_CANARY}
models:
  "*": {{deployments: [hostile]}}
"""
    )
    return path


@pytest.fixture
def hostile_gateway(
    start_gateway, hostile_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> tuple[Proc, str]:  # type: ignore[no-untyped-def]
    """A gateway in front of the hostile upstream, and a client key (the client canary)."""
    config = hostile_config(tmp_path, hostile_upstream.url)
    _, key = create_key(keyed_env, "--config", str(config))
    proc: Proc = start_gateway("--config", str(config), env=keyed_env)
    proc.extra["hostile_url"] = hostile_upstream.url
    return proc, key


async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.read()


async def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes, return all the server answered (it closes after a parse error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_upstream_401_and_403_become_the_gateways_own_error(hostile_gateway) -> None:  # type: ignore[no-untyped-def]
    """An upstream refusing the gateway's key is a 502 naming the deployment, not its 401 text."""
    proc, key = hostile_gateway
    auth = {"Authorization": f"Bearer {key}"}
    for model, stream in (("echo-401", False), ("echo-403", True)):
        status, body = await post(
            proc.url + "/v1/chat/completions", chat_body(model, stream=stream), auth
        )
        error = orjson.loads(body)["error"]
        assert status == 502, body
        assert error["code"] == "upstream_auth_failed" and "'hostile'" in error["message"]
        assert b"Incorrect API key" not in body and UPSTREAM_CANARY.encode() not in body


async def test_passed_through_errors_and_error_events_are_redacted(hostile_gateway) -> None:  # type: ignore[no-untyped-def]
    """An echoed key, bearer token or host is replaced, in a JSON error and in an error event."""
    proc, key = hostile_gateway
    auth = {"Authorization": f"Bearer {key}"}
    status, body = await post(
        proc.url + "/v1/chat/completions", chat_body("echo-400", stream=False), auth
    )
    assert status == 400 and b"[redacted]" in body
    assert orjson.loads(body)["error"]["message"].startswith("Incorrect API key provided:")
    hostile_host = proc.extra["hostile_url"].removeprefix("http://")
    for headers in (auth, {**auth, "X-Gateway-Resumable": "true"}):
        result: StreamRead = await read_stream(
            proc.url + "/v1/chat/completions", chat_body("echo-stream"), headers
        )
        final = result.json_events()[-1]
        assert result.status == 200 and not result.done
        assert "[redacted]" in final["error"]["message"]
        assert (
            UPSTREAM_CANARY.encode() not in result.raw and hostile_host.encode() not in result.raw
        )


async def test_no_canary_in_any_error_body_log_line_or_metric(hostile_gateway) -> None:  # type: ignore[no-untyped-def]
    """The client and upstream keys appear in no answer, log line or scrape, whatever fails."""
    proc, key = hostile_gateway
    auth = {"Authorization": f"Bearer {key}"}
    url = proc.url + "/v1/chat/completions"
    answers: list[bytes] = []
    for model in (
        "echo-401",
        "echo-403",
        "echo-400",
        "echo-500-text",
        "reset-before-answer",
        "redirect",
        "ok",
    ):
        for stream in (False, True):
            answers.append((await post(url, chat_body(model, stream=stream), auth))[1])
    for model in ("echo-stream", "reset-mid-stream"):
        answers.append((await read_stream(url, chat_body(model), auth)).raw)
    answers.append((await post(url, chat_body("ok"), {"Authorization": f"Bearer {key}x"}))[1])
    # aiohttp's own parse errors used to quote the offending header line, key and all.
    for bad in (f"Authorization: Bearer {key}\x01", f"Authorization Bearer {key}"):
        answer = await raw_request(
            proc.port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n{bad}\r\n\r\n".encode()
        )
        assert answer.split(b"\r\n")[0].endswith(b"400 Bad Request"), answer
        assert b"application/json" in answer and b"bad_http_request" in answer
        answers.append(answer)
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/metrics") as response:
            answers.append(await response.read())
        async with session.get(proc.extra["hostile_url"] + "/_hostile/seen") as response:
            seen = await response.json()
    assert f"Bearer {UPSTREAM_CANARY}" in seen  # the secret went out, so an echo could leak it
    await asyncio.sleep(0.5)  # access log lines of the last requests
    log = proc.log()
    assert log.count('"request_id"') > 10
    for canary in (UPSTREAM_CANARY, key):
        assert canary not in log
        assert not [a for a in answers if canary.encode() in a]
