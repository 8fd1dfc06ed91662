"""The numbered event log of a resumable stream: in the producing worker's memory (a bounded
deque a reader waits on), and mirrored into a Redis Stream so another worker or instance can
serve a resume (see gateway/resumable.py for the keys and their lifetimes)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.config import StreamSettings
from gateway.redisconn import RedisConn


@dataclass(slots=True)
class EventLog:
    """One stream's numbered events in this worker."""

    stream_id: str
    owner: str
    max_events: int
    events: collections.deque[tuple[int, bytes]] = field(init=False)
    next_seq: int = 1
    finished: bool = False
    ended_at: float | None = None
    readers: int = 0
    left_at: float = field(default_factory=time.time)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.events = collections.deque(maxlen=self.max_events)

    def append(self, data: bytes) -> tuple[int, bytes]:
        item = (self.next_seq, data)
        self.next_seq += 1
        self.events.append(item)
        self._notify()
        return item

    def finish(self) -> None:
        self.finished = True
        self.ended_at = time.time()
        self._notify()

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        if not self.events or self.events[-1][0] <= seq:
            return []
        start = max(0, seq - self.events[0][0] + 1)
        return list(self.events)[start:]

    async def changed(self, wait: float) -> None:
        """Return when an event arrives or the stream ends, or after ``wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class RedisLogs:
    """The Redis mirror of event logs, for resumes through other workers and instances."""

    def __init__(self, redis: RedisConn, *, settings: StreamSettings) -> None:
        self._redis = redis.client
        self._prefix = redis.prefix
        self._guard = redis.guard("streams")
        self._settings = settings
        # While a stream runs its keys live this long; when it ends, ``retention``.
        self._running_ttl = int(settings.grace + settings.retention + 86400)

    def _keys(self, stream_id: str) -> tuple[str, str]:
        tag = f"{self._prefix}:{{s:{stream_id}}}"
        return f"{tag}:ev", f"{tag}:meta"

    def _pipeline(self) -> Any:
        """A non-transactional pipeline (Any: redis-py types queued calls as awaitables)."""
        return self._redis.pipeline(transaction=False)

    async def _do(self, call: Any) -> Any:
        """One guarded call; a failure raises RedisUnavailable."""
        return await self._guard.call(call)

    async def create(self, stream_id: str, owner: str) -> None:
        _, meta = self._keys(stream_id)
        ttl = self._running_ttl
        pipe = self._pipeline()
        pipe.hset(meta, mapping={"owner": owner, "seen": time.time()})
        pipe.expire(meta, ttl)
        await self._do(pipe.execute())

    async def append(self, stream_id: str, items: list[tuple[int, bytes]]) -> None:
        events, _ = self._keys(stream_id)
        pipe = self._pipeline()
        for seq, data in items:
            pipe.xadd(
                events,
                {"d": data},
                id=f"{seq}-0",
                maxlen=self._settings.max_events,
                approximate=True,
            )
        pipe.expire(events, self._running_ttl)  # a worker that dies mid-stream leaves no orphan
        await self._do(pipe.execute())

    async def finish(self, stream_id: str, seq: int) -> None:
        events, meta = self._keys(stream_id)
        retention = int(self._settings.retention)
        pipe = self._pipeline()
        pipe.xadd(events, {"end": "1"}, id=f"{seq}-0")
        pipe.hset(meta, "done", "1")
        pipe.expire(events, retention)
        pipe.expire(meta, retention)
        await self._do(pipe.execute())

    async def owner(self, stream_id: str) -> str | None:
        _, meta = self._keys(stream_id)
        value = await self._do(self._redis.hget(meta, "owner"))
        return None if value is None else str(value)

    async def read(
        self, stream_id: str, after: int, block: float
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """Events after ``after`` (waiting up to ``block`` s for some), and whether it ended."""
        events, _ = self._keys(stream_id)
        answer: Any = await self._guard.call(
            self._redis.xread({events: f"{after}-0"}, count=500, block=max(1, int(block * 1000))),
            extra=block,
        )
        found: list[tuple[int, bytes]] = []
        ended = False
        for _, entries in answer or []:
            for entry_id, fields in entries:
                seq = int(str(entry_id).split("-")[0])
                if "end" in fields:
                    ended = True
                    break
                data = fields["d"]
                found.append((seq, data.encode() if isinstance(data, str) else data))
        return found, ended

    async def cancel(self, stream_id: str) -> None:
        await self._do(self._redis.hset(self._keys(stream_id)[1], "cancel", "1"))

    async def touch(self, stream_id: str) -> None:
        await self._do(self._redis.hset(self._keys(stream_id)[1], "seen", time.time()))

    async def watch(self, stream_id: str) -> tuple[bool, float]:
        """(cancel asked for, last time a remote reader was seen)."""
        meta = self._keys(stream_id)[1]
        fields: Any = await self._do(self._redis.hmget(meta, "cancel", "seen"))
        cancel, seen = fields
        return cancel is not None, float(seen or 0)
