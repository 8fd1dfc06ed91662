"""Budgets in money and tokens, and the ledger streams draw leases from.

A budget is a limit per period (``25/month`` USD, ``100000/day`` tokens, ``5/lifetime``). A stream
does not spend after the fact: it *draws* a lease of a bounded number of output tokens at its
model's price before it delivers them, and the ledger grants at most what every budget of the key
still has left. Concurrent streams of one key, on any number of workers and instances, therefore
overshoot a budget by at most what they were granted and had not delivered yet: one lease each.
At the end a stream settles: what it was granted but did not use goes back, what it used beyond
(an upstream that reported more tokens than were counted) is charged.

Two ledgers: :class:`RedisLedger` (one Lua script, atomic across instances, keys hash-tagged by API
key so they live on one Cluster slot) and :class:`LocalLedger` (one worker's memory, for the
embedded setup; documented as per worker).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis

Period = Literal["day", "month", "lifetime"]
Unit = Literal["usd", "tokens"]
PERIODS: tuple[Period, ...] = ("day", "month", "lifetime")


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit of ``unit`` per ``period``."""

    limit: float
    period: Period
    unit: Unit

    def __str__(self) -> str:
        amount = f"${self.limit:g}" if self.unit == "usd" else f"{self.limit:g} tokens"
        return f"{amount}/{self.period}"


def parse_budget(text: str, unit: Unit) -> Budget:
    """``25/month``, ``2/day``, ``100000/day``, ``5/lifetime`` (a bare number is lifetime)."""
    amount, _, period = text.strip().partition("/")
    period = period.strip().lower() or "lifetime"
    if period not in PERIODS:
        raise ValueError(f"budget period must be day, month or lifetime, got {period!r}")
    try:
        limit = float(amount)
    except ValueError:
        raise ValueError(f"budget amount must be a number, got {amount!r}") from None
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"budget amount must be positive, got {amount!r}")
    if unit == "tokens" and limit != int(limit):
        raise ValueError(f"a token budget is a whole number, got {amount!r}")
    return Budget(limit, period, unit)


def budgets_text(budgets: Sequence[Budget]) -> str | None:
    """Budgets as stored in a key record: ``usd:25/month,tokens:100000/day`` (None: none)."""
    if not budgets:
        return None
    return ",".join(f"{b.unit}:{b.limit!r}/{b.period}" for b in budgets)


def budgets_from_text(text: str | None) -> tuple[Budget, ...]:
    """The budgets of a stored key record (see :func:`budgets_text`)."""
    if not text:
        return ()
    found: list[Budget] = []
    for part in text.split(","):
        unit, _, rest = part.partition(":")
        if unit not in ("usd", "tokens"):
            raise ValueError(f"stored budget {part!r} has no unit")
        found.append(parse_budget(rest, "usd" if unit == "usd" else "tokens"))
    return tuple(found)


def budget_view(budget: Budget) -> dict[str, object]:
    """A budget as the admin API and ``keys show`` present it."""
    limit: float | int = int(budget.limit) if budget.unit == "tokens" else budget.limit
    return {"unit": budget.unit, "limit": limit, "period": budget.period, "text": str(budget)}


def window(period: Period, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    """The current window's label and when it resets (UTC; None for lifetime)."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y%m%d"), start + dt.timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("m%Y%m"), following
    return "life", None


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


class LocalLedger:
    """Budgets in this worker's memory: exact within a worker, per worker across several."""

    def __init__(self, clock: Any = None) -> None:
        self._spent: dict[tuple[str, str, str], float] = {}
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def _key(self, key_id: str, budget: Budget) -> tuple[str, str, str]:
        return key_id, budget.unit, window(budget.period, self._clock())[0]

    async def draw(
        self, key_id: str, budgets: Sequence[Budget], tokens: int, usd_per_token: float
    ) -> Grant:
        spent = [self._spent.get(self._key(key_id, b), 0.0) for b in budgets]
        grant, binding = _headroom(budgets, spent, tokens, usd_per_token)
        self._add(key_id, budgets, grant, grant * usd_per_token)
        return _grant(grant, budgets, binding, self._clock())

    async def settle(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        self._add(key_id, budgets, tokens, usd)

    async def spent(self, key_id: str, budget: Budget) -> float:
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

    def __init__(self, client: aioredis.Redis, *, prefix: str, clock: Any = None) -> None:
        self._redis = client
        self._prefix = prefix
        self._draw = client.register_script(_DRAW)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

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
        granted, binding = await self._draw(
            keys=[self._key(key_id, b, now) for b in budgets], args=args
        )
        return _grant(int(granted), budgets, int(binding) - 1 if binding else None, now)

    async def settle(self, key_id: str, budgets: Sequence[Budget], tokens: int, usd: float) -> None:
        now = self._clock()
        pipe: Any = self._redis.pipeline(transaction=False)
        for budget in budgets:
            pipe.incrbyfloat(
                self._key(key_id, budget, now), usd if budget.unit == "usd" else tokens
            )
        await pipe.execute()

    async def spent(self, key_id: str, budget: Budget) -> float:
        value = await self._redis.get(self._key(key_id, budget, self._clock()))
        return float(value or 0.0)


def _grant(tokens: int, budgets: Sequence[Budget], binding: int | None, now: dt.datetime) -> Grant:
    if binding is None or binding < 0:
        return Grant(tokens)
    budget = budgets[binding]
    return Grant(tokens, budget, window(budget.period, now)[1])
