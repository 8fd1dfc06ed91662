"""What an attacker tried, closed and kept closed, against the real `llm-gateway serve` process."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.config import load_config
from gateway.web import make_app
from tests.conftest import MASTER_KEY, Proc, create_key, run_cli
from tests.functional.client import chat_body, read_stream
from tests.functional.test_deploy_stack import Nginx

# Routes anyone may call without a key: liveness, readiness, the playground, and the operator
# endpoints that deploy/nginx keeps on an internal listener (/metrics, /health/detailed).
PUBLIC_ROUTES = {
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/detailed"),
    ("GET", "/metrics"),
    ("GET", "/playground"),
}


async def fetch(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers or {}, json=body) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def series(scrape: str) -> set[str]:
    """The series of a scrape whose labels could carry what a client sent (route, model, key)."""
    found = {line.rsplit(" ", 1)[0] for line in scrape.splitlines() if line and line[0] != "#"}
    return {s for s in found if any(f'{label}="' in s for label in ("route", "model", "key"))}


async def scrape(url: str) -> str:
    return (await fetch("GET", url + "/metrics"))[2].decode()


async def test_random_paths_and_model_names_add_no_series(
    start_gateway, hostile_upstream: Proc
) -> None:  # type: ignore[no-untyped-def]
    """5,000 random paths and pass-through model names (4:1) leave the series count unchanged."""
    # No load shedding: a shed request is a (bounded) series of its own that the warm-up lacks.
    proc: Proc = start_gateway(
        "--upstream", hostile_upstream.url + "/v1", env={"LLM_GATEWAY_SHED_LAG": "60"}
    )
    url = proc.url

    async def burst(session: aiohttp.ClientSession, count: int) -> None:
        async def one(i: int) -> None:
            token = secrets.token_hex(6)
            if i % 5:
                target, body = f"/v1/{token}/{'x' * (i % 300)}", {}
            else:
                target, body = "/v1/chat/completions", chat_body(f"m-{token}", stream=False)
            async with session.post(url + target, json=body) as response:
                await response.read()

        for start in range(0, count, 100):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))

    async with aiohttp.ClientSession() as session:
        await burst(session, 4)  # every label combination these requests can produce, once
        before = series(await scrape(url))
        await burst(session, 5000)
        after = await scrape(url)
    assert series(after) == before
    assert 'route="unmatched"' in after and 'model="other"' in after
    assert "m-" not in after.replace('model="other"', "")


async def test_every_route_is_public_by_allowlist_or_needs_auth(
    start_gateway, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Walking app.router: every route off the public allowlist refuses a request without a key."""
    app = make_app(load_config(None, {}))
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        routes.add((route.method, path))
    assert routes >= PUBLIC_ROUTES, "the allowlist names a route that no longer exists"
    env = {**keyed_env, "LLM_GATEWAY_AUTH__MODE": "on"}
    proc: Proc = start_gateway(env=env)
    for method, path in sorted(routes - PUBLIC_ROUTES):
        concrete = (
            path.replace("{stream_id}", "s1").replace("{model}", "demo").replace("{id}", "k1")
        )
        status, _, body = await fetch(
            method, proc.url + concrete, body={} if method == "POST" else None
        )
        assert status == 401, (method, path, status, body)
        assert orjson.loads(body)["error"]["type"] == "authentication_error"
    for method, path in PUBLIC_ROUTES:
        status, _, _ = await fetch(
            method, proc.url + path.replace("/playground", "/playground/app.js")
        )
        assert status == 200, (method, path)


@pytest.mark.parametrize(
    ("master", "said"),
    [("x", "weak"), ("replace-with-32-or-more-random-characters", "placeholder")],
)
def test_a_weak_master_key_never_starts(tmp_path: Path, master: str, said: str) -> None:
    """With auth auto and no key yet, a weak or placeholder master key still refuses to start."""
    env = {"LLM_GATEWAY_STORE__PATH": str(tmp_path / "s.sqlite3"), "LLM_GATEWAY_MASTER_KEY": master}
    result = run_cli("serve", "--port", "0", env=env)
    assert result.returncode == 2 and said in result.stderr, result.stderr


def test_an_unknown_or_empty_variable_stops_serve(tmp_path: Path) -> None:
    """A typo in an LLM_GATEWAY_* variable fails start-up naming it (not auth silently off)."""
    for name, value in (("LLM_GATEWAY_AUTH_MODE", "on"), ("LLM_GATEWAY_AUTH__MODE", "")):
        env = {"LLM_GATEWAY_STORE__PATH": str(tmp_path / "s.sqlite3"), name: value}
        result = run_cli("serve", "--port", "0", env=env)
        assert result.returncode == 2 and f"environment {name}:" in result.stderr, result.stderr


async def test_deep_json_is_a_400_naming_the_limit(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Nesting that the parser takes but the encoder refuses is rejected at parse time, as a 400."""
    proc: Proc = start_gateway()
    for depth in (300, 1000):
        nested = "[" * depth + "]" * depth
        raw = (
            b'{"model":"demo","messages":[{"role":"user","content":"hi"}],"x":'
            + nested.encode()
            + b"}"
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(proc.url + "/v1/chat/completions", data=raw,
                         headers={"Content-Type": "application/json"}) as response,
        ):  # fmt: skip
            error = (await response.json())["error"]
        assert response.status == 400 and "128 levels" in error["message"]
    assert "Traceback" not in proc.log()


async def test_the_demo_model_bounds_every_mock_setting(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Huge chunk counts, dimensions or delays are refused at once; they never reach the loop."""
    proc: Proc = start_gateway()
    url = proc.url + "/v1"
    started = time.monotonic()
    for path, body in (
        ("/chat/completions", chat_body(mock={"chunks": 1_000_000})),
        ("/chat/completions", chat_body(stream=False, mock={"first_byte_delay": 3600})),
        ("/chat/completions", chat_body(mock={"chunks": 4000, "chunk_size": 1000})),
        ("/embeddings", {"model": "demo", "input": "x", "dimensions": 5_000_000}),
    ):
        status, _, answer = await fetch("POST", url + path, body=body)
        assert status == 400 and orjson.loads(answer)["error"]["param"] == "mock", answer
    assert time.monotonic() - started < 2.0


async def test_mock_overrides_can_be_turned_off(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """--no-mock-overrides: a request's mock object no longer makes the demo fail."""
    proc: Proc = start_gateway("--no-mock-overrides")
    status, _, _ = await fetch(
        "POST",
        proc.url + "/v1/chat/completions",
        body=chat_body(stream=False, mock={"fail_status": 503}),
    )
    assert status == 200


async def test_resumable_streams_are_bounded_per_key(
    start_gateway, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Abandoned resumable streams count against their key until they end: the next is a 429."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_STREAMS__MAX_PER_KEY": "2",
        "LLM_GATEWAY_LIMITS__KEY_CONCURRENT": "3",
    }
    _, key = create_key(env)
    _, other = create_key(env)
    proc: Proc = start_gateway(env=env)
    url = proc.url + "/v1/chat/completions"
    slow = chat_body(mock={"chunks": 30, "delay": 0.1})
    resumable = {"Authorization": f"Bearer {key}", "X-Gateway-Resumable": "true"}
    ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # fire and forget: read the headers, drop the connection
            async with session.post(url, json=slow, headers=resumable) as response:
                assert response.status == 200
                ids.append(response.headers["X-Gateway-Stream-Id"])
    status, _, body = await fetch("POST", url, headers=resumable, body=slow)
    assert status == 429 and orjson.loads(body)["error"]["code"] == "resumable_streams_exceeded"
    # They also hold the key's concurrency: one slot of three is left for an ordinary request.
    plain = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=slow, headers=plain) as held,
    ):
        assert held.status == 200
        status, _, body = await fetch("POST", url, headers=plain, body=chat_body(stream=False))
        assert status == 429 and orjson.loads(body)["error"]["code"] == "concurrency_limit_exceeded"
    other_key = {"Authorization": f"Bearer {other}", "X-Gateway-Resumable": "true"}
    assert (await fetch("POST", url, headers=other_key, body=chat_body(stream=False)))[0] == 200
    status, _, _ = await fetch("POST", proc.url + f"/v1/streams/{ids[0]}/cancel", headers=plain)
    assert status == 200
    await asyncio.sleep(0.3)
    assert (await read_stream(url, chat_body(), resumable)).done


async def test_smaller_holes(start_gateway, keyed_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Huge ?after=, a slow admin body, private answers, a key's own model list, unknown models."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_BODY_TIMEOUT": "0.5",
    }
    refused = run_cli("keys", "create", "--name", "n", "--models", "demo,gpt-9", env=env)
    assert refused.returncode != 0 and "gpt-9" in refused.stderr
    _, key = create_key(env, "--models", "demo")
    proc: Proc = start_gateway(env=env)
    auth = {"Authorization": f"Bearer {key}"}
    status, _, body = await fetch("GET", proc.url + f"/v1/streams/s1?after={2**64}", headers=auth)
    assert status == 400 and orjson.loads(body)["error"]["param"] == "Last-Event-ID"
    status, headers, body = await fetch("GET", proc.url + "/v1/models", headers=auth)
    assert [m["id"] for m in orjson.loads(body)["data"]] == ["demo"]
    assert headers["Cache-Control"] == "private, no-store"
    status, headers, _ = await fetch("POST", proc.url + "/v1/chat/completions", headers=auth,
                                     body=chat_body(stream=False))  # fmt: skip
    assert status == 200 and headers["Cache-Control"] == "private, no-store"
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    status, _, body = await fetch("POST", proc.url + "/admin/keys", headers=admin,
                                  body={"name": "x", "models": ["nope"]})  # fmt: skip
    assert status == 400 and b"nope" in body
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(
        f"POST /admin/keys HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.split(b"\r\n")[0].endswith(b"408 Request Timeout"), answer


async def test_sigterm_announces_not_ready_before_closing(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """On SIGTERM readiness turns 503 while the listener still accepts, for the announce period."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_DRAIN_ANNOUNCE": "2"})
    assert (await fetch("GET", proc.url + "/health/ready"))[0] == 200
    proc.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    status, _, body = await fetch("GET", proc.url + "/health/ready")
    assert status == 503 and orjson.loads(body)["status"] == "draining"
    assert (await fetch("POST", proc.url + "/v1/chat/completions", body=chat_body(stream=False)))[
        0
    ] == 200
    await asyncio.sleep(2.5)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proc.port), timeout=1):
        pass
    assert proc.process.wait(20) == 0


async def test_a_read_resumable_stream_still_streams(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """The per-key quota leaves ordinary resumable streams alone: one read to the end works."""
    proc: Proc = start_gateway()
    result = await read_stream(
        proc.url + "/v1/chat/completions", chat_body(), {"X-Gateway-Resumable": "true"}
    )
    assert result.done and result.headers.get("X-Gateway-Stream-Id")


async def test_nginx_keeps_operator_endpoints_off_the_public_listener(
    start_gateway, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """deploy/nginx: /metrics, /health/detailed and /admin: 404 in public, served internally."""
    proc: Proc = start_gateway()
    nginx = Nginx(tmp_path, [proc.port])
    try:
        for path in ("/metrics", "/health/detailed", "/admin", "/admin/keys", "/admin/usage"):
            assert (await fetch("GET", nginx.url + path))[0] == 404, path
            if path != "/admin":  # the gateway itself has no /admin route
                internal = f"http://127.0.0.1:{nginx.internal_port}{path}"
                assert (await fetch("GET", internal))[0] in (200, 403), path
        assert (await fetch("GET", nginx.url + "/v1/models"))[0] == 200
        assert (await fetch("GET", nginx.url + "/health/ready"))[0] == 200
        assert (await fetch("GET", f"http://127.0.0.1:{nginx.internal_port}/v1/models"))[0] == 404
    finally:
        nginx.stop()
