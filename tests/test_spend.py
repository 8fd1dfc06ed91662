"""A request's cost: usage at the upstream model's price, exact or estimated, unknown without a
price; hedge cost; how events roll costs up."""

from __future__ import annotations

import pytest

from gateway.openai import Usage
from gateway.prices import Price, PriceTable
from gateway.spend import Cost, hedge_cost, request_cost
from gateway.store.base import StatsEvent, aggregate

PRICES = PriceTable({"mock-gpt": Price(input=2.0, output=10.0, cached_input=0.5)})


def event(cost: float | None, *, exact: bool = True, hedge: float = 0.0) -> StatsEvent:
    return StatsEvent(
        request_id="r", key_id="key_a", model="m", deployment="d", route="/v1/chat/completions",
        status=200, prompt_tokens=1, completion_tokens=1, tokens_exact=exact, cache_hit=False,
        latency_ms=1.0, ttfb_ms=None, termination="completed", ts=1795305600.0,
        cost_usd=cost, cost_exact=exact, hedge_cost_usd=hedge,
    )  # fmt: skip


def test_reported_usage_costs_its_exact_price_cached_tokens_at_their_rate() -> None:
    """10 prompt tokens (4 cached) and 5 completion tokens at the table's rates, exact."""
    cost = request_cost(PRICES, "mock-gpt", Usage(10, 5, exact=True, cached_tokens=4))
    assert cost is not None and cost.exact
    assert cost.usd == pytest.approx((6 * 2.0 + 4 * 0.5 + 5 * 10.0) / 1e6)


def test_estimated_usage_gives_an_estimated_cost() -> None:
    """Tokens the upstream never reported give a cost flagged as estimated."""
    cost = request_cost(PRICES, "mock-gpt", Usage(10, 5, exact=False))
    assert cost == Cost(pytest.approx((10 * 2.0 + 5 * 10.0) / 1e6), False)  # type: ignore[arg-type]


def test_a_model_without_a_price_has_no_cost_unless_it_used_no_tokens() -> None:
    """No price: the cost is unknown (None), not 0; a request that used no tokens costs 0."""
    assert request_cost(PRICES, "no-such-model", Usage(10, 5, exact=True)) is None
    assert request_cost(PRICES, None, Usage(10, 5, exact=True)) is None
    assert request_cost(PRICES, "no-such-model", Usage(0, 0, exact=True)) == Cost(0.0, True)


def test_hedge_cost_is_the_lost_prompts_at_the_input_price() -> None:
    """Cancelled hedges' prompt tokens at the input price; 0 without a price or tokens."""
    assert hedge_cost(PRICES, "mock-gpt", 1000) == pytest.approx(1000 * 2.0 / 1e6)
    assert hedge_cost(PRICES, "no-such-model", 1000) == 0.0
    assert hedge_cost(PRICES, "mock-gpt", 0) == 0.0


def test_events_roll_up_in_nano_usd_with_the_estimated_part_and_unknown_requests() -> None:
    """A rollup sums costs in nano-USD, says how much was estimated, counts the requests whose
    cost is unknown apart, and keeps hedge cost in its own counter."""
    [delta] = aggregate([
        event(0.000123), event(0.000002, exact=False), event(None), event(0.0, hedge=0.00005),
    ])  # fmt: skip
    assert delta.cost_nanousd == 125_000
    assert delta.estimated_cost_nanousd == 2_000
    assert delta.unknown_cost_requests == 1
    assert delta.hedge_cost_nanousd == 50_000


def test_an_event_from_before_spend_loads_without_cost() -> None:
    """A spooled or bussed event written before costs existed loads with an unknown cost; one
    with a field this version does not know loads too."""
    old = {
        "request_id": "r", "key_id": "k", "model": "m", "deployment": None, "route": "/v1/x",
        "status": 200, "prompt_tokens": 1, "completion_tokens": 2, "tokens_exact": True,
        "cache_hit": False, "latency_ms": 1.0, "ttfb_ms": None, "termination": "completed",
        "ts": 1795305600.0, "event_id": "e1",
    }  # fmt: skip
    loaded = StatsEvent.from_dict(old)
    assert (loaded.cost_usd, loaded.cost_exact, loaded.hedge_cost_usd) == (None, False, 0.0)
    assert StatsEvent.from_dict({**old, "from_the_future": 1}).event_id == "e1"
    [delta] = aggregate([loaded])
    assert (delta.cost_nanousd, delta.unknown_cost_requests) == (0, 1)
