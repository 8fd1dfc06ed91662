"""Key and usage management as plain functions (the CLI's ``keys`` and ``usage`` commands)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.budget import Budget
from gateway.config import Config
from gateway.keys import new_key
from gateway.ledger import stored_spend
from gateway.store import KeyCounters, KeyRecord, Store, UsageRow, make_store

T = TypeVar("T")


async def _with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    store = make_store(config.store)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


async def create_key(
    config: Config,
    name: str,
    *,
    models: tuple[str, ...] | None,
    rpm: int | None,
    tpm: int | None,
    max_requests: int | None,
    expires_at: float | None,
    budgets: tuple[Budget, ...] = (),
) -> tuple[str, KeyRecord]:
    """Make and store a key; the key itself is returned once and never stored."""
    key, record = new_key(
        name, models=models, rpm=rpm, tpm=tpm, max_requests=max_requests, expires_at=expires_at,
        budgets=budgets,
    )  # fmt: skip

    async def work(store: Store) -> None:
        await store.create_key(record)

    await _with_store(config, work)
    return key, record


async def list_keys(config: Config) -> list[KeyRecord]:
    """Every key, oldest first."""
    return await _with_store(config, lambda store: store.list_keys())


async def show_key(
    config: Config, key_id: str
) -> tuple[KeyRecord, KeyCounters, list[float]] | None:
    """A key, its lifetime counters and what it spent in each budget's window, or None."""

    async def work(store: Store) -> tuple[KeyRecord, KeyCounters, list[float]] | None:
        record = await store.key_by_id(key_id)
        if record is None:
            return None
        spent = [await stored_spend(store, key_id, budget) for budget in record.budgets]
        return record, await store.key_counters(key_id), spent

    return await _with_store(config, work)


async def revoke_key(config: Config, key_id: str) -> bool:
    """Revoke a key; False when there is no such key."""
    return await _with_store(config, lambda store: store.revoke_key(key_id, time.time()))


async def usage(
    config: Config, *, key_id: str | None, model: str | None, since: str | None
) -> list[UsageRow]:
    """Usage rollups, filtered."""
    return await _with_store(
        config, lambda store: store.usage(key_id=key_id, model=model, since=since)
    )
