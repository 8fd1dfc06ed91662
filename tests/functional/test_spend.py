"""Spend end to end: real gateway and mock upstream processes over TCP, a real SQLite store.

Every request's stored cost is its usage at the upstream model's price (the config's price for
the mock's model, the built-in table's for a listed one), exact when the mock reported usage and
flagged estimated when it did not; cache hits and coalesced followers cost nothing; a model
without a price is counted as of unknown cost. The usage CLI, the admin API, /metrics and the
access log show it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.openai import estimate_prompt_tokens
from gateway.prices import BUILT_IN
from tests.conftest import (
    MASTER_KEY,
    Proc,
    create_key,
    free_port,
    gateway_command,
    run_cli,
    start_process,
)
from tests.functional.client import chat_body, read_stream
from tests.functional.test_accounting import usage_rows, wait_for_requests
from tests.functional.test_logs import log_lines
from tests.functional.test_shared_store import metric, scrape
from tests.postgres_server import fetch, postgres_server, postgres_url
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["postgres_server", "postgres_url", "redis_prefix", "redis_server", "redis_url"]

URL = "/v1/chat/completions"
INPUT, CACHED, OUTPUT = 2.0, 0.5, 10.0  # the config's price for mock-gpt, USD per 1M tokens


def price(prompt: int, completion: int, cached: int = 0) -> float:
    """What mock-gpt tokens cost at the config's price."""
    return ((prompt - cached) * INPUT + cached * CACHED + completion * OUTPUT) / 1e6


def write_spend_config(tmp_path: Path, mock_url: str, extra: str = "") -> Path:
    path = tmp_path / "spend.yaml"
    path.write_text(
        f"""
server: {{log_level: info}}
deployments:
  mock: {{base_url: "{mock_url}/v1", api_key: sk-upstream-test, models: [mock-gpt]}}
models:
  builtin: {{deployments: [mock], upstream_model: gpt-4o-mini}}
  unpriced: {{deployments: [mock], upstream_model: no-price-model}}
prices:
  mock-gpt: {{input: {INPUT}, cached_input: {CACHED}, output: {OUTPUT}}}
{extra}
"""
    )
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "LLM_GATEWAY_STORE__PATH": str(tmp_path / "store.sqlite3"),
        "LLM_GATEWAY_MASTER_KEY": MASTER_KEY,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.3",
    }


async def post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


def by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert len({r["day"] for r in rows}) == 1
    return {r["model"]: r for r in rows}


async def test_stored_spend_is_usage_at_the_price_table(
    start_gateway, mock_upstream: Proc, tmp_path: Path, env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Streamed and JSON answers cost their reported usage at the config's price (cached prompt
    tokens at the cached rate), a listed model the built-in price, an answer without usage an
    estimate flagged as such; a cache hit and coalesced followers cost 0; a model without a price
    is of unknown cost. The CLI, the admin API, /metrics and the access log agree."""
    key_id, key = create_key(env)
    config = write_spend_config(tmp_path, mock_upstream.url)
    proc: Proc = start_gateway("--config", str(config), env=env)
    url, auth = proc.url + URL, {"Authorization": f"Bearer {key}"}
    usage_wanted = {"include_usage": True}
    expected = 0.0

    # Streamed, with the usage chunk asked for: 2 of its prompt tokens served from cache.
    streamed = await read_stream(
        url,
        chat_body("mock-gpt", stream_options=usage_wanted, mock={"cached_tokens": 2, "chunks": 7}),
        auth,
    )
    usage = streamed.json_events()[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2 and streamed.done
    expected += price(usage["prompt_tokens"], usage["completion_tokens"], 2)
    # Streamed without it: the gateway asked for usage anyway, so the cost is exact too.
    plain = await read_stream(url, chat_body("mock-gpt", mock={"chunks": 5}), auth)
    assert plain.done and all(event["choices"] for event in plain.json_events())
    expected += price(3, 5)  # "tell me something": 3 words, the mock's tokens
    # JSON.
    answer = await post_json(url, chat_body("mock-gpt", stream=False, mock={"chunks": 4}), auth)
    expected += price(answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])
    # A cache hit: the second identical deterministic request never reaches the upstream.
    cached = chat_body("mock-gpt", stream=False, temperature=0, mock={"chunks": 6})
    first = await post_json(url, cached, auth)
    expected += price(first["usage"]["prompt_tokens"], first["usage"]["completion_tokens"])
    await asyncio.sleep(0.3)
    await post_json(url, cached, auth)
    # Coalesced: five identical streams at once, one upstream call; four followers are hits.
    together = chat_body(
        "mock-gpt",
        temperature=0,
        messages=[{"role": "user", "content": "all at once please"}],
        mock={"chunks": 10, "delay": 0.03},
    )
    results = await asyncio.gather(*(read_stream(url, together, auth) for _ in range(5)))
    assert sum(r.headers.get("X-Gateway-Coalesced") == "true" for r in results) == 4
    expected += price(4, 10)
    # No usage from the upstream: estimated (prompt from the request, completion from events).
    quiet = chat_body("mock-gpt", mock={"report_usage": False, "chunks": 8})
    assert (await read_stream(url, quiet, auth)).done
    estimated = price(estimate_prompt_tokens(quiet), 8)
    # A listed model at the built-in table's price; a model without a price.
    listed = await post_json(url, chat_body("builtin", stream=False), auth)
    table = BUILT_IN["gpt-4o-mini"]
    builtin = table.cost(listed["usage"]["prompt_tokens"], listed["usage"]["completion_tokens"])
    await post_json(url, chat_body("unpriced", stream=False), auth)

    requests = 6 + 5 + 2  # mock-gpt: 6 alone and 5 together; builtin and unpriced
    await wait_for_requests(env, requests, timeout=15)
    rows = by_model(usage_rows(env))
    mock_gpt = rows["mock-gpt"]
    assert mock_gpt["requests"] == 11 and mock_gpt["cache_hits"] == 1 + 4
    assert mock_gpt["cost_usd"] == pytest.approx(expected + estimated, abs=1e-9)
    assert mock_gpt["estimated_cost_usd"] == pytest.approx(estimated, abs=1e-9)
    assert mock_gpt["estimated_requests"] == 1 and mock_gpt["unknown_cost_requests"] == 0
    assert rows["builtin"]["cost_usd"] == pytest.approx(builtin, abs=1e-9) and builtin > 0
    assert (rows["unpriced"]["cost_usd"], rows["unpriced"]["unknown_cost_requests"]) == (0, 1)
    assert {r["key_id"] for r in rows.values()} == {key_id}

    # The CLI's table, the admin API and /metrics show the same money.
    table_out = run_cli("usage", "--key", key_id, env=env)
    assert table_out.returncode == 0, table_out.stderr
    header, *lines = table_out.stdout.splitlines()
    assert header.split()[-2:] == ["cost_usd", "hedge_cost_usd"]
    line = next(line for line in lines if " mock-gpt " in line)
    assert f"~{expected + estimated:.6f}" in line  # ~: part of it estimated
    assert " +1?" in next(line for line in lines if " unpriced " in line)
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            proc.url + f"/admin/usage?key={key_id}&model=mock-gpt", headers=admin
        ) as response,
    ):
        [api_row] = (await response.json())["data"]
    assert api_row["cost_usd"] == mock_gpt["cost_usd"]
    assert api_row["estimated_cost_usd"] == mock_gpt["estimated_cost_usd"]
    text = await scrape(proc.url)
    spent = metric(text, "llm_gateway_spend_usd_total", model="mock-gpt", key=key_id)
    assert spent == pytest.approx(expected + estimated, abs=1e-9)
    assert metric(text, "llm_gateway_spend_usd_total", model="builtin") == pytest.approx(builtin)
    assert metric(text, "llm_gateway_spend_usd_total", model="unpriced") == 0

    # The access line of each request carries its cost (none when it is unknown).
    lines_by_model: dict[str, list[dict[str, Any]]] = {}
    for access in log_lines(proc, "gateway.access"):
        if access.get("path") == URL:
            lines_by_model.setdefault(access["model"], []).append(access)
    mock_costs = [access.get("cost") for access in lines_by_model["mock-gpt"]]
    assert sum(c for c in mock_costs if c) == pytest.approx(expected + estimated, abs=1e-9)
    assert mock_costs.count(0.0) == 5  # the hit and the four followers
    assert "cost" not in lines_by_model["unpriced"][0]


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_spend_through_the_usage_bus_into_a_shared_store(
    start_gateway, mock_upstream: Proc, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:  # type: ignore[no-untyped-def]
    """With Redis, two workers' events carry their costs through the spool and the usage bus into
    the Redis store, or into PostgreSQL when it is configured too; the rollups and the metric
    summed over both workers equal the usage at the price table."""
    env = {
        "LLM_GATEWAY_REDIS_URL": request.getfixturevalue("redis_url"),
        "LLM_GATEWAY_STORE__REDIS_PREFIX": request.getfixturevalue("redis_prefix"),
        "LLM_GATEWAY_MASTER_KEY": MASTER_KEY,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.3",
        "LLM_GATEWAY_STORE__PATH": str(tmp_path / "unused.sqlite3"),
    }
    if store == "postgres":
        env["LLM_GATEWAY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    key_id, key = create_key(env)
    config = write_spend_config(tmp_path, mock_upstream.url)
    proc: Proc = start_gateway("--config", str(config), env=env, workers=2)
    url, auth = proc.url + URL, {"Authorization": f"Bearer {key}"}
    expected = 0.0
    for n in range(6):
        mock = {"chunks": 3 + n, "cached_tokens": 1}
        if n % 2:
            body = chat_body("mock-gpt", stream=False, mock=mock)
            usage = (await post_json(url, body, auth))["usage"]
        else:
            body = chat_body("mock-gpt", stream_options={"include_usage": True}, mock=mock)
            usage = (await read_stream(url, body, auth)).json_events()[-1]["usage"]
        expected += price(usage["prompt_tokens"], usage["completion_tokens"], 1)
    await wait_for_requests(env, 6, timeout=20)
    [row] = usage_rows(env)
    assert row["key_id"] == key_id and row["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert (row["estimated_cost_usd"], row["unknown_cost_requests"]) == (0, 0)
    text = await scrape(proc.url)
    spent = metric(text, "llm_gateway_spend_usd_total", model="mock-gpt", key=key_id)
    assert spent == pytest.approx(expected, abs=1e-9)
    if store == "postgres":  # the store of record keeps each request's cost too
        events = await fetch(env["LLM_GATEWAY_DATABASE_URL"],
                             "SELECT cost_usd, cost_exact FROM usage_events")  # fmt: skip
        assert len(events) == 6 and all(e["cost_exact"] for e in events)
        assert sum(e["cost_usd"] for e in events) == pytest.approx(expected, abs=1e-9)


async def test_hedge_cost_is_stored_and_exported(
    start_gateway, tmp_path: Path, env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """A request hedged from a slow deployment to a fast one pays the cancelled request's prompt
    (estimated) at the price: stored with the rollups as hedge cost, apart from the answer's
    cost, and exported with the hedge outcome and time saved."""
    mocks: list[Proc] = []
    for name, delay in (("slow", "3"), ("fast", "0")):
        port = free_port()
        command = gateway_command("mock-upstream", "--port", str(port), "--first-byte-delay", delay)
        mocks.append(start_process(command, port, tmp_path / f"{name}.log"))
    slow, fast = mocks
    config = tmp_path / "hedge.yaml"
    config.write_text(
        f"""
deployments:
  slow: {{base_url: "{slow.url}/v1", weight: 1000}}
  fast: {{base_url: "{fast.url}/v1", weight: 0.001}}
models:
  h:
    deployments: [slow, fast]
    upstream_model: mock-gpt
    hedge: {{after: 0.3, max_extra: 1}}
prices:
  mock-gpt: {{input: {INPUT}, cached_input: {CACHED}, output: {OUTPUT}}}
"""
    )
    try:
        proc: Proc = start_gateway("--config", str(config), env=env)
        body = chat_body("h", stream_options={"include_usage": True}, mock={"chunks": 6})
        answers = []
        for _ in range(2):
            started = time.monotonic()
            result = await read_stream(proc.url + URL, body)
            assert result.done and time.monotonic() - started < 2.0
            answers.append(result.json_events()[-1]["usage"])
        await wait_for_requests(env, 2, timeout=15)
        [row] = usage_rows(env)
        lost = 2 * price(estimate_prompt_tokens(body), 0)
        assert row["hedge_cost_usd"] == pytest.approx(lost, abs=1e-9) and lost > 0
        paid = sum(price(u["prompt_tokens"], u["completion_tokens"]) for u in answers)
        assert row["cost_usd"] == pytest.approx(paid, abs=1e-9)  # the answers, hedges apart
        text = await scrape(proc.url)
        assert metric(text, "llm_gateway_hedge_cost_usd_total", model="h") == pytest.approx(lost)
        assert metric(text, "llm_gateway_hedges_total", outcome="won") == 2
        assert "llm_gateway_hedge_time_saved_seconds_total{" in text
        shown = run_cli("usage", "--json", env=env)
        assert orjson.loads(shown.stdout)[0]["hedge_cost_usd"] == row["hedge_cost_usd"]
    finally:
        for mock in mocks:
            mock.stop()
