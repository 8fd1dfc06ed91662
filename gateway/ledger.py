"""The ledger streams draw their budget leases from.

A stream does not spend after the fact: it *draws* a lease of a bounded number of output tokens at
its model's price before it delivers them, and the ledger grants at most what every budget of the
key still has left. Concurrent streams of one key, on any number of workers and instances,
therefore overshoot a budget by at most what they were granted and had not delivered yet: one
lease each. At the end a stream settles: what it was granted but did not use goes back, what it
used beyond (an upstream that reported more tokens than were counted) is charged.

Two ledgers: :class:`RedisLedger` (one Lua script, atomic across instances, keys hash-tagged by API
key so they live on one Cluster slot, its calls bounded and behind a breaker through the Redis
seam) and :class:`LocalLedger` (one worker's memory, for the embedded setup; documented as per
worker).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.budget import Budget, window, window_start
from gateway.redisconn import REDIS_BREAKER, RedisConn, RedisUnavailable
from gateway.store.base import NANO, Store

log = logging.getLogger("gateway.budget")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a draw got: ``tokens`` output tokens (0: a budget is spent), and the budget that
    bound it."""

    tokens: int
    binding: Budget | None = None
    resets_at: dt.datetime | None = None


class Ledger(Protocol):
    """Where a key's budgets are drawn from."""

    async def draw(
        self, key_id: str, budgets: Sequence[Budget], tokens: int, usd_per_token: float
    ) -> Grant:
        """Grant up to ``tokens`` output tokens at ``usd_per_token``, as the budgets allow."""
        ...

    async def settle(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        """Add ``tokens`` and ``usd`` to the spend (negative: give back an unused lease)."""
        ...

    async def spent(self, key_id: str, budget: Budget) -> float:
        """What the current window of ``budget`` has spent."""
        ...


def _headroom(
    budgets: Sequence[Budget], spent: Sequence[float], tokens: int, usd_per_token: float
) -> tuple[int, int | None]:
    """How many tokens every budget still allows, and the index of the one that binds."""
    grant, binding = tokens, None
    for index, (budget, used) in enumerate(zip(budgets, spent, strict=True)):
        left = budget.limit - used
        if budget.unit == "usd":
            # The epsilon keeps 0.1 / 0.001 from flooring to 99 tokens.
            allowed = tokens if usd_per_token <= 0 else int(max(0.0, left) / usd_per_token + 1e-9)
        else:
            allowed = int(max(0.0, left))
        if allowed < grant:
            grant, binding = allowed, index
    return grant, binding


# What a key spent in a budget's current window before this worker counted it (the store's usage).
Seed = Callable[[str, Budget], Awaitable[float]]


async def stored_spend(
    store: Store, key_id: str, budget: Budget, now: dt.datetime | None = None
) -> float:
    """What the store's usage rollups say ``key_id`` spent in ``budget``'s current window."""
    since = window_start(budget.period, now or dt.datetime.now(dt.UTC))
    rows = await store.usage(key_id=key_id, since=since)
    if budget.unit == "usd":
        return sum(row.cost_nanousd for row in rows) / NANO
    return float(sum(row.prompt_tokens + row.completion_tokens for row in rows))


class LocalLedger:
    """Budgets in this worker's memory: exact within a worker, per worker across several.

    With a ``seed`` a window starts from what the store says the key already spent in it (read
    once, the first time this worker draws from it), so a restart does not hand out a budget
    again. Without one (or when the store cannot say) it starts from zero.
    """

    def __init__(self, clock: Any = None, seed: Seed | None = None) -> None:
        self._spent: dict[tuple[str, str, str], float] = {}
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._seed = seed
        self._seeding: dict[tuple[str, str, str], asyncio.Future[None]] = {}

    def _key(self, key_id: str, budget: Budget) -> tuple[str, str, str]:
        return key_id, budget.unit, window(budget.period, self._clock())[0]

    async def _seeded(self, key_id: str, budgets: Sequence[Budget]) -> None:
        if self._seed is None:
            return
        for budget in budgets:
            key = self._key(key_id, budget)
            seeding = self._seeding.get(key)
            if seeding is None:
                seeding = self._seeding[key] = asyncio.ensure_future(
                    self._read_seed(key, key_id, budget)
                )
            await asyncio.shield(seeding)

    async def _read_seed(self, key: tuple[str, str, str], key_id: str, budget: Budget) -> None:
        assert self._seed is not None
        try:
            before = await self._seed(key_id, budget)
        except Exception as exc:  # the store is down: this window starts from zero, logged
            log.warning("budget spend not read from the store", extra={"error": repr(exc)})
            return
        self._spent[key] = self._spent.get(key, 0.0) + before

    async def draw(
        self, key_id: str, budgets: Sequence[Budget], tokens: int, usd_per_token: float
    ) -> Grant:
        await self._seeded(key_id, budgets)
        spent = [self._spent.get(self._key(key_id, b), 0.0) for b in budgets]
        grant, binding = _headroom(budgets, spent, tokens, usd_per_token)
        self._add(key_id, budgets, grant, grant * usd_per_token)
        return _grant(grant, budgets, binding, self._clock())

    async def settle(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        self._add(key_id, budgets, tokens, usd)

    async def spent(self, key_id: str, budget: Budget) -> float:
        await self._seeded(key_id, (budget,))
        return self._spent.get(self._key(key_id, budget), 0.0)

    def _add(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        for budget in budgets:
            key = self._key(key_id, budget)
            self._spent[key] = self._spent.get(key, 0.0) + (usd if budget.unit == "usd" else tokens)


# KEYS: one spend counter per budget. ARGV: tokens wanted, USD per token, then per budget its
# limit, its unit ("usd" | "tokens") and its TTL in seconds (0: none). Returns {granted, binding}.
_DRAW = """
local wanted = tonumber(ARGV[1])
local price = tonumber(ARGV[2])
local grant, binding = wanted, 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i])
  local unit = ARGV[3 * i + 1]
  local left = limit - tonumber(redis.call('GET', key) or '0')
  local allowed
  if unit == 'usd' then
    if price <= 0 then allowed = wanted
    else allowed = math.floor(math.max(0, left) / price + 1e-9) end
  else
    allowed = math.floor(math.max(0, left))
  end
  if allowed < grant then grant, binding = allowed, i end
end
if grant > 0 then
  for i, key in ipairs(KEYS) do
    local amount = grant
    if ARGV[3 * i + 1] == 'usd' then amount = grant * price end
    redis.call('INCRBYFLOAT', key, amount)
    local ttl = tonumber(ARGV[3 * i + 2])
    if ttl > 0 and redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
  end
end
return {grant, binding}
"""


class RedisLedger:
    """Budgets in Redis, drawn atomically by a Lua script."""

    def __init__(
        self, redis: RedisConn, *, timeout: float | None = None, clock: Any = None
    ) -> None:
        self._redis = redis.client
        self._prefix = redis.prefix
        self._guard = redis.guard("budget", timeout=timeout, breaker=REDIS_BREAKER)
        self._draw = redis.client.register_script(_DRAW)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def _allow(self) -> None:
        if not self._guard.allow():
            raise RedisUnavailable("Redis (budget): the breaker is open")

    def _key(self, key_id: str, budget: Budget, now: dt.datetime) -> str:
        return f"{self._prefix}:{{b:{key_id}}}:{budget.unit}:{window(budget.period, now)[0]}"

    async def draw(
        self, key_id: str, budgets: Sequence[Budget], tokens: int, usd_per_token: float
    ) -> Grant:
        now = self._clock()
        args: list[Any] = [tokens, repr(usd_per_token)]
        for budget in budgets:
            resets = window(budget.period, now)[1]
            ttl = 0 if resets is None else int((resets - now).total_seconds()) + 3600
            args += [repr(budget.limit), budget.unit, ttl]
        self._allow()
        granted, binding = await self._guard.call(
            self._draw(keys=[self._key(key_id, b, now) for b in budgets], args=args)
        )
        return _grant(int(granted), budgets, int(binding) - 1 if binding else None, now)

    async def settle(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        now = self._clock()
        pipe: Any = self._redis.pipeline(transaction=False)
        for budget in budgets:
            pipe.incrbyfloat(
                self._key(key_id, budget, now), usd if budget.unit == "usd" else tokens
            )
        await self._guard.call(pipe.execute())

    async def spent(self, key_id: str, budget: Budget) -> float:
        value = await self._guard.call(self._redis.get(self._key(key_id, budget, self._clock())))
        return float(value or 0.0)


def _grant(tokens: int, budgets: Sequence[Budget], binding: int | None, now: dt.datetime) -> Grant:
    if binding is None or binding < 0:
        return Grant(tokens)
    budget = budgets[binding]
    return Grant(tokens, budget, window(budget.period, now)[1])
