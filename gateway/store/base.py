"""The Store protocol and the records it keeps. Implementations: sqlite.py, redis.py, postgres.py.

A store never sees an API key, only its SHA-256 hash. Usage arrives as stats events, one per
request, each with an id of its own that the store applies at most once: a batch retried after a
partial failure, replayed from a worker's spool or redelivered by the usage bus never counts twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import orjson

from gateway.budget import Budget, budgets_from_text, budgets_text


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time; the caller may retry."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: its hash, never the key."""

    id: str  # "key_" + 16 hex characters; shown to users, safe in logs
    name: str
    key_hash: str  # sha256 hex of the full key
    prefix: str  # the first 12 characters of the key, for recognising it ("sk-gw-AbCdEf")
    created_at: float  # unix seconds
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    max_requests: int | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    budgets: tuple[Budget, ...] = ()  # money and token budgets per day, month or lifetime


# The keys table's columns, in the order the SQL stores select and insert them.
KEY_COLUMNS = (
    "id, name, key_hash, prefix, created_at, models, rpm, tpm, max_requests, expires_at, "
    "revoked_at, budgets"
)


def key_row(record: KeyRecord) -> tuple[Any, ...]:
    """A key record as a row of :data:`KEY_COLUMNS` (models as JSON, budgets as text)."""
    models = None if record.models is None else orjson.dumps(list(record.models)).decode()
    return (
        record.id, record.name, record.key_hash, record.prefix, record.created_at, models,
        record.rpm, record.tpm, record.max_requests, record.expires_at, record.revoked_at,
        budgets_text(record.budgets),
    )  # fmt: skip


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    """The key record of a row of :data:`KEY_COLUMNS`."""
    (key_id, name, key_hash, prefix, created, models, rpm, tpm, max_requests, expires,
     revoked, budgets) = tuple(row)  # fmt: skip
    return KeyRecord(
        id=key_id, name=name, key_hash=key_hash, prefix=prefix, created_at=created,
        models=None if models is None else tuple(orjson.loads(models)),
        rpm=rpm, tpm=tpm, max_requests=max_requests, expires_at=expires, revoked_at=revoked,
        budgets=budgets_from_text(budgets),
    )  # fmt: skip


def new_event_id() -> str:
    """A random id for one stats event (128 bits, hex)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class StatsEvent:
    """What one request did, for usage accounting: the unit the store applies once."""

    request_id: str
    key_id: str
    model: str
    deployment: str | None
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    tokens_exact: bool
    cache_hit: bool
    latency_ms: float
    ttfb_ms: float | None
    termination: str
    ts: float  # unix seconds
    event_id: str = field(default_factory=new_event_id)
    # What it cost in USD at the upstream model's price; None when unknown (a model without a
    # price, or an event from before spend was accounted). Exact when the tokens were reported.
    cost_usd: float | None = None
    cost_exact: bool = False
    # The prompts of cancelled hedges (estimated tokens at the same price): paid for nothing.
    hedge_cost_usd: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsEvent:
        """An event from its JSON form (spool, bus): fields it does not know are ignored, so a
        line written by a newer gateway still loads; missing optional ones take their defaults."""
        return cls(**{name: data[name] for name in _EVENT_FIELDS if name in data})

    @property
    def is_error(self) -> bool:
        """Failed or refused; a client that went away is not an error."""
        return self.termination not in {"completed", "client_disconnect"}

    @property
    def day(self) -> str:
        """The UTC day the request started, as the rollups key it."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.ts))


_EVENT_FIELDS = frozenset(f.name for f in fields(StatsEvent))
NANO = 1_000_000_000  # rollups keep money in integer nano-USD: exact sums, HINCRBY-able


def nano_usd(usd: float) -> int:
    """USD as whole nano-USD (each event rounded once, so every store sums the same integers)."""
    return round(usd * NANO)


# The counters kept per (key, model, day), and those also kept for a key's lifetime.
USAGE_COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "estimated_requests",
    "cache_hits",
    "errors",
    "cost_nanousd",  # requests whose cost is known, cache hits at 0
    "estimated_cost_nanousd",  # the part of it computed from estimated tokens
    "unknown_cost_requests",  # requests without a price for their model: not in cost
    "hedge_cost_nanousd",  # prompts of cancelled hedges, estimated: not in cost
)
KEY_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors")


@dataclass(slots=True)
class UsageDelta:
    """Counts to add for one (key, model, day): one element of a flushed batch."""

    key_id: str  # "anonymous" when auth is off
    model: str
    day: str  # "YYYY-MM-DD" (UTC)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0  # requests whose tokens were estimated, not reported upstream
    cache_hits: int = 0
    errors: int = 0
    cost_nanousd: int = 0
    estimated_cost_nanousd: int = 0
    unknown_cost_requests: int = 0
    hedge_cost_nanousd: int = 0
    last_used: float = 0.0  # unix seconds of the newest request in the batch


@dataclass(slots=True)
class UsageRow:
    """Aggregated usage for one (key, model, day)."""

    key_id: str
    model: str
    day: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0
    cache_hits: int = 0
    errors: int = 0
    cost_nanousd: int = 0
    estimated_cost_nanousd: int = 0
    unknown_cost_requests: int = 0
    hedge_cost_nanousd: int = 0
    last_used: float = 0.0

    def view(self) -> dict[str, Any]:
        """The row as the CLI and the admin API show it: money in USD, not nano-USD."""
        return {
            "day": self.day,
            "key_id": self.key_id,
            "model": self.model,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_requests": self.estimated_requests,
            "cache_hits": self.cache_hits,
            "errors": self.errors,
            "cost_usd": self.cost_nanousd / NANO,
            "estimated_cost_usd": self.estimated_cost_nanousd / NANO,
            "unknown_cost_requests": self.unknown_cost_requests,
            "hedge_cost_usd": self.hedge_cost_nanousd / NANO,
            "last_used": self.last_used,
        }


@dataclass(slots=True)
class KeyCounters:
    """Lifetime counters of one key."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    errors: int = 0
    last_used: float | None = None
    extra: dict[str, int] = field(default_factory=dict)


def aggregate(events: list[StatsEvent]) -> list[UsageDelta]:
    """Sum events per (key, model, UTC day), in that order (a stable lock order for stores)."""
    deltas: dict[tuple[str, str, str], UsageDelta] = {}
    for event in events:
        key = (event.key_id, event.model, event.day)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = UsageDelta(*key)
        delta.requests += 1
        delta.prompt_tokens += event.prompt_tokens
        delta.completion_tokens += event.completion_tokens
        delta.estimated_requests += 0 if event.tokens_exact else 1
        delta.cache_hits += 1 if event.cache_hit else 0
        delta.errors += 1 if event.is_error else 0
        if event.cost_usd is None:
            delta.unknown_cost_requests += 1
        else:
            cost = nano_usd(event.cost_usd)
            delta.cost_nanousd += cost
            delta.estimated_cost_nanousd += 0 if event.cost_exact else cost
        delta.hedge_cost_nanousd += nano_usd(event.hedge_cost_usd)
        delta.last_used = max(delta.last_used, event.ts)
    return [deltas[key] for key in sorted(deltas)]


class Store(Protocol):
    """Keys and usage. Every method raises StoreUnavailable when the backend cannot be reached."""

    async def open(self) -> None:
        """Connect / create tables. Called once per process before use."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key (its id and hash are unique)."""
        ...

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, revoked or expired ones included (the caller decides)."""
        ...

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        """The key with this id."""
        ...

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        ...

    async def revoke_key(self, key_id: str, when: float) -> bool:
        """Mark a key revoked; False when there is no such key."""
        ...

    async def count_keys(self) -> int:
        """How many keys exist (revoked ones included)."""
        ...

    async def take_request(self, key_id: str, limit: int) -> bool:
        """Atomically count one request against a key's lifetime ``max_requests``; False (and
        nothing counted) once ``limit`` requests were taken."""
        ...

    async def record_events(self, events: list[StatsEvent]) -> int:
        """Keep each event whose id is new and add it to the rollups, atomically; returns how
        many were new (an event id applied before changes nothing)."""
        ...

    async def key_counters(self, key_id: str) -> KeyCounters:
        """Lifetime counters of a key (zeros when it has no usage)."""
        ...

    async def usage(
        self, *, key_id: str | None = None, model: str | None = None, since: str | None = None
    ) -> list[UsageRow]:
        """Rollups filtered by key, model and first day (inclusive), ordered by day, key, model."""
        ...
