"""The Redis store: for several gateway instances sharing keys and usage.

Layout (``P`` is the prefix; ``{...}`` is the hash tag, so each multi-key operation stays in one
slot and the store works on Redis Cluster):

    P:{k:<key_id>}:record    hash   the KeyRecord fields
    P:{k:<key_id>}:counters  hash   lifetime counters, and "taken" for max_requests
    P:{k:<key_id>}:daily     hash   "<day>|<model>|<counter>" -> count
    P:{k:<key_id>}:events    zset   applied stats event ids (score: time), trimmed after 7 days
    P:{h:<key_hash>}         string the key id for a hash
    P:{idx}:keys             zset   every key id with usage or a record (score: first seen)

Each stats event is applied by one Lua script that checks and records its id and adds its
counters atomically, so a retried or redelivered event never counts twice, even after a partial
failure. (Redis keeps rollups, not one record per request: PostgreSQL is the store of record.)
Every call goes through the Redis seam's guard (the store's timeout); any failure is
StoreUnavailable, never a hang.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.typing import EncodableT, FieldT

from gateway.budget import budgets_from_text, budgets_text
from gateway.redisconn import RedisConn, RedisUnavailable
from gateway.store.base import (
    KEY_COUNTERS,
    USAGE_COUNTERS,
    KeyCounters,
    KeyRecord,
    StatsEvent,
    StoreUnavailable,
    UsageRow,
    aggregate,
)

EVENT_MEMORY_SECONDS = 7 * 86400

# KEYS: events, counters, daily.  ARGV: event_id, now, horizon, last_used, then triples
# (day|model|counter field, counter name, amount).
_APPLY = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
for i = 5, #ARGV, 3 do
  local amount = tonumber(ARGV[i + 2])
  if amount ~= 0 then
    redis.call('HINCRBY', KEYS[3], ARGV[i], amount)
    if ARGV[i + 1] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[i + 1], amount) end
  end
end
local last = tonumber(redis.call('HGET', KEYS[2], 'last_used') or '0')
if tonumber(ARGV[4]) > last then redis.call('HSET', KEYS[2], 'last_used', ARGV[4]) end
return 1
"""
_TAKE = """
local taken = tonumber(redis.call('HGET', KEYS[1], 'taken') or '0')
if taken >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'taken', 1)
return 1
"""


class RedisStore:
    """Keys and usage in Redis, under the connection's prefix. Closing the store closes the
    connection (the app closes it too, after the store: the second close does nothing)."""

    def __init__(self, redis: RedisConn) -> None:
        self._conn = redis
        self._prefix = redis.prefix
        self._redis = redis.client
        self._guard = redis.guard("store")
        self._apply = self._redis.register_script(_APPLY)
        self._take = self._redis.register_script(_TAKE)

    def _key(self, key_id: str, part: str) -> str:
        return f"{self._prefix}:{{k:{key_id}}}:{part}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}:{{idx}}:keys"

    async def _do(self, call: Any) -> Any:
        """Await one Redis call through the guard, translating every failure."""
        try:
            return await self._guard.call(call)
        except RedisUnavailable as exc:
            raise StoreUnavailable(f"{exc}") from exc

    async def open(self) -> None:
        await self._do(self._redis.ping())

    async def close(self) -> None:
        await self._conn.aclose()

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        fields: dict[FieldT, EncodableT] = {
            "id": record.id,
            "name": record.name,
            "key_hash": record.key_hash,
            "prefix": record.prefix,
            "created_at": repr(record.created_at),
            "models": "" if record.models is None else orjson.dumps(list(record.models)).decode(),
            "budgets": budgets_text(record.budgets) or "",
        }
        for name in ("rpm", "tpm", "max_requests", "expires_at", "revoked_at"):
            value = getattr(record, name)
            fields[name] = "" if value is None else repr(value)
        await self._do(self._redis.hset(self._key(record.id, "record"), mapping=fields))
        await self._do(self._redis.set(f"{self._prefix}:{{h:{record.key_hash}}}", record.id))
        await self._do(self._redis.zadd(self._index, {record.id: record.created_at}, nx=True))

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        key_id = await self._do(self._redis.get(f"{self._prefix}:{{h:{key_hash}}}"))
        return None if key_id is None else await self.key_by_id(key_id)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        fields = await self._do(self._redis.hgetall(self._key(key_id, "record")))
        return _record(fields) if fields else None

    async def list_keys(self) -> list[KeyRecord]:
        ids = await self._do(self._redis.zrange(self._index, 0, -1))
        records = [await self.key_by_id(key_id) for key_id in ids]
        found = [r for r in records if r is not None]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def revoke_key(self, key_id: str, when: float) -> bool:
        record = self._key(key_id, "record")
        if not await self._do(self._redis.exists(record)):
            return False
        await self._do(self._redis.hsetnx(record, "revoked_at", repr(when)))
        if not await self._do(self._redis.hget(record, "revoked_at")):
            await self._do(self._redis.hset(record, "revoked_at", repr(when)))
        return True

    async def count_keys(self) -> int:
        count = 0
        for key_id in await self._do(self._redis.zrange(self._index, 0, -1)):
            count += int(await self._do(self._redis.exists(self._key(key_id, "record"))))
        return count

    async def take_request(self, key_id: str, limit: int) -> bool:
        taken = await self._do(self._take(keys=[self._key(key_id, "counters")], args=[limit]))
        return bool(taken)

    # -- usage ------------------------------------------------------------------------------------

    async def record_events(self, events: list[StatsEvent]) -> int:
        now = time.time()
        pipe: Any = self._redis.pipeline(transaction=False)  # queued calls typed as awaitables
        for event in events:
            args: list[Any] = [event.event_id, now, now - EVENT_MEMORY_SECONDS, repr(event.ts)]
            for d in aggregate([event]):
                for counter in USAGE_COUNTERS:
                    lifetime = counter if counter in KEY_COUNTERS else ""
                    args += [f"{d.day}|{d.model}|{counter}", lifetime, getattr(d, counter)]
            keys = [self._key(event.key_id, p) for p in ("events", "counters", "daily")]
            pipe.zadd(self._index, {event.key_id: now}, nx=True)
            await self._apply(keys=keys, args=args, client=pipe)  # queues it in the pipeline
        results = await self._do(pipe.execute())
        return sum(int(result) for result in results[1::2])

    async def key_counters(self, key_id: str) -> KeyCounters:
        fields = await self._do(self._redis.hgetall(self._key(key_id, "counters")))
        last = fields.get("last_used")
        return KeyCounters(
            requests=int(fields.get("requests", 0)),
            prompt_tokens=int(fields.get("prompt_tokens", 0)),
            completion_tokens=int(fields.get("completion_tokens", 0)),
            cache_hits=int(fields.get("cache_hits", 0)),
            errors=int(fields.get("errors", 0)),
            last_used=float(last) if last else None,
        )

    async def usage(
        self, *, key_id: str | None = None, model: str | None = None, since: str | None = None
    ) -> list[UsageRow]:
        ids = [key_id] if key_id else await self._do(self._redis.zrange(self._index, 0, -1))
        rows: dict[tuple[str, str, str], UsageRow] = {}
        for kid in ids:
            daily = await self._do(self._redis.hgetall(self._key(kid, "daily")))
            for field_name, value in daily.items():
                day, row_model, counter = field_name.rsplit("|", 2)
                if (model and row_model != model) or (since and day < since):
                    continue
                row = rows.setdefault((day, kid, row_model), UsageRow(kid, row_model, day))
                setattr(row, counter, int(value))
        return [rows[k] for k in sorted(rows)]


def _record(fields: dict[str, str]) -> KeyRecord:
    def number(name: str) -> float | None:
        return float(fields[name]) if fields.get(name) else None

    def whole(name: str) -> int | None:
        return int(fields[name]) if fields.get(name) else None

    models = fields.get("models")
    return KeyRecord(
        id=fields["id"],
        name=fields["name"],
        key_hash=fields["key_hash"],
        prefix=fields["prefix"],
        created_at=float(fields["created_at"]),
        models=tuple(orjson.loads(models)) if models else None,
        rpm=whole("rpm"),
        tpm=whole("tpm"),
        max_requests=whole("max_requests"),
        expires_at=number("expires_at"),
        revoked_at=number("revoked_at"),
        budgets=budgets_from_text(fields.get("budgets")),
    )
