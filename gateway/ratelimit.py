"""Rate limits: sliding windows and concurrency slots, in Redis when shared, else in this worker.

A window allows at most ``limit`` units (requests or tokens) in any ``seconds``, counted in 60
buckets (one second each for a per-minute limit), so it never lets a burst through at a window
boundary the way a fixed window does. Taking units is one atomic Lua call per window on one key with
a hash tag (``P:{rl:<what>}:<scope>``), which works on Redis Cluster; the script reads Redis's
clock so every instance agrees on the time. A concurrency limit is a sorted set of leases that
expire, so a crashed worker cannot hold slots forever.

When Redis does not answer within ``redis_timeout`` the limiter falls back to this worker's own
windows behind the Redis seam's circuit breaker (fail-open: the limit then holds per worker, not
across them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway import metrics, trail
from gateway.background import BackgroundTasks
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.redisconn import REDIS_BREAKER, RedisConn, RedisUnavailable

log = logging.getLogger("gateway.ratelimit")

BUCKETS = 60
CLOSE_SECONDS = 2.0
MAX_BACKGROUND = 10_000

# KEYS[1]: the window's hash (bucket -> units).  ARGV: bucket width ms, buckets, limit, cost.
# Returns {allowed, used (after), ms until the oldest units leave (or enough for ``cost``), bucket}.
_TAKE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local width, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = math.floor(now_ms / width)
local raw = redis.call('HGETALL', KEYS[1])
local used, live = 0, {}
for i = 1, #raw, 2 do
  local b, c = tonumber(raw[i]), tonumber(raw[i + 1])
  if b <= now - n then redis.call('HDEL', KEYS[1], raw[i])
  else used = used + c; live[#live + 1] = {b, c} end
end
local allowed = 0
if used + cost <= limit then
  allowed = 1
  redis.call('HINCRBY', KEYS[1], now, cost)
  redis.call('PEXPIRE', KEYS[1], width * (n + 1))
end
table.sort(live, function(x, y) return x[1] < y[1] end)
local need = used + cost - limit
if allowed == 1 then used = used + cost; need = 1 end
local reset, freed = width * n, 0
for _, entry in ipairs(live) do
  freed = freed + entry[2]
  reset = (entry[1] + n) * width - now_ms
  if freed >= need then break end
end
return {allowed, used, reset, now}
"""
# KEYS[1]: the window's hash.  ARGV: bucket width ms, buckets, bucket, delta.
_ADJUST = """
local t = redis.call('TIME')
local now = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / ARGV[1])
if tonumber(ARGV[3]) > now - tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[1] * (ARGV[2] + 1))
end
return 1
"""
# KEYS[1]: the sorted set of leases.  ARGV: limit, lease ms, lease id.
_ACQUIRE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding-window limit on one thing: ``scope`` names it ("key_rpm"), ``subject`` whose."""

    scope: str
    subject: str
    limit: int
    seconds: float

    @property
    def width_ms(self) -> int:
        return max(1, math.ceil(self.seconds * 1000 / BUCKETS))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one window: allowed or not, and what the X-RateLimit headers say."""

    window: Window
    allowed: bool
    used: int
    reset: float  # seconds until the oldest units leave the window (or enough for the request)
    bucket: int  # where the units were booked, for settling
    shared: bool  # decided by Redis (True) or by this worker alone

    @property
    def remaining(self) -> int:
        return max(0, self.window.limit - self.used)


class LocalWindows:
    """Windows and concurrency slots in this worker's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_subjects: int = 100_000):
        self._clock = clock
        self._max_subjects = max_subjects
        self._windows: dict[tuple[str, str], dict[int, int]] = {}
        self._slots: dict[tuple[str, str], int] = {}

    def take(self, window: Window, cost: int) -> Verdict:
        now_ms = self._clock() * 1000
        width = window.width_ms
        now = int(now_ms // width)
        buckets = self._buckets(window)
        for bucket in [b for b in buckets if b <= now - BUCKETS]:
            del buckets[bucket]
        used = sum(buckets.values())
        allowed = used + cost <= window.limit
        need = 1 if allowed else used + cost - window.limit
        if allowed:
            buckets[now] = buckets.get(now, 0) + cost
        reset_ms, freed = float(width * BUCKETS), 0
        for bucket in sorted(buckets):
            freed += buckets[bucket]
            reset_ms = (bucket + BUCKETS) * width - now_ms
            if freed >= need:
                break
        return Verdict(
            window, allowed, used + cost if allowed else used, reset_ms / 1000, now, False
        )

    def adjust(self, window: Window, bucket: int, delta: int) -> None:
        buckets = self._windows.get((window.scope, window.subject))
        if buckets is not None and bucket in buckets:
            buckets[bucket] += delta

    def acquire(self, scope: str, subject: str, limit: int) -> bool:
        held = self._slots.get((scope, subject), 0)
        if held >= limit:
            return False
        self._slots[(scope, subject)] = held + 1
        return True

    def release(self, scope: str, subject: str) -> None:
        held = self._slots.get((scope, subject), 0)
        if held <= 1:
            self._slots.pop((scope, subject), None)
        else:
            self._slots[(scope, subject)] = held - 1

    def _buckets(self, window: Window) -> dict[int, int]:
        name = (window.scope, window.subject)
        buckets = self._windows.get(name)
        if buckets is None:
            if len(self._windows) >= self._max_subjects:
                self._evict_idle()
            buckets = self._windows[name] = {}
        return buckets

    def _evict_idle(self) -> None:
        """Bounded memory: drop windows with nothing left in them, else the oldest half."""
        for name in [n for n, b in self._windows.items() if not any(b.values())]:
            del self._windows[name]
        if len(self._windows) >= self._max_subjects:
            for name in list(self._windows)[: len(self._windows) // 2]:
                del self._windows[name]


@dataclass(slots=True)
class Slot:
    """A held concurrency slot; give it back with :meth:`RateLimiter.release`."""

    scope: str
    subject: str
    lease: str | None  # the Redis lease id; None when held locally


class RateLimiter:
    """The limiter a worker uses: Redis when given one and it answers, else local windows."""

    def __init__(
        self,
        redis: RedisConn | None,
        *,
        timeout: float = 1.0,
        lease_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = "llmgw" if redis is None else redis.prefix
        self._lease_ms = int(lease_seconds * 1000)
        self.local = LocalWindows(clock)
        self._background = BackgroundTasks(MAX_BACKGROUND)
        self._redis = None if redis is None else redis.client
        self._guard = None
        self.breaker: CircuitBreaker | None = None
        if redis is not None:
            self._guard = redis.guard(
                "limiter", timeout=timeout, breaker=REDIS_BREAKER,
                on_failure=self._failed, on_change=self._breaker_changed,
            )  # fmt: skip
            self.breaker = self._guard.breaker
            self._take = redis.client.register_script(_TAKE)
            self._adjust = redis.client.register_script(_ADJUST)
            self._acquire = redis.client.register_script(_ACQUIRE)

    def _key(self, scope: str, subject: str) -> str:
        return f"{self._prefix}:{{rl:{subject}}}:{scope}"

    async def take(self, window: Window, cost: int) -> Verdict:
        """Book ``cost`` units in ``window`` if they fit."""
        if self._guard is not None and self._guard.allow():
            width = window.width_ms
            key = self._key(window.scope, window.subject)
            try:
                allowed, used, reset_ms, bucket = await self._guard.call(
                    self._take(keys=[key], args=[width, BUCKETS, window.limit, cost])
                )
            except RedisUnavailable:
                pass  # counted and warned about by the guard; limited here instead
            else:
                return Verdict(
                    window, bool(allowed), int(used), int(reset_ms) / 1000, int(bucket), True
                )
        return self.local.take(window, cost)

    async def adjust(self, verdict: Verdict, delta: int) -> None:
        """Correct units booked by ``verdict`` (settling an estimate, refunding a rejection)."""
        if not delta:
            return
        if not verdict.shared or self._guard is None:
            self.local.adjust(verdict.window, verdict.bucket, delta)
            return
        window = verdict.window
        with contextlib.suppress(RedisUnavailable):  # counted and warned about by the guard
            await self._guard.call(
                self._adjust(
                    keys=[self._key(window.scope, window.subject)],
                    args=[window.width_ms, BUCKETS, verdict.bucket, delta],
                )
            )

    async def acquire(self, scope: str, subject: str, limit: int) -> Slot | None:
        """A concurrency slot, or None when ``limit`` are held."""
        if self._guard is not None and self._guard.allow():
            lease = secrets.token_hex(8)
            try:
                got = await self._guard.call(
                    self._acquire(
                        keys=[self._key(scope, subject)], args=[limit, self._lease_ms, lease]
                    )
                )
            except RedisUnavailable:
                pass  # counted and warned about by the guard; a local slot instead
            else:
                return Slot(scope, subject, lease) if got else None
        return Slot(scope, subject, None) if self.local.acquire(scope, subject, limit) else None

    async def release(self, slot: Slot) -> None:
        if slot.lease is None or self._guard is None or self._redis is None:
            self.local.release(slot.scope, slot.subject)
            return
        with contextlib.suppress(RedisUnavailable):  # the lease expires on its own
            await self._guard.call(
                self._redis.zrem(self._key(slot.scope, slot.subject), slot.lease)
            )

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run settling and releasing after the answer went out, bounded; close() waits for it."""
        if not self._background.spawn(work):
            metrics.RATE_LIMIT_FALLBACKS.inc()

    async def close(self) -> None:
        """Wait (a bounded time) for settling still under way."""
        await self._background.wait(CLOSE_SECONDS)

    def _failed(self, exc: BaseException) -> None:
        metrics.RATE_LIMIT_FALLBACKS.inc()
        trail.warn(
            "limiter_fallback",
            "redis",
            "rate limiter: Redis call failed, this request limited per worker",
            error=type(exc).__name__,
        )

    @staticmethod
    def _breaker_changed(state: BreakerState) -> None:
        if state is BreakerState.OPEN:
            log.warning("rate limiter: Redis unreachable, enforcing limits per worker")
        elif state is BreakerState.CLOSED:
            log.info("rate limiter: Redis answers again, limits shared across workers")
