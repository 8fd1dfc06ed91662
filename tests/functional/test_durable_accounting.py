"""Durable accounting under crashes, as real processes: a SIGKILLed worker, a consumer killed
between read and ack, a frozen or stopped PostgreSQL, and SQLite with the spool."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Proc, create_key, wait_for_log, write_config
from tests.event_stream import EventStreamParser
from tests.postgres_server import PostgresServer, fetch, postgres_server, postgres_url
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["postgres_server", "postgres_url", "redis_prefix", "redis_server", "redis_url"]

pytestmark = pytest.mark.slow

EVENT_QUERY = (
    "SELECT request_id, key_id, termination, tokens_exact, completion_tokens FROM usage_events"
)


@dataclass
class Sent:
    """One request of the mixed load and what the client saw."""

    rid: str
    kind: str
    status: int | None = None  # None: the connection broke before any answer


def mixed_body(rid: str, kind: str) -> dict[str, Any]:
    """A request of one kind, its id in the prompt so the mock's record can be matched."""
    mock: dict[str, Any] = {
        "stream": {"chunks": 8, "delay": 0.03},
        "long": {"chunks": 40, "delay": 0.05},
        "json": {"chunks": 6},
        "fail": {"fail_status": 500},
        "die": {"die_after": 3, "delay": 0.01},
        "cancel": {"stall_after": 3},
    }[kind]
    return {"model": "mock-gpt", "stream": kind != "json",
            "messages": [{"role": "user", "content": rid}], "mock": mock}  # fmt: skip


async def one_request(session: aiohttp.ClientSession, url: str, sent: Sent) -> None:
    """Send one request and read it to its end (a cancel reads three events and leaves)."""
    headers = {"X-Request-Id": sent.rid}
    try:
        async with session.post(url, json=mixed_body(sent.rid, sent.kind), headers=headers) as r:
            sent.status = r.status
            parser, seen = EventStreamParser(), 0
            async for chunk in r.content.iter_any():
                seen += len(parser.feed(chunk))
                if sent.kind == "cancel" and seen >= 3:
                    break
    except (TimeoutError, aiohttp.ClientError):
        pass


async def mixed_load(
    url: str, key: str, total: int, *, concurrency: int = 40, done: list[Sent] | None = None
) -> list[Sent]:
    """``total`` requests of every kind, ``concurrency`` at a time; ``done`` fills as they end."""
    kinds = itertools.cycle(["stream", "json", "long", "stream", "fail", "die", "json", "cancel"])
    requests = [Sent(f"req-{n}-{uuid.uuid4().hex[:6]}", next(kinds)) for n in range(total)]
    finished = done if done is not None else []
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Authorization": f"Bearer {key}"}
    # A connection per request: a broken one never takes an unrelated request with it.
    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)

    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as s:

        async def run(sent: Sent) -> None:
            async with gate:
                await one_request(s, url + "/v1/chat/completions", sent)
                finished.append(sent)

        await asyncio.gather(*(run(sent) for sent in requests))
    return requests


async def mock_by_rid(mock: Proc) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(mock.url + "/_mock/requests") as r:
        records = await r.json()
    return {rec["body"]["messages"][0]["content"]: rec for rec in records}


def worker_pids(proc: Proc) -> list[int]:
    """The pids of the workers that said they were ready, newest last."""
    pids = []
    for line in proc.log().splitlines():
        if '"worker ready"' in line:
            pids.append(int(orjson.loads(line)["pid"]))
    return pids


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


def check_ground_truth(
    sent: list[Sent], records: list[Any], mock: dict[str, Any]
) -> dict[str, int]:
    """One record per request that reached the gateway, none for anything else, tokens exact
    where not flagged as estimated; returns counts for the report."""
    kinds = {s.rid: s.kind for s in sent}
    by_rid: dict[str, list[Any]] = {}
    for record in records:
        by_rid.setdefault(record[0], []).append(record)
    assert all(len(rs) == 1 for rs in by_rid.values()), "duplicate records"
    assert set(by_rid) <= {s.rid for s in sent}, "records of requests nobody sent"
    lost_before_gateway = 0
    for s in sent:
        if s.status is not None or s.rid in mock:
            # Answered, or seen by the upstream: the gateway had it, so it must be recorded.
            assert s.rid in by_rid, f"no record for {s}"
        elif s.rid not in by_rid:
            lost_before_gateway += 1  # reset in a dead worker's accept queue: never begun
    crashes = 0
    for rid, [(_, _, termination, exact, completion)] in by_rid.items():
        upstream = mock.get(rid)
        sent_tokens = upstream["completion_tokens_sent"] if upstream else 0
        # An upstream that resets its connection ("die") can take bytes it wrote with it, so
        # there the gateway counts what arrived, at most what was sent.
        if exact and kinds[rid] != "die":
            assert completion == sent_tokens, (rid, completion, upstream)
        else:
            assert completion <= sent_tokens, (rid, completion, upstream)
        crashes += termination == "worker_crash"
    return {"records": len(by_rid), "crashes": crashes, "never_reached": lost_before_gateway}


def postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its children (the backends), by pid."""
    master = int(Path(server.data, "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    return [master, *children]


@pytest.fixture
def bus_env(
    redis_url: str, redis_prefix: str, postgres_url: str, keyed_env: dict[str, str]
) -> dict[str, str]:
    return {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_DATABASE_URL": postgres_url,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.5",
        "LLM_GATEWAY_STATS__CLAIM_AFTER": "2",
    }


def one_attempt_config(tmp_path: Path, mock_url: str) -> Path:
    config = write_config(tmp_path, mock_url)
    with config.open("a") as extra:  # one upstream request per client request: no retries
        extra.write("routing: {retries: {attempts: 1}}\n")
    return config


async def test_crash_ground_truth_with_the_bus_and_postgres(
    start_gateway,
    mock_upstream: Proc,
    tmp_path: Path,
    bus_env: dict[str, str],
    postgres_server: PostgresServer | None,
    redis_prefix: str,
) -> None:  # type: ignore[no-untyped-def]
    """600 mixed requests over 2 workers; mid-run PostgreSQL freezes, so every consumer holds
    events it read and cannot acknowledge, and one worker (its consumer too) is SIGKILLed.
    Afterwards PostgreSQL holds exactly one record per request, with exact tokens."""
    if postgres_server is None:
        pytest.fail("this test needs the suite's own PostgreSQL (unset DATABASE_URL)")
    _, key = create_key(bus_env)
    proc: Proc = start_gateway("--config", str(one_attempt_config(tmp_path, mock_upstream.url)),
                               env=bus_env, workers=2)  # fmt: skip
    redis = aioredis.Redis.from_url(bus_env["LLM_GATEWAY_REDIS_URL"], decode_responses=True)
    stream = f"{redis_prefix}:usage:events"
    done: list[Sent] = []
    load = asyncio.create_task(mixed_load(proc.url, key, 600, done=done))
    while len(done) < 200:
        await asyncio.sleep(0.05)
    frozen = postgres_pids(postgres_server)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        victim = worker_pids(proc)[0]
        consumer = f"{os.uname().nodename}-{victim}"

        async def victim_holds_events() -> bool:
            consumers = await redis.xinfo_consumers(stream, "store")
            return any(c["name"] == consumer and c["pending"] > 0 for c in consumers)

        await wait_for(victim_holds_events, 10, "the victim's consumer to read events")
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    sent = await load
    wait_for_log(proc, '"worker ready"', 3)
    wait_for_log(proc, "usage left behind by a dead worker")
    mock = await mock_by_rid(mock_upstream)
    url = bus_env["LLM_GATEWAY_DATABASE_URL"]
    reached = {s.rid for s in sent if s.status is not None or s.rid in mock}

    async def all_recorded() -> bool:
        rows = await fetch(url, "SELECT request_id FROM usage_events")
        return reached <= {r[0] for r in rows}

    await wait_for(all_recorded, 30, "every request to be recorded")
    await asyncio.sleep(3)  # a late duplicate or a stray claim would land now
    counts = check_ground_truth(sent, await fetch(url, EVENT_QUERY), mock)
    assert counts["crashes"] > 0  # the victim had requests in flight
    assert counts["never_reached"] <= 40  # at most what the dead worker's queue held

    async def all_acknowledged() -> bool:
        return bool((await redis.xinfo_groups(stream))[0]["pending"] == 0)

    await wait_for(all_acknowledged, 20, "every bus entry to be acknowledged")
    rollup = await fetch(url, "SELECT sum(requests), sum(completion_tokens) FROM usage_daily")
    events = await fetch(url, "SELECT count(*), sum(completion_tokens) FROM usage_events")
    assert tuple(rollup[0]) == tuple(events[0])
    await redis.aclose()


async def test_sqlite_spool_loses_nothing_to_sigkill(
    start_gateway, mock_upstream: Proc, tmp_path: Path, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """Without Redis, 600 mixed requests over 2 workers, one SIGKILLed while it holds buffered
    events and requests in flight: the spool brings both back, one record per request (the
    README's bound for SIGKILL is zero; only a power loss can cost the fsync window)."""
    store = Path(keyed_env["LLM_GATEWAY_STORE__PATH"])
    env = {
        **keyed_env,
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "3",  # events wait in memory when the kill comes
        "LLM_GATEWAY_STATS__FLUSH_EVENTS": "1000",
    }
    _, key = create_key(env)
    proc: Proc = start_gateway("--config", str(one_attempt_config(tmp_path, mock_upstream.url)),
                               env=env, workers=2)  # fmt: skip
    done: list[Sent] = []
    load = asyncio.create_task(mixed_load(proc.url, key, 600, done=done))
    while len(done) < 250:
        await asyncio.sleep(0.05)
    os.kill(worker_pids(proc)[0], signal.SIGKILL)
    sent = await load
    wait_for_log(proc, '"worker ready"', 3)
    wait_for_log(proc, "usage left behind by a dead worker")
    report = next(orjson.loads(line) for line in proc.log().splitlines()
                  if "usage left behind by a dead worker" in line)  # fmt: skip
    assert report["in_flight"] > 0 and report["undelivered"] > 0
    mock = await mock_by_rid(mock_upstream)
    reached = {s.rid for s in sent if s.status is not None or s.rid in mock}

    def rows() -> list[Any]:
        with sqlite3.connect(store) as db:
            return db.execute(EVENT_QUERY).fetchall()

    async def all_recorded() -> bool:
        return reached <= {r[0] for r in rows()}

    await wait_for(all_recorded, 20, "every request to be recorded")
    counts = check_ground_truth(sent, rows(), mock)
    assert counts["crashes"] == report["in_flight"]
    assert counts["never_reached"] <= 40


async def test_postgres_stopped_30_s_under_load_loses_nothing(
    start_gateway,
    mock_upstream: Proc,
    tmp_path: Path,
    bus_env: dict[str, str],
    postgres_server: PostgresServer | None,
    redis_prefix: str,
) -> None:  # type: ignore[no-untyped-def]
    """With PostgreSQL stopped for 30 s requests are still served (known keys from the cache),
    events wait in the bus, and every one is recorded once it is back."""
    if postgres_server is None:
        pytest.fail("this test needs the suite's own PostgreSQL (unset DATABASE_URL)")
    env = {**bus_env, "LLM_GATEWAY_AUTH__CACHE_TTL": "60"}
    _, key = create_key(env)
    proc: Proc = start_gateway("--config", str(one_attempt_config(tmp_path, mock_upstream.url)),
                               env=env, workers=2)  # fmt: skip
    redis = aioredis.Redis.from_url(env["LLM_GATEWAY_REDIS_URL"], decode_responses=True)
    await mixed_load(proc.url, key, 40)  # every worker has seen the key
    postgres_server.stop()
    sent: list[Sent] = []
    started = time.monotonic()
    while time.monotonic() - started < 30:
        sent += await mixed_load(proc.url, key, 40, concurrency=20)
        await asyncio.sleep(0.5)
    waiting = await redis.xlen(f"{redis_prefix}:usage:events")
    postgres_server.start()
    assert all(s.status is not None and s.status != 503 for s in sent)
    assert waiting > 0  # the events were in the bus while the store was away
    url = env["LLM_GATEWAY_DATABASE_URL"]
    rids = {s.rid for s in sent}

    async def all_recorded() -> bool:
        return rids <= {r[0] for r in await fetch(url, "SELECT request_id FROM usage_events")}

    await wait_for(all_recorded, 30, "every request to be recorded")
    counts = check_ground_truth(sent, [r for r in await fetch(url, EVENT_QUERY) if r[0] in rids],
                                await mock_by_rid(mock_upstream))  # fmt: skip
    assert counts["records"] == len(sent) >= 200 and counts["crashes"] == 0
    await redis.aclose()
