"""GET /v1/models with --upstream: the upstream's own list, agreed by /v1/models/{id}, per key."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

from gateway.mock.behaviour import MOCK_MODELS
from tests.conftest import Proc, create_key, free_port, wait_for_log


async def get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def listed(url: str, key: str | None = None, *, want: int = 1) -> list[str]:
    """The listed ids, once at least ``want`` are there (the first fetch runs in the background)."""
    deadline = time.monotonic() + 10
    while True:
        status, body = await get(url + "/v1/models", key)
        assert status == 200
        ids = [entry["id"] for entry in body["data"]]
        if len(ids) >= want or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.1)


async def test_upstream_models_are_listed_and_found(start_gateway, mock_upstream: Proc) -> None:  # type: ignore[no-untyped-def]
    """--upstream lists the upstream's own models; /v1/models/{id} agrees, the SDK too."""
    proc: Proc = start_gateway("--upstream", mock_upstream.url + "/v1")
    assert await listed(proc.url, want=3) == list(MOCK_MODELS)
    status, entry = await get(proc.url + "/v1/models/mock-gpt-mini")
    assert status == 200 and entry["id"] == "mock-gpt-mini" and entry["owned_by"] == "mock"
    status, error = await get(proc.url + "/v1/models/not-there")
    assert status == 404 and error["error"]["code"] == "model_not_found"
    async with openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key="unused") as client:
        assert [m.id async for m in client.models.list()] == list(MOCK_MODELS)


async def test_gateway_starts_when_the_upstream_list_fails(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """An upstream that is down leaves the list empty and a warning, and the gateway serves."""
    proc: Proc = start_gateway("--upstream", f"http://127.0.0.1:{free_port()}/v1")
    wait_for_log(proc, "could not list the models of deployment 'upstream'")
    assert await listed(proc.url, want=0) == []
    status, _ = await get(proc.url + "/health/ready")
    assert status == 200


async def test_a_limited_key_sees_only_its_models(
    start_gateway,  # type: ignore[no-untyped-def]
    mock_upstream: Proc,
    tmp_path: Path,
    keyed_env: dict[str, str],
) -> None:
    """A key limited to some models sees only those in the list and gets 404 for the others."""
    # keys create checks --models against a configuration: one passing every name through.
    passthrough = tmp_path / "passthrough.yaml"
    passthrough.write_text(
        f'deployments: {{up: {{base_url: "{mock_upstream.url}/v1"}}}}\n'
        'models: {"*": {deployments: [up]}}\n'
    )
    _, limited = create_key(keyed_env, "--config", str(passthrough), "--models", "mock-gpt")
    _, unlimited = create_key(keyed_env)
    proc: Proc = start_gateway("--upstream", mock_upstream.url + "/v1", env=keyed_env)
    assert await listed(proc.url, unlimited, want=3) == list(MOCK_MODELS)
    assert await listed(proc.url, limited) == ["mock-gpt"]
    status, _ = await get(proc.url + "/v1/models/mock-embed", limited)
    assert status == 404
    status, _ = await get(proc.url + "/v1/models/mock-embed", unlimited)
    assert status == 200
