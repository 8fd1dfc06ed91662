"""Run every scenario against the gateway and directly against the mock; print one table.

Layout on a two-core machine: the gateway (supervisor and its one worker) is pinned to CPU 0 with
its mock and the load client on CPU 1; for the direct column a second mock is pinned to CPU 0.
So in each column the system under test has a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from benchmarks import failover, loadgen
from benchmarks.processes import Server, start_gateway, start_mock

PATH = "/v1/chat/completions"
RESULTS = Path("var/bench.json")


def chat(
    chunks: int, *, stream: bool = True, temperature: float | None = None, **mock: Any
) -> bytes:
    body: dict[str, Any] = {
        "model": "mock-gpt",
        "stream": stream,
        "messages": [{"role": "user", "content": "benchmark me"}],
        "mock": {"chunks": chunks, **mock},
    }
    if temperature is not None:
        body["temperature"] = temperature  # 0: cacheable
    return loadgen.post(PATH, orjson.dumps(body))


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Scenario = Callable[[int, Server], Coroutine[Any, Any, dict[str, float]]]


async def non_streaming(port: int, server: Server) -> dict[str, float]:
    r = await loadgen.closed_loop(port, chat(16, stream=False), connections=64, seconds=4)
    latencies = [(e.ended or 0) - e.started for e in r.exchanges]
    return {
        "non-streaming req/s": len(r.exchanges) / r.elapsed,
        "non-streaming p50 ms": pct(latencies, 0.5) * 1e3,
        "non-streaming p99 ms": pct(latencies, 0.99) * 1e3,
        "errors": r.errors,
    }


async def stream_throughput(port: int, server: Server) -> dict[str, float]:
    r = await loadgen.closed_loop(port, chat(2000), connections=16, seconds=4)
    events = sum(e.events for e in r.exchanges)
    return {"streaming events/s": events / r.elapsed, "errors": r.errors}


async def short_streams(port: int, server: Server) -> dict[str, float]:
    r = await loadgen.closed_loop(port, chat(16), connections=64, seconds=4)
    return {"streams/s (16 chunks)": len(r.exchanges) / r.elapsed, "errors": r.errors}


async def first_byte(port: int, server: Server) -> dict[str, float]:
    r = await loadgen.closed_loop(port, chat(16), connections=2, seconds=3)
    ttfb = [(e.first_event or 0) - e.started for e in r.exchanges]
    return {
        "TTFB p50 ms (low load)": pct(ttfb, 0.5) * 1e3,
        "TTFB p99 ms (low load)": pct(ttfb, 0.99) * 1e3,
        "errors": r.errors,
    }


PACED_STREAMS = 1000


async def paced(port: int, server: Server) -> dict[str, float]:
    exchanges = await loadgen.one_round(
        port, chat(50, delay=0.02), connections=PACED_STREAMS, record_events=True
    )
    ttfb = [(e.first_event or 0) - e.started for e in exchanges if e.first_event]
    jitter = []
    for e in exchanges:
        times = e.event_times or []
        jitter.extend(abs((b - a) - 0.02) for a, b in itertools.pairwise(times))
    return {
        f"paced TTFB p50 ms ({PACED_STREAMS} streams)": pct(ttfb, 0.5) * 1e3,
        f"paced TTFB p99 ms ({PACED_STREAMS} streams)": pct(ttfb, 0.99) * 1e3,
        "paced jitter p50 ms": pct(jitter, 0.5) * 1e3,
        "paced jitter p99 ms": pct(jitter, 0.99) * 1e3,
        "errors": sum(1 for e in exchanges if e.status != 200 or e.events < 53),
    }


async def cache_hits(port: int, server: Server) -> dict[str, float]:
    """The same deterministic request again and again: after the first, every answer is a hit."""
    request = chat(16, temperature=0)
    await loadgen.one_round(port, request, connections=1)  # fills the cache
    r = await loadgen.closed_loop(port, request, connections=64, seconds=4)
    low = await loadgen.closed_loop(port, request, connections=2, seconds=2)
    ttfb = [(e.first_event or 0) - e.started for e in low.exchanges]
    return {
        "cache-hit streams/s (16 chunks)": len(r.exchanges) / r.elapsed,
        "cache-hit TTFB p50 ms (low load)": pct(ttfb, 0.5) * 1e3,
        "errors": r.errors + low.errors,
    }


COALESCED_STREAMS = 200


async def coalescing(port: int, server: Server) -> dict[str, float]:
    """200 identical paced streams at once (a new prompt, so no cache hit): upstream calls made."""
    body = {
        "model": "mock-gpt",
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"coalesce {time.time()}"}],
        "mock": {"chunks": 50, "delay": 0.02},
    }
    before = await upstream_requests(server)
    exchanges = await loadgen.one_round(
        port, loadgen.post(PATH, orjson.dumps(body)), connections=COALESCED_STREAMS
    )
    ttfb = [(e.first_event or 0) - e.started for e in exchanges if e.first_event]
    return {
        f"upstream calls for {COALESCED_STREAMS} identical streams": (
            await upstream_requests(server) - before
        ),
        f"identical streams TTFB p50 ms ({COALESCED_STREAMS})": pct(ttfb, 0.5) * 1e3,
        "errors": sum(1 for e in exchanges if e.status != 200 or e.events < 53),
    }


async def upstream_requests(server: Server) -> float:
    """Requests the upstream of a gateway (or the mock itself) has received."""
    target = server.upstream or server
    url = f"http://127.0.0.1:{target.port}/_mock/stats"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return float((await response.json())["requests"])


IDLE_STREAMS = 2000


async def idle_memory(port: int, server: Server) -> dict[str, float]:
    warm = await loadgen.one_round(port, chat(4), connections=200)
    assert all(e.status == 200 for e in warm)
    await asyncio.sleep(0.5)
    before = server.rss_kib()
    conns = [await loadgen.connect(port) for _ in range(IDLE_STREAMS)]
    exchanges = [c.send(chat(8, stall_after=1)) for c in conns]
    deadline = time.monotonic() + 30
    while any(e.first_event is None for e in exchanges) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    after = server.rss_kib()
    opened = sum(1 for e in exchanges if e.first_event is not None)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(1.0)
    return {
        "RSS KiB per idle open stream": (after - before) / max(opened, 1),
        "errors": IDLE_STREAMS - opened,
    }


SCENARIOS: list[Scenario] = [
    non_streaming,
    stream_throughput,
    short_streams,
    first_byte,
    paced,
    idle_memory,
    cache_hits,
    coalescing,
]
TARGETS: dict[str, tuple[str, float]] = {
    "non-streaming req/s": (">=", 3000),
    "streaming events/s": (">=", 150_000),
    "added TTFB p50 ms (low load)": ("<=", 1.0),
    "RSS KiB per idle open stream": ("<=", 20),
}


def table(gateway: dict[str, float], direct: dict[str, float]) -> str:
    rows = [f"{'figure':44} {'gateway':>12} {'direct':>12} {'ratio':>7}  target"]
    for key, value in gateway.items():
        if key == "errors":
            continue
        base = direct.get(key, float("nan"))
        ratio = value / base if base else float("nan")
        rows.append(f"{key:44} {value:12.2f} {base:12.2f} {ratio:7.2f}  {_verdict(key, value)}")
        if key.startswith("TTFB p50"):
            added = value - base
            label = "added TTFB p50 ms (low load)"
            rows.append(f"{label:44} {added:12.3f} {'':12} {'':7}  {_verdict(label, added)}")
    rows.append(f"{'errors':44} {gateway.get('errors', 0):12.0f} {direct.get('errors', 0):12.0f}")
    for key in ("non-streaming req/s", "streaming events/s", "streams/s (16 chunks)"):
        if key in gateway and direct.get(key, 0) < gateway[key] * 1.2:
            rows.append(f"warning: direct {key} is within 20% of the gateway: the client may limit")
    return "\n".join(rows)


def _verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, limit = TARGETS[key]
    ok = value >= limit if op == ">=" else value <= limit
    return f"{op} {limit:g}: {'PASS' if ok else 'MISS'}"


async def measure(port: int, server: Server, only: set[str]) -> dict[str, float]:
    results: dict[str, float] = {}
    for scenario in SCENARIOS:
        if only and scenario.__name__ not in only:
            continue
        figures = await scenario(port, server)
        results["errors"] = results.get("errors", 0) + figures.pop("errors", 0)
        results.update(figures)
    return results


def core(only: set[str], workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The main scenarios, against the gateway and directly against a mock."""
    servers: list[Server] = []
    try:
        upstream = start_mock("mock-behind-gateway", cpu=1)
        servers.append(upstream)
        direct_mock = start_mock("mock-direct", cpu=0)
        servers.append(direct_mock)
        gateway = start_gateway(cpu=0, mock_port=upstream.port, workdir=workdir)
        gateway.upstream = upstream
        servers.append(gateway)
        gateway_figures = uvloop.run(measure(gateway.port, gateway, only))
        direct_figures = uvloop.run(measure(direct_mock.port, direct_mock, only))
    finally:
        for server in servers:
            server.stop()
    return gateway_figures, direct_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", nargs="*", default=[], help="scenario names to run (failover: that one alone)"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    only = set(args.only)
    results: dict[str, Any] = {}
    if not only or only - {"failover"}:
        results["gateway"], results["direct"] = core(only - {"failover"}, workdir)
        print(table(results["gateway"], results["direct"]))
    if not only or "failover" in only:
        results["failover"] = uvloop.run(failover.scenario(workdir))
        print(failover.table(results["failover"]))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"(results also in {RESULTS})")


if __name__ == "__main__":
    main()
