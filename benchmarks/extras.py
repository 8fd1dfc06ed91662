"""Gateway-only figures beside issue 11's scenarios: cache hits and the coalescing of identical
requests, measured on the gateway with its features on (the baselines have neither)."""

from __future__ import annotations

import time

import aiohttp
import orjson

from benchmarks import loadgen
from benchmarks.processes import Server
from benchmarks.scenarios import PATH, pct

COALESCED_STREAMS = 200


def _request(server: Server, content: str, **mock: float) -> bytes:
    body = {
        "model": "mock-gpt",
        "stream": True,
        "temperature": 0,  # deterministic: cacheable, and so coalesced
        "messages": [{"role": "user", "content": content}],
        "mock": {"chunks": 16, "unbatched": True, **mock},
    }
    return loadgen.post(PATH, orjson.dumps(body), server.headers)


async def cache_hits(server: Server, seconds: float) -> dict[str, float]:
    """The same deterministic request again and again: after the first, every answer is a hit."""
    request = _request(server, f"cache me {time.time()}")
    await loadgen.one_round(server.port, request, connections=1)  # fills the cache
    r = await loadgen.closed_loop(server.port, request, connections=64, seconds=seconds)
    low = await loadgen.closed_loop(server.port, request, connections=2, seconds=seconds / 2)
    ttfb = [(e.first_event or 0) - e.started for e in low.exchanges]
    return {
        "cache-hit streams/s (16 chunks)": len(r.exchanges) / r.elapsed,
        "cache-hit TTFB p50 ms (2 connections)": pct(ttfb, 0.5) * 1e3,
        "errors": r.errors + low.errors,
    }


async def coalescing(server: Server, seconds: float) -> dict[str, float]:
    """200 identical paced streams at once (a new prompt, so no cache hit): upstream calls made."""
    assert server.upstream is not None
    request = _request(server, f"coalesce {time.time()}", delay=0.02)
    before = await _upstream_requests(server.upstream)
    exchanges = await loadgen.one_round(server.port, request, connections=COALESCED_STREAMS)
    ttfb = [(e.first_event or 0) - e.started for e in exchanges if e.first_event]
    return {
        f"upstream calls for {COALESCED_STREAMS} identical streams": (
            await _upstream_requests(server.upstream) - before
        ),
        f"identical streams TTFB p50 ms ({COALESCED_STREAMS})": pct(ttfb, 0.5) * 1e3,
        "errors": sum(1 for e in exchanges if e.status != 200 or e.events < 19),
    }


async def _upstream_requests(mock: Server) -> float:
    url = f"http://127.0.0.1:{mock.port}/_mock/stats"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return float((await response.json())["requests"])


def table(results: dict[str, dict[str, float]]) -> str:
    """The extras as a markdown table."""
    lines = ["| gateway on: extra | value |", "|---|---|"]
    for scenario, figures in results.items():
        lines.extend(f"| {scenario}: {name} | {value:.2f} |" for name, value in figures.items())
    return "\n".join(lines)
