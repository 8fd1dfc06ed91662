"""The Store protocol and the records it keeps. Implementations: sqlite.py, redis.py.

A store never sees an API key, only its SHA-256 hash. Usage arrives in batches from the stats
sidecar; every batch carries an id, and applying the same batch id twice changes nothing, so a
flush retried after a partial failure never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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


# The counters kept per (key, model, day), and those also kept for a key's lifetime.
USAGE_COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "estimated_requests",
    "cache_hits",
    "errors",
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
    last_used: float = 0.0


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

    async def apply_usage(self, batch_id: str, deltas: list[UsageDelta]) -> bool:
        """Add a batch atomically per key; False when this batch id was applied before."""
        ...

    async def key_counters(self, key_id: str) -> KeyCounters:
        """Lifetime counters of a key (zeros when it has no usage)."""
        ...

    async def usage(
        self, *, key_id: str | None = None, model: str | None = None, since: str | None = None
    ) -> list[UsageRow]:
        """Rollups filtered by key, model and first day (inclusive), ordered by day, key, model."""
        ...
