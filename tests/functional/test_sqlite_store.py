"""The SQLite store under a write lock held by another process: admission never waits for it."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import Proc, create_key
from tests.functional.client import chat_body

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


async def test_key_lookups_do_not_wait_behind_a_blocked_flush(
    start_gateway, keyed_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """While another process holds the write lock for 4 s, flushes wait for it, yet requests
    whose key must be looked up again keep answering fast; the waiting events land afterwards."""
    store = Path(keyed_env["LLM_GATEWAY_STORE__PATH"])
    env = {
        **keyed_env,
        "LLM_GATEWAY_AUTH__CACHE_TTL": "0.05",  # nearly every request looks its key up
        "LLM_GATEWAY_STATS__FLUSH_INTERVAL": "0.2",
    }
    _, key = create_key(env)

    def recorded() -> int:
        with sqlite3.connect(store) as db:
            return int(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])

    proc: Proc = start_gateway(env=env)
    url = proc.url + "/v1/chat/completions"
    sent = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:

        async def ask() -> float:
            nonlocal sent
            started = time.monotonic()
            async with session.post(url, json=chat_body(stream=False)) as response:
                assert response.status == 200
                await response.read()
            sent += 1
            return time.monotonic() - started

        for _ in range(5):
            await ask()
        while recorded() < 5:
            await asyncio.sleep(0.05)
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(store), "4"],
                                  stdout=subprocess.PIPE)  # fmt: skip
        assert locker.stdout is not None
        assert (await asyncio.to_thread(locker.stdout.readline)).strip() == b"locked"
        locked_at = time.monotonic()
        while time.monotonic() - locked_at < 3:
            latencies.append(await ask())
            await asyncio.sleep(0.05)
        during_lock = recorded()  # readers never wait in WAL mode; the flushes did
        await asyncio.to_thread(locker.wait, 10)
        locker.stdout.close()
    assert len(latencies) > 10
    assert max(latencies) < 0.5, f"slowest request {max(latencies):.2f} s"
    assert during_lock == 5

    deadline = time.monotonic() + 10
    while recorded() < sent:
        assert time.monotonic() < deadline, f"{recorded()} of {sent} recorded"
        await asyncio.sleep(0.2)
