"""The budget guard on a real event source: leases ahead of delivery, a cut at the budget."""

from __future__ import annotations

import asyncio

from gateway.budget import Budget
from gateway.config import Deployment
from gateway.errors import BudgetExceeded
from gateway.guard import BudgetGuard, KeySpend
from gateway.ledger import LocalLedger
from gateway.source import EventSource
from tests.test_cache import Chunks, Collected

EVENT = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'


async def guarded(budget_usd: float, *, lease: int) -> tuple[Chunks, EventSource, Collected]:
    upstream = Chunks()
    source = EventSource(upstream, Deployment(name="d", base_url="http://d/v1"), keepalive=30)
    ledger = LocalLedger()
    budgets = [Budget(budget_usd, "day", "usd")]
    spend = KeySpend(
        ledger, key_id="k", budgets=budgets, input_usd_per_token=0.0,
        output_usd_per_token=0.001, lease_tokens=lease,
    )  # fmt: skip
    first = await spend.admit(prompt_tokens=1)  # the admission lease (a free prompt here)
    guard = BudgetGuard(source, spend, granted=first)
    source.guard(guard)  # before the first event, as the opener does
    source.start()
    client = Collected()
    source.attach(client)
    return upstream, source, client


async def test_a_stream_is_cut_where_its_budget_ends() -> None:
    """$0.010 at $0.001 a token: 10 events reach the client, then budget_exceeded, no more."""
    upstream, source, client = await guarded(0.010, lease=4)
    for _ in range(30):
        if source.done:
            break
        upstream.send(EVENT)
        await asyncio.sleep(0.001)  # a draw in flight completes between events
    assert client.data.count(b"\n\n") == 10
    assert isinstance(client.error, BudgetExceeded)
    assert source.done and upstream.closed_complete is False  # the upstream was cancelled


async def test_a_healthy_stream_never_waits_for_a_lease() -> None:
    """With budget to spare, leases are drawn ahead and every event is delivered."""
    upstream, _, client = await guarded(1.0, lease=8)
    for _ in range(50):
        upstream.send(EVENT)
        await asyncio.sleep(0)
    upstream.send(b"data: [DONE]\n\n")
    assert client.data.count(b"\n\n") == 51 and client.error is None


async def test_a_burst_in_one_read_is_held_at_the_lease_and_cut_at_the_budget() -> None:
    """30 events and [DONE] in one read, a $0.010 budget in leases of 4: the guard holds the
    rest of the batch past its lease until the next draw answers, lets exactly 10 events
    through, then cuts; the [DONE] that came in the same read is never delivered."""
    upstream, source, client = await guarded(0.010, lease=4)
    upstream.send(EVENT * 30 + b"data: [DONE]\n\n")
    for _ in range(50):
        if source.done:
            break
        await asyncio.sleep(0.001)
    assert isinstance(client.error, BudgetExceeded)
    assert b"[DONE]" not in client.data
    assert client.data.count(b"\n\n") == 10
    assert source.content_events == client.data.count(b"\n\n")  # accounted as delivered


async def test_a_burst_within_budget_is_delivered_whole_and_ends_after_its_batches() -> None:
    """The same burst with budget to spare: every event, then [DONE], in order, even though the
    end came while batches were held for a lease."""
    upstream, source, client = await guarded(1.0, lease=4)
    upstream.send(EVENT * 30 + b"data: [DONE]\n\n")
    for _ in range(50):
        if source.done:
            break
        await asyncio.sleep(0.001)
    assert client.error is None and source.clean
    assert client.data.count(b"\n\n") == 31 and client.data.endswith(b"data: [DONE]\n\n")
