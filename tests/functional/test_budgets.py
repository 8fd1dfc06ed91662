"""Budgets in money, drawn in leases while streams run, as real processes over TCP.

The mock's model is priced in the config so every figure is known: prompts are free here and an
output token costs $0.001, so a 100-token answer costs $0.10.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import MASTER_KEY, Proc, create_key, run_cli, write_config
from tests.functional.client import StreamRead, chat_body, read_stream
from tests.functional.test_limits import auth, post
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]

URL = "/v1/chat/completions"
OUTPUT_USD = 0.001  # per token: 1000 USD per million
ANSWER_TOKENS = 100
LEASE = 16
PRICED = f"""
prices:
  mock-gpt: {{input: 0, output: {OUTPUT_USD * 1_000_000:g}}}
limits:
  budget_lease_tokens: {LEASE}
"""


def priced_config(tmp_path: Path, mock_url: str) -> Path:
    path = write_config(tmp_path, mock_url)
    path.write_text(path.read_text() + PRICED)
    return path


def content_events(read: StreamRead) -> int:
    """Events that carried text, counted from the client's own bytes."""
    return sum(
        1
        for event in read.json_events()
        for choice in event.get("choices") or ()
        if (choice.get("delta") or {}).get("content")
    )


def errors_in(read: StreamRead) -> list[dict[str, Any]]:
    return [e["error"] for e in read.json_events() if "error" in e]


async def test_twenty_streams_of_one_key_on_two_workers_stay_within_one_lease_each(
    start_gateway: Any,
    mock_upstream: Proc,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    keyed_env: dict[str, str],
) -> None:
    """20 concurrent streams, a $1 budget (10 whole answers), 2 workers sharing Redis: the key
    spends its budget and at most one lease more per stream; each cut stream ends with one
    budget_exceeded event and no [DONE], and its upstream is cancelled within a second; the
    ledger and the stored spend hold exactly what the clients received, at the table's price."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_SHED_LAG": "10",
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5",
    }
    budget = 10 * ANSWER_TOKENS * OUTPUT_USD
    key_id, key = create_key(env, "--budget-usd", f"{budget:g}/day")
    gateway: Proc = start_gateway(
        "--config", str(priced_config(tmp_path, mock_upstream.url)), env=env, workers=2
    )

    def body(n: int) -> dict[str, Any]:
        request = chat_body("mock-gpt", mock={"chunks": ANSWER_TOKENS, "delay": 0.01})
        request["messages"][0]["content"] = f"stream number {n}"
        return request

    async def one(n: int) -> tuple[int, StreamRead, float]:
        read = await read_stream(gateway.url + URL, body(n), auth(key))
        return n, read, time.time()

    results = await asyncio.gather(*(one(n) for n in range(20)))
    delivered = 0
    cut: dict[int, float] = {}
    for n, read, ended in results:
        assert read.status == 200, read.raw[:300]
        got = content_events(read)
        delivered += got
        errors = errors_in(read)
        if read.done:
            assert got == ANSWER_TOKENS and not errors
        else:
            assert [e["code"] for e in errors] == ["budget_exceeded"], read.raw[-400:]
            assert read.data[-1] != b"[DONE]" and b"[DONE]" not in read.data
            assert got < ANSWER_TOKENS
            cut[n] = ended
    assert cut, "no stream was cut: the budget did not bind"
    overshoot = delivered * OUTPUT_USD - budget
    assert -20 * LEASE * OUTPUT_USD <= overshoot <= 20 * LEASE * OUTPUT_USD, delivered

    # The mock saw each cut stream's request end as a disconnect, within a second of the cut.
    async with (
        aiohttp.ClientSession() as session,
        session.get(mock_upstream.url + "/_mock/requests") as response,
    ):
        seen = await response.json()
    records = seen["requests"] if isinstance(seen, dict) else seen
    by_stream = {int(r["body"]["messages"][0]["content"].rsplit(" ", 1)[1]): r for r in records}
    assert len(by_stream) == 20
    for n, ended in cut.items():
        record = by_stream[n]
        assert record["outcome"] == "disconnected", record
        assert record["ended"] is not None and record["ended"] - ended < 1.0

    # The shared ledger settled to what the clients got, at the table's price.
    client = aioredis.Redis.from_url(redis_url)
    try:
        day = dt.datetime.now(dt.UTC).strftime("d%Y%m%d")
        ledger_key = f"{redis_prefix}:{{b:{key_id}}}:usd:{day}"
        spent = 0.0
        for _ in range(50):
            spent = float(await client.get(ledger_key) or 0)
            if abs(spent - delivered * OUTPUT_USD) < 1e-9:
                break
            await asyncio.sleep(0.1)
        assert abs(spent - delivered * OUTPUT_USD) < 1e-9, (spent, delivered)
    finally:
        await client.aclose()

    # The stored spend (the usage rollups, through the bus) says the same.
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(
                gateway.url + f"/admin/usage?key={key_id}", headers=admin
            ) as response:
                rows = (await response.json())["data"]
            if sum(row["requests"] for row in rows) >= 20:
                break
            await asyncio.sleep(0.2)
    assert sum(row["requests"] for row in rows) == 20
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(delivered * OUTPUT_USD, abs=1e-6)
    assert sum(row["completion_tokens"] for row in rows) == delivered

    # Now the budget is spent: a new request is refused at admission, saying when it resets.
    async with aiohttp.ClientSession() as session:
        status, headers, error = await post(
            session, gateway.url + URL, chat_body("mock-gpt", stream=False), auth(key)
        )
    assert status == 429, error
    assert error["error"]["code"] == "budget_exceeded"
    assert set(error["error"]) == {"message", "type", "param", "code"}
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert headers["X-Gateway-Budget-Reset"] == tomorrow
    assert tomorrow in error["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 86_401


async def test_budgets_at_admission_json_answers_and_the_cache(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """Without Redis (one worker's ledger): JSON answers are charged their usage, a cache hit
    draws nothing, a token budget refuses once spent, and keys without budgets are untouched."""
    # $0.25: two 100-token answers fit, the third one does not.
    _, key = create_key(
        keyed_env, "--budget-usd", "0.25/month", "--budget-tokens", "100000/lifetime"
    )
    _, free = create_key(keyed_env)
    gateway: Proc = start_gateway(
        "--config", str(priced_config(tmp_path, mock_upstream.url)), env=keyed_env
    )
    answer = chat_body("mock-gpt", stream=False, mock={"chunks": ANSWER_TOKENS})
    cached = {**answer, "temperature": 0, "messages": [{"role": "user", "content": "same"}]}
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            status, _, _ = await post(session, gateway.url + URL, answer, auth(key))
            statuses.append(status)
        assert statuses == [200, 200]
        # $0.20 spent: a 100-token answer does not fit in the $0.05 left...
        status, headers, error = await post(session, gateway.url + URL, answer, auth(key))
        assert status == 200  # ...but admission only needs a lease: JSON answers settle after
        status, headers, error = await post(session, gateway.url + URL, answer, auth(key))
        assert status == 429 and error["error"]["code"] == "budget_exceeded", error
        assert "$0.25/month" in error["error"]["message"]
        month = dt.datetime.now(dt.UTC).replace(day=1) + dt.timedelta(days=32)
        assert headers["X-Gateway-Budget-Reset"] == month.strftime("%Y-%m-01T00:00:00Z")
        # The free key is not limited by the other's budget.
        for _ in range(3):
            status, _, _ = await post(session, gateway.url + URL, answer, auth(free))
            assert status == 200
    # A cache hit costs nothing and draws nothing (cache entries are per key by default).
    _, third = create_key(keyed_env, "--budget-tokens", "150/day")
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, gateway.url + URL, cached, auth(third))
        assert status == 200 and headers["X-Gateway-Cache"] == "stored"
        for _ in range(3):  # 100+ tokens spent of 150: a miss would be refused; hits are free
            status, headers, _ = await post(session, gateway.url + URL, cached, auth(third))
            assert status == 200 and headers["X-Gateway-Cache"] == "hit"
        status, _, error = await post(session, gateway.url + URL, answer, auth(third))
        assert status == 200  # a miss: its 100-odd tokens leave nothing for the next one
        status, _, error = await post(session, gateway.url + URL, answer, auth(third))
        assert status == 429 and error["error"]["code"] == "budget_exceeded", error
        assert "150 tokens/day" in error["error"]["message"]


async def test_budgets_in_the_cli_and_the_admin_api(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """`keys create --budget-usd/--budget-tokens`, `keys show`, and the same in /admin/keys."""
    key_id, _ = create_key(keyed_env, "--budget-usd", "25/month", "--budget-usd", "2/day",
                           "--budget-tokens", "100000/day")  # fmt: skip
    shown = run_cli("keys", "show", key_id, env=keyed_env)
    assert shown.returncode == 0, shown.stderr
    assert "$25/month, $2/day, 100000 tokens/day" in shown.stdout
    bad = run_cli("keys", "create", "--name", "x", "--budget-usd", "5/week", env=keyed_env)
    assert bad.returncode == 2 and "--budget-usd" in bad.stderr and "week" in bad.stderr
    gateway: Proc = start_gateway(
        "--config", str(priced_config(tmp_path, mock_upstream.url)), env=keyed_env
    )
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url + "/admin/keys",
            json={"name": "api", "budget_usd": "5/lifetime", "budget_tokens": ["1000/day"]},
            headers=admin,
        ) as response:
            assert response.status == 201
            created = await response.json()
        assert created["budgets"] == [
            {"unit": "usd", "limit": 5.0, "period": "lifetime", "text": "$5/lifetime"},
            {"unit": "tokens", "limit": 1000, "period": "day", "text": "1000 tokens/day"},
        ]
        async with session.get(gateway.url + f"/admin/keys/{key_id}", headers=admin) as response:
            view = await response.json()
        assert [b["text"] for b in view["budgets"]] == ["$25/month", "$2/day", "100000 tokens/day"]
        async with session.post(
            gateway.url + "/admin/keys", json={"name": "x", "budget_usd": "-1/day"}, headers=admin
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert error["param"] == "budget_usd" and "positive" in error["message"]
        async with session.post(
            gateway.url + "/admin/keys", json={"name": "x", "budget_usd": 5}, headers=admin
        ) as response:
            assert response.status == 400
            assert orjson.loads(await response.read())["error"]["param"] == "budget_usd"


async def test_a_cut_stream_ends_in_the_clients_dialect(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """An Anthropic Messages client's stream is cut with one Anthropic ``error`` event, the
    budget named in its message, and no ``message_stop``."""
    _, key = create_key(keyed_env, "--budget-usd", "0.05/day")  # 50 output tokens
    gateway: Proc = start_gateway(
        "--config", str(priced_config(tmp_path, mock_upstream.url)), env=keyed_env
    )
    body = {
        "model": "mock-gpt", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:  # a Messages body carries no mock settings
        behaviour = {"defaults": {"chunks": ANSWER_TOKENS}}
        async with session.post(mock_upstream.url + "/_mock/behaviour", json=behaviour) as r:
            assert r.status == 200
    read = await read_stream(gateway.url + "/v1/messages", body, {"x-api-key": key})
    assert read.status == 200
    events = [orjson.loads(d) for d in read.data]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "error" and kinds.count("error") == 1 and "message_stop" not in kinds
    assert events[-1]["error"]["type"] == "rate_limit_error"
    assert "$0.05/day" in events[-1]["error"]["message"]
    texts = [e for e in events if e["type"] == "content_block_delta"]
    assert 40 <= len(texts) <= 50 + LEASE


async def test_a_restart_does_not_hand_out_a_spent_budget_again(
    start_gateway: Any, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:
    """Without Redis each worker's ledger starts from the store's usage: $0.15 for the key's
    lifetime, $0.10 spent, a restart, one more answer admitted on what is left, then 429;
    `keys show` says what was spent."""
    key_id, key = create_key(keyed_env, "--budget-usd", "0.15/lifetime")
    config = str(priced_config(tmp_path, mock_upstream.url))
    answer = chat_body("mock-gpt", stream=False, mock={"chunks": ANSWER_TOKENS})
    first: Proc = start_gateway("--config", config, env=keyed_env)
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, first.url + URL, answer, auth(key))
        assert status == 200
    first.stop()  # SIGTERM: the usage is flushed to the store
    second: Proc = start_gateway("--config", config, env=keyed_env)
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, second.url + URL, answer, auth(key))
        assert status == 200  # $0.05 left: a lease fits, the answer is charged whole
        status, _, error = await post(session, second.url + URL, answer, auth(key))
        assert status == 429 and error["error"]["code"] == "budget_exceeded", error
        assert "$0.15/lifetime" in error["error"]["message"]
    second.stop()
    shown = run_cli("keys", "show", key_id, env=keyed_env)
    assert "spent          $0.200000 of $0.15/lifetime" in shown.stdout, shown.stdout
