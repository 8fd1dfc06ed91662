"""Hedged streams (issue 15): what hedging buys in time to first event, and what it costs.

Two mock deployments of one model: ``a``, preferred by weight, whose first event takes 2 s for
10% of its requests (every 10th, so every run slows the same requests), and ``b``, always
healthy, which gets (almost) nothing but hedges. The gateway, one worker, pinned to CPU 0, is
started once per variant: hedging off, ``hedge: {after: 0.3}`` and ``hedge: {after: p95}``. Each
variant gets a warm-up (connection pools, and the 20 samples a p95 needs), then a staggered
closed loop of paced streams, each event its own write as real upstreams send them.

Figures: time to first event as the client saw it; the gateway's CPU per request; hedges sent per
request and how they ended (``llm_gateway_hedges_total``); the prompt tokens of the cancelled
racers (``llm_gateway_hedge_prompt_tokens_total``, the gateway's estimate), also as a share of all
prompt tokens; and the extra upstream requests the two mocks counted, beyond one per request.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from benchmarks import loadgen
from benchmarks.processes import Server, start_gateway, start_mock
from benchmarks.scenarios import PATH, Meter, pct
from benchmarks.targets import CLIENT_CPU, SUT_CPU

SLOW_RATIO, SLOW_DELAY = 0.1, 2.0
CONNECTIONS = 64
CHUNKS, DELAY = 16, 0.02  # role + 16 pieces + finish + usage + [DONE]: 20 events, 0.38 s
EXPECTED_EVENTS = CHUNKS + 4
# 200 words of 3 letters: the mock counts 200 prompt tokens, the gateway's estimate for a lost
# racer (4 characters a token) about as many, so the two kinds of token figure compare.
PROMPT = " ".join(["say"] * 200)
WARM_UP = 1.5  # seconds
VARIANTS = {
    "hedging off": None,
    "after 0.3 s": "{after: 0.3, max_extra: 1}",
    "after p95": "{after: p95, max_extra: 1}",
}
COLUMNS = (
    "streams/s", "TTFE p50 ms", "TTFE p95 ms", "TTFE p99 ms", "TTFE mean ms", "CPU us/req",
    "hedges/req", "won", "lost", "no budget", "hedge prompt tokens/req",
    "hedge prompt tokens %", "extra upstream req/req", "upstream cancelled", "errors",
)  # fmt: skip
REQUEST = loadgen.post(
    PATH,
    orjson.dumps(
        {
            "model": "mock-gpt",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}],
            "mock": {"chunks": CHUNKS, "delay": DELAY, "unbatched": True},
        }
    ),
)


def config(a: Server, b: Server, hedge: str | None) -> str:
    """The gateway as a pass-through over ``a`` (preferred) and ``b``, hedged as given."""
    route = f", hedge: {hedge}" if hedge else ""
    return f"""
server: {{workers: 1, access_log: false, log_level: warning, backlog: 4096}}
auth: {{mode: "off"}}
cache: {{mode: "off"}}
deployments:
  a: {{base_url: "http://127.0.0.1:{a.port}/v1", models: [mock-gpt], weight: 1000,
      max_connections: 20000}}
  b: {{base_url: "http://127.0.0.1:{b.port}/v1", models: [mock-gpt], weight: 0.001,
      max_connections: 20000}}
models:
  mock-gpt: {{deployments: [a, b]{route}}}
"""


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.read()


def metric(text: str, name: str, label: str = "") -> float:
    """The sum of a Prometheus counter's samples whose labels contain ``label``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and label in line.split(" ")[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def snapshot(gateway: Server, a: Server, b: Server) -> dict[str, float]:
    """The counters a variant's figures are differences of."""
    async with aiohttp.ClientSession() as session:
        text = (await _get(session, f"http://127.0.0.1:{gateway.port}/metrics")).decode()
        stats = [
            orjson.loads(await _get(session, f"http://127.0.0.1:{m.port}/_mock/stats"))
            for m in (a, b)
        ]
    hedges = "llm_gateway_hedges_total"
    return {
        "won": metric(text, hedges, 'outcome="won"'),
        "lost": metric(text, hedges, 'outcome="lost"'),
        "no budget": metric(text, hedges, 'outcome="no_budget"'),
        "hedge tokens": metric(text, "llm_gateway_hedge_prompt_tokens_total"),
        "prompt tokens": metric(text, "llm_gateway_prompt_tokens_total"),
        "upstream requests": sum(s["requests"] for s in stats),
        "upstream cancelled": sum(s["disconnected"] for s in stats),
    }


async def variant(gateway: Server, a: Server, b: Server, seconds: float) -> dict[str, float]:
    """Warm up, then one staggered loop of paced streams; the variant's figures."""
    ramp = (EXPECTED_EVENTS - 1) * DELAY
    await loadgen.staggered_loop(
        gateway.port, REQUEST, connections=CONNECTIONS, ramp=ramp, seconds=WARM_UP
    )
    before = await snapshot(gateway, a, b)
    meter = Meter(gateway)
    r = await loadgen.staggered_loop(
        gateway.port, REQUEST, connections=CONNECTIONS, ramp=ramp, seconds=seconds
    )
    cpu, cores = meter.stop()
    after = await snapshot(gateway, a, b)
    delta = {name: after[name] - before[name] for name in after}
    whole = [e for e in r.exchanges if e.status == 200 and e.events == EXPECTED_EVENTS]
    ttfe = [(e.first_event or 0) - e.started for e in whole]
    requests = max(len(r.exchanges), 1)
    return {
        "streams/s": len(r.exchanges) / r.elapsed,
        "TTFE p50 ms": pct(ttfe, 0.5) * 1e3,
        "TTFE p95 ms": pct(ttfe, 0.95) * 1e3,
        "TTFE p99 ms": pct(ttfe, 0.99) * 1e3,
        "TTFE mean ms": sum(ttfe) / max(len(ttfe), 1) * 1e3,
        "CPU us/req": cpu / requests * 1e6,
        "hedges/req": (delta["won"] + delta["lost"]) / requests,
        "won": delta["won"],
        "lost": delta["lost"],
        "no budget": delta["no budget"],
        "hedge prompt tokens/req": delta["hedge tokens"] / requests,
        "hedge prompt tokens %": delta["hedge tokens"] / max(delta["prompt tokens"], 1) * 100,
        "extra upstream req/req": (delta["upstream requests"] - len(r.exchanges)) / requests,
        "upstream cancelled": delta["upstream cancelled"],
        "requests": len(r.exchanges),
        "errors": r.errors + len(r.exchanges) - len(whole),
        **cores,
    }


async def scenario(workdir: Path, seconds: float = 6.0) -> dict[str, dict[str, float]]:
    """Every variant against the same two mocks; variant -> figures."""
    slow = ["--slow-first-ratio", str(SLOW_RATIO), "--slow-first-delay", str(SLOW_DELAY)]
    a = start_mock("mock-hedge-a", CLIENT_CPU, workdir, *slow)
    b = start_mock("mock-hedge-b", CLIENT_CPU, workdir)
    servers = [a, b]
    results: dict[str, dict[str, float]] = {}
    try:
        for number, (name, hedge) in enumerate(VARIANTS.items()):
            gateway = start_gateway(f"gw-hedge-{number}", SUT_CPU, config(a, b, hedge), workdir)
            servers.append(gateway)
            try:
                results[name] = await variant(gateway, a, b, seconds)
            finally:
                gateway.stop()
    finally:
        for server in servers:
            server.stop()
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """The variants as a markdown table, one row each."""
    title = (
        f"hedging ({CONNECTIONS} paced streams; deployment a: first event after "
        f"{SLOW_DELAY:g} s for {SLOW_RATIO:.0%} of requests)"
    )
    rows = [f"| {title} | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, figures in results.items():
        cells = (_cell(figures.get(column, float("nan"))) for column in COLUMNS)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows + _warnings(results))


def _warnings(results: dict[str, dict[str, float]]) -> list[str]:
    """What makes a variant's figures say less than they seem to (as run.warnings says)."""
    found = []
    for name, figures in results.items():
        if figures.get(f"CPU {CLIENT_CPU} busy %", 0) > 90:
            found.append(f"{name}: CPU {CLIENT_CPU} (load client, mocks) was saturated")
        if (share := figures.get(f"others on CPU {SUT_CPU} %", 0)) > 15:
            found.append(f"{name}: other processes took {share:.0f}% of CPU {SUT_CPU}")
    return ["", *(f"- warning: hedging, {w}" for w in found)] if found else []


def _cell(value: float) -> str:
    if value != value:  # nan
        return "-"
    if value == int(value) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
