"""``GET /v1/models``: the configured model names, plus what pass-through upstreams list.

A pass-through deployment is one the wildcard route (``*``, as ``--upstream`` configures) sends
any model to: its own ``GET {base_url}/models`` is fetched at start and every ``REFRESH_SECONDS``,
each fetch with a timeout and a size bound. A failed fetch keeps the last good list (empty at
first) and logs a warning, so the gateway starts and keeps serving whatever the upstream does. A
key limited to some models sees only those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.config import WILDCARD_MODEL, Config, Deployment
from gateway.web.state import MODEL_CATALOG

log = logging.getLogger("gateway.models")

REFRESH_SECONDS = 300.0
FETCH_TIMEOUT = 5.0
MAX_LIST_BYTES = 4 * 1024 * 1024
_CREATED = int(time.time())


def model_object(name: str, owned_by: str = "llm-gateway") -> dict[str, Any]:
    """One entry of the list."""
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": owned_by}


def listed_models(body: bytes) -> list[dict[str, Any]]:
    """The model objects of an upstream's ``/models`` answer; ValueError if it is not one."""
    answer = orjson.loads(body)
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise ValueError("the answer has no 'data' list")
    return [
        {
            "id": entry["id"],
            "object": "model",
            "created": entry["created"] if isinstance(entry.get("created"), int) else 0,
            "owned_by": str(entry.get("owned_by") or "upstream"),
        }
        for entry in data
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]
    ]


class ModelCatalog:
    """The names clients may ask for, as ``GET /v1/models`` shows them."""

    def __init__(self, config: Config) -> None:
        self._configured = [model_object(name) for name in config.listed_models()]
        wildcard = config.models.get(WILDCARD_MODEL)
        names = wildcard.deployments if wildcard is not None else ()
        self.passthrough: list[Deployment] = [
            config.deployments[n] for n in names if not config.deployments[n].in_process
        ]
        self._upstream: dict[str, list[dict[str, Any]]] = {}
        self._everything: bytes | None = None  # the rendered list for unrestricted keys

    def update(self, deployment: str, models: list[dict[str, Any]]) -> None:
        """Replace what one pass-through deployment lists."""
        self._upstream[deployment] = models
        self._everything = None

    def models(self, allowed: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Configured names first, then upstream ones, each once; only ``allowed`` if given."""
        seen: dict[str, dict[str, Any]] = {}
        for entry in self._configured:
            seen.setdefault(entry["id"], entry)
        for listed in self._upstream.values():
            for entry in listed:
                seen.setdefault(entry["id"], entry)
        if allowed is None:
            return list(seen.values())
        permitted = set(allowed)
        return [entry for name, entry in seen.items() if name in permitted]

    def body(self, allowed: Iterable[str] | None = None) -> bytes:
        """The list as JSON; the unrestricted one is rendered once per change."""
        if allowed is not None:
            return orjson.dumps({"object": "list", "data": self.models(allowed)})
        if self._everything is None:
            self._everything = orjson.dumps({"object": "list", "data": self.models()})
        return self._everything

    def find(self, name: str, allowed: Iterable[str] | None = None) -> dict[str, Any] | None:
        """The entry for ``name``, if listed (and allowed)."""
        return next((entry for entry in self.models(allowed) if entry["id"] == name), None)


async def fetch_models(
    session: aiohttp.ClientSession, deployment: Deployment, fetch_timeout: float = FETCH_TIMEOUT
) -> list[dict[str, Any]]:
    """One deployment's own model list; raises on any failure (status, timeout, bad JSON)."""
    headers: dict[str, str] = {"Accept-Encoding": "identity"}  # never inflate on the loop
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    url = deployment.base_url.rstrip("/") + "/models"
    async with asyncio.timeout(fetch_timeout):
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            body = await response.content.read(MAX_LIST_BYTES + 1)
    if len(body) > MAX_LIST_BYTES:
        raise ValueError(f"the list is larger than {MAX_LIST_BYTES} bytes")
    return listed_models(body)


async def refresh(
    catalog: ModelCatalog, session: aiohttp.ClientSession, fetch_timeout: float
) -> None:
    """Fetch every pass-through deployment's list once; a failure keeps the last good one."""
    for deployment in catalog.passthrough:
        try:
            catalog.update(deployment.name, await fetch_models(session, deployment, fetch_timeout))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # The message names the deployment, never its key.
            log.warning("could not list the models of deployment %r: %s", deployment.name, exc)


async def refresh_forever(
    catalog: ModelCatalog,
    *,
    interval: float = REFRESH_SECONDS,
    fetch_timeout: float = FETCH_TIMEOUT,
) -> None:
    """Refresh now, then every ``interval`` seconds, until cancelled."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        while True:
            await refresh(catalog, session, fetch_timeout)
            await asyncio.sleep(interval)


async def model_catalog(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: refresh pass-through lists in the background while the app runs.

    Start-up does not wait for the first fetch: an upstream that is down or slow cannot hold the
    gateway back.
    """
    catalog = app[MODEL_CATALOG]
    task = asyncio.create_task(refresh_forever(catalog)) if catalog.passthrough else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
