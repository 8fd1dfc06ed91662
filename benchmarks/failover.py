"""Retries and failover under load: one gateway worker over two mock deployments, a and b.

Phases, each a closed loop of 64 connections streaming 16-chunk answers:
  healthy          both deployments answer
  a down           a answers 503 to everything: retried on b, then skipped once its breaker opens
  a down, no eject a as above with a breaker that never opens: every request to a is retried
  a recovered      a answers again: probed after the recovery time and readmitted
  all down         both fail and both breakers are open: the fail-fast 503 path (also measured
                   on one connection, without a queue of other requests in front)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import loadgen
from benchmarks.processes import Server, start_gateway, start_mock

PATH = "/v1/chat/completions"
SECONDS = 3.0
REQUEST = loadgen.post(
    PATH,
    orjson.dumps(
        {
            "model": "mock-gpt",
            "stream": True,
            "messages": [{"role": "user", "content": "benchmark me"}],
            "mock": {"chunks": 16},
        }
    ),
)


def config(a: Server, b: Server, failures: int) -> str:
    return f"""
server: {{access_log: false, log_level: warning, backlog: 4096}}
routing:
  retries: {{attempts: 3}}
  breaker: {{failures: {failures}, recovery: 2}}
deployments:
  a: {{base_url: "http://127.0.0.1:{a.port}/v1", models: [mock-gpt], max_connections: 20000}}
  b: {{base_url: "http://127.0.0.1:{b.port}/v1", models: [mock-gpt], max_connections: 20000}}
models:
  mock-gpt: {{deployments: [a, b]}}
"""


async def behave(mock: Server, spec: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{mock.port}/_mock/behaviour"
    async with aiohttp.ClientSession() as session, session.post(url, json=spec) as response:
        response.raise_for_status()


async def received(mock: Server) -> int:
    url = f"http://127.0.0.1:{mock.port}/_mock/stats"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return int((await response.json())["requests"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def phase(port: int, a: Server, b: Server, connections: int = 64) -> dict[str, float]:
    before = await received(a), await received(b)
    r = await loadgen.closed_loop(port, REQUEST, connections=connections, seconds=SECONDS)
    ttfb = [(e.first_event or e.ended or 0) - e.started for e in r.exchanges]
    ok = sum(1 for e in r.exchanges if e.status == 200)
    after = await received(a), await received(b)
    return {
        "answers/s": len(r.exchanges) / r.elapsed,
        "ok": ok,
        "failed": len(r.exchanges) - ok + (r.errors - (len(r.exchanges) - ok)),
        "TTFB p50 ms": pct(ttfb, 0.5) * 1e3,
        "TTFB p99 ms": pct(ttfb, 0.99) * 1e3,
        "sent to a": after[0] - before[0],
        "sent to b": after[1] - before[1],
    }


async def scenario(workdir: Path) -> dict[str, dict[str, float]]:
    a, b = start_mock("mock-a", 1, workdir), start_mock("mock-b", 1, workdir)
    servers = [a, b]
    results: dict[str, dict[str, float]] = {}
    try:
        gateway = start_gateway("gw-failover", 0, config(a, b, 5), workdir)
        servers.append(gateway)
        results["healthy"] = await phase(gateway.port, a, b)
        await behave(a, {"defaults": {"fail_status": 503}})
        results["a down"] = await phase(gateway.port, a, b)
        await behave(a, {})
        await asyncio.sleep(2.2)
        results["a recovered"] = await phase(gateway.port, a, b)
        await behave(a, {"defaults": {"fail_status": 503}})
        await behave(b, {"defaults": {"fail_status": 503}})
        await phase(gateway.port, a, b)  # opens both breakers
        results["all down (fail fast)"] = await phase(gateway.port, a, b)
        # The 10 ms is per request: measured without a queue in front of it too.
        results["all down, 1 connection"] = await phase(gateway.port, a, b, connections=1)
        gateway.stop()
        await behave(b, {})
        no_eject = config(a, b, 10**9)
        gateway = start_gateway("gw-no-eject", 0, no_eject, workdir)
        servers.append(gateway)
        results["a down, no eject"] = await phase(gateway.port, a, b)
    finally:
        for server in servers:
            server.stop()
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """The failover phases as a markdown table."""
    columns = ["answers/s", "ok", "failed", "TTFB p50 ms", "TTFB p99 ms", "sent to a", "sent to b"]
    rows = ["| failover phase | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, figures in results.items():
        rows.append(f"| {name} | " + " | ".join(f"{figures[c]:.1f}" for c in columns) + " |")
    return "\n".join(rows)
