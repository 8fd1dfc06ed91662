"""The admin API (/admin/keys, /admin/usage), guarded by the master key."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.budget import Budget, Unit, parse_budget
from gateway.errors import InvalidJSON, InvalidRequest, NotFound, PermissionDenied
from gateway.keys import key_view, new_key, parse_expiry
from gateway.preflight import weak_master_key
from gateway.web.auth import check_master_key
from gateway.web.proxy import read_body
from gateway.web.state import CONFIG, STORE


def _guard(request: web.Request) -> None:
    master = request.app[CONFIG].auth.master_key
    if master is None:
        raise PermissionDenied(
            "The admin API is disabled: set LLM_GATEWAY_MASTER_KEY.", code="admin_disabled"
        )
    if weak_master_key(master) is not None:
        # preflight refuses to start with it; an app built some other way stays closed too.
        raise PermissionDenied(
            "The admin API is disabled: the master key is too weak.", code="admin_disabled"
        )
    check_master_key(request, master)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def list_keys(request: web.Request) -> web.Response:
    """GET /admin/keys."""
    _guard(request)
    records = await request.app[STORE].list_keys()
    return _json({"object": "list", "data": [key_view(r) for r in records]})


async def create_key(request: web.Request) -> web.Response:
    """POST /admin/keys: the key is in this answer and nowhere else, ever."""
    _guard(request)
    raw = await read_body(request, request.app[CONFIG].server)
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidJSON("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' is required and must be a string.", param="name")
    models = body.get("models")
    if models is not None and not (
        isinstance(models, list) and models and all(isinstance(m, str) for m in models)
    ):
        raise InvalidRequest("'models' must be a non-empty array of strings.", param="models")
    unknown = [m for m in models or () if request.app[CONFIG].route_for(m) is None]
    if unknown:
        raise InvalidRequest(
            f"'models' names models this gateway does not serve: {', '.join(unknown)}.",
            param="models",
        )
    limits: dict[str, int | None] = {}
    for field in ("rpm", "tpm", "max_requests"):
        value = body.get(field)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise InvalidRequest(f"'{field}' must be a positive integer.", param=field)
        limits[field] = value
    expires_at = None
    if body.get("expires") is not None:
        try:
            expires_at = parse_expiry(str(body["expires"]))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="expires") from None
    budgets = _budgets(body, "budget_usd", "usd") + _budgets(body, "budget_tokens", "tokens")
    key, record = new_key(
        name, models=None if models is None else tuple(models), expires_at=expires_at,
        budgets=budgets, **limits,
    )  # fmt: skip
    await request.app[STORE].create_key(record)
    return _json({**key_view(record), "key": key}, status=201)


def _budgets(body: dict[str, Any], field: str, unit: Unit) -> tuple[Budget, ...]:
    """``"budget_usd": "25/month"`` or a list of them (as ``keys create --budget-usd``)."""
    value = body.get(field)
    if value is None:
        return ()
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            f"'{field}' must be a string like \"25/month\" or an array of them.", param=field
        )
    try:
        return tuple(parse_budget(text, unit) for text in texts)
    except ValueError as exc:
        raise InvalidRequest(f"'{field}': {exc}.", param=field) from None


async def show_key(request: web.Request) -> web.Response:
    """GET /admin/keys/{id}: the key and its lifetime counters."""
    _guard(request)
    store = request.app[STORE]
    record = await store.key_by_id(request.match_info["id"])
    if record is None:
        raise NotFound(f"No key with id {request.match_info['id']!r}.")
    counters = dataclasses.asdict(await store.key_counters(record.id))
    counters.pop("extra", None)
    return _json({**key_view(record), "usage": counters})


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /admin/keys/{id}: revoke (effective everywhere within the key cache TTL)."""
    _guard(request)
    store = request.app[STORE]
    key_id = request.match_info["id"]
    if not await store.revoke_key(key_id, time.time()):
        raise NotFound(f"No key with id {key_id!r}.")
    record = await store.key_by_id(key_id)
    assert record is not None
    return _json(key_view(record))


async def usage(request: web.Request) -> web.Response:
    """GET /admin/usage?key=&model=&since=YYYY-MM-DD."""
    _guard(request)
    query = request.query
    rows = await request.app[STORE].usage(
        key_id=query.get("key"), model=query.get("model"), since=query.get("since")
    )
    return _json({"object": "list", "data": [r.view() for r in rows]})


def add_admin_routes(app: web.Application) -> None:
    """Register the admin routes."""
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys/{id}", show_key)
    app.router.add_delete("/admin/keys/{id}", revoke_key)
    app.router.add_get("/admin/usage", usage)
