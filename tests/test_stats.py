"""The stats sidecar: batch triggers, retries without double counting, bounded loss, final flush."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.config import StatsSettings
from gateway.stats import StatsEvent, StatsSidecar, aggregate
from tests.fakes import FakeStore


def event(n: int = 0, **fields: Any) -> StatsEvent:
    base: dict[str, Any] = {
        "request_id": f"r{n}", "key_id": "key_a", "model": "m", "deployment": "d",
        "route": "/v1/chat/completions", "status": 200, "prompt_tokens": 3,
        "completion_tokens": 5, "tokens_exact": True, "cache_hit": False, "latency_ms": 1.0,
        "ttfb_ms": 0.5, "termination": "completed", "ts": 1795390000.0,
    }  # fmt: skip
    return StatsEvent(**{**base, **fields})


async def wait_until(condition: Any, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_aggregate_sums_per_key_model_day() -> None:
    """Events fold into one delta per key, model and day, with errors and estimates counted."""
    deltas = aggregate(
        [
            event(1),
            event(2, status=502, termination="upstream_error", tokens_exact=False),
            event(3, model="m2", cache_hit=True),
        ]
    )
    by_model = {d.model: d for d in deltas}
    assert by_model["m"].requests == 2 and by_model["m"].errors == 1
    assert by_model["m"].estimated_requests == 1 and by_model["m"].prompt_tokens == 6
    assert by_model["m2"].cache_hits == 1 and by_model["m2"].day == "2026-11-22"


async def test_a_full_batch_flushes_at_once() -> None:
    """100 events flush without waiting for the interval."""
    store = FakeStore()
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=60, flush_events=100))
    sidecar.start()
    for n in range(100):
        sidecar.publish(event(n))
    assert await wait_until(lambda: store.requests() == 100) < 1.0
    await sidecar.stop(time.monotonic() + 1)


async def test_one_event_flushes_after_the_interval() -> None:
    """A lone event waits for the interval, then flushes."""
    store = FakeStore()
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=0.5, flush_events=100))
    sidecar.start()
    sidecar.publish(event())
    await asyncio.sleep(0.3)
    assert store.requests() == 0
    waited = await wait_until(lambda: store.requests() == 1)
    assert waited < 0.5
    await sidecar.stop(time.monotonic() + 1)


async def test_store_outage_delays_and_never_double_counts() -> None:
    """Events survive an outage; a batch that failed after applying is not applied twice."""
    store = FakeStore()
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=0.1, flush_events=10))
    sidecar.start()
    store.down = True
    for n in range(35):
        sidecar.publish(event(n))
    await asyncio.sleep(0.5)
    assert store.requests() == 0 and sidecar.statistics().failures > 0
    store.down = False
    store.fail_after_apply = 1
    await wait_until(lambda: sidecar.statistics().flushed == 35, timeout=5)
    assert store.requests() == 35
    assert sidecar.statistics().dropped == 0
    await sidecar.stop(time.monotonic() + 1)


async def test_overflow_is_counted_not_silent() -> None:
    """Past the buffer bound events are dropped and counted."""
    store = FakeStore()
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=60, flush_events=100, buffer_size=5))
    for n in range(8):  # not started: nothing drains the buffer
        sidecar.publish(event(n))
    stats = sidecar.statistics()
    assert (stats.published, stats.buffered, stats.dropped) == (8, 5, 3)


async def test_stop_flushes_everything_and_retries() -> None:
    """stop() seals the buffer and retries an unavailable store until it answers."""
    store = FakeStore()
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=60, flush_events=100))
    sidecar.start()
    for n in range(42):
        sidecar.publish(event(n))
    store.down = True
    asyncio.get_running_loop().call_later(0.5, lambda: setattr(store, "down", False))
    await sidecar.stop(time.monotonic() + 5)
    assert store.requests() == 42 and sidecar.statistics().dropped == 0


async def test_stop_counts_what_it_could_not_flush() -> None:
    """If the store never comes back before the deadline, the loss is counted."""
    store = FakeStore()
    store.down = True
    sidecar = StatsSidecar(store, StatsSettings(flush_interval=60, flush_events=100))
    for n in range(7):
        sidecar.publish(event(n))
    await sidecar.stop(time.monotonic() + 0.3)
    assert sidecar.statistics().dropped == 7
