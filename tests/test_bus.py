"""The usage bus on a real Redis: commit before ack, claims from a dead consumer, no double count,
and a publisher that waits out a Redis outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.background import cancel_and_wait
from gateway.bus import GROUP, BusConsumer, BusPublisher, stream_key
from gateway.config import StatsSettings, StoreSettings
from gateway.redisconn import RedisConn, connect_redis
from gateway.spool import Spool, read_spool
from tests.fakes import FakeStore
from tests.redis_server import RedisServer, redis_prefix, redis_server, redis_url
from tests.test_stats import event

__all__ = ["redis_prefix", "redis_server", "redis_url"]

SETTINGS = StatsSettings(flush_interval=0.2, flush_events=50, claim_after=0.5)


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_dead_consumers_events_are_claimed_and_counted_once(
    redis_url: str, redis_prefix: str
) -> None:
    """A consumer that read events and died before acknowledging them leaves them pending;
    another claims them after claim_after, and the store counts each event once."""
    stream = stream_key(redis_prefix)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    conn = connect_redis(StoreSettings(redis_url=redis_url, redis_prefix=redis_prefix))
    publisher = BusPublisher(RedisConn(redis), stream=stream, settings=SETTINGS)
    store = FakeStore()
    store.down = True  # the first consumer reads but cannot commit
    first = BusConsumer(conn, store, stream=stream, settings=SETTINGS, name="first")
    first.start()
    publisher.start()
    for n in range(30):
        publisher.publish(event(n))
    await until(lambda: publisher.statistics().flushed == 30)

    async def pending_of(name: str) -> int:
        consumers = await redis.xinfo_consumers(stream, GROUP)
        return sum(c["pending"] for c in consumers if c["name"] == name)

    deadline = time.monotonic() + 5
    while await pending_of("first") < 30:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert first._task is not None
    await cancel_and_wait(first._task)  # dies between read and ack: nothing acknowledged
    store.down = False
    store.fail_after_apply = 1  # the second consumer's first commit lands but is not acked
    second = BusConsumer(conn, store, stream=stream, settings=SETTINGS, name="second")
    second.start()
    await until(lambda: second.committed == 30)
    assert second.claimed >= 30 and store.requests() == 30 and store.calls >= 2
    assert (await redis.xinfo_groups(stream))[0]["pending"] == 0
    assert await redis.xlen(stream) == 0  # acknowledged entries are deleted
    await second.stop(time.monotonic() + 1)
    await publisher.stop(time.monotonic() + 1)
    await first.stop(time.monotonic() + 1)
    await conn.aclose()
    await redis.aclose()


async def test_publisher_waits_out_a_redis_outage(
    redis_server: RedisServer | None, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """With Redis stopped, events wait in the queue and stay undelivered in the spool; once Redis
    is back they are sent and marked delivered."""
    if redis_server is None:
        pytest.fail("this test needs the suite's own redis-server (unset REDIS_URL)")
    stream = stream_key(redis_prefix)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.5)
    spool = Spool(tmp_path, fsync_interval=0.05)
    spool.open()
    publisher = BusPublisher(
        RedisConn(redis, timeout=0.5), stream=stream, settings=SETTINGS, spool=spool
    )
    publisher.start()
    redis_server.stop()
    for n in range(20):
        publisher.publish(event(n))
    await until(lambda: publisher.statistics().failures > 0)
    assert publisher.statistics().buffered == 20
    assert spool.path is not None and len(read_spool(spool.path).ended) == 20
    redis_server.start()
    await until(lambda: publisher.statistics().flushed == 20, timeout=15)
    assert read_spool(spool.path).ended == [] and await redis.xlen(stream) == 20
    await publisher.stop(time.monotonic() + 1)
    await spool.close()
    assert not spool.path.exists()
    await redis.aclose()


async def test_costs_ride_the_bus(redis_url: str, redis_prefix: str) -> None:
    """An event's cost, its exactness and its hedge cost reach the store through the stream as
    they were published; an event without a cost arrives without one."""
    stream = stream_key(redis_prefix)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    conn = connect_redis(StoreSettings(redis_url=redis_url, redis_prefix=redis_prefix))
    publisher = BusPublisher(RedisConn(redis), stream=stream, settings=SETTINGS)
    store = FakeStore()
    consumer = BusConsumer(conn, store, stream=stream, settings=SETTINGS, name="costs")
    consumer.start()
    publisher.start()
    priced = event(1, cost_usd=0.0125, cost_exact=True, hedge_cost_usd=0.002)
    unpriced = event(2)
    publisher.publish(priced)
    publisher.publish(unpriced)
    await until(lambda: consumer.committed == 2)
    assert store.applied[priced.event_id] == priced
    assert store.applied[unpriced.event_id].cost_usd is None
    await consumer.stop(time.monotonic() + 1)
    await publisher.stop(time.monotonic() + 1)
    await conn.aclose()
    await redis.aclose()
