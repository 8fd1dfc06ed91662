"""The scenarios of issue 11, each run the same way against every target (mock, relay, gateways).

A scenario returns its figures (a flat name -> number mapping, ``errors`` among them) and, for
the plot, latency samples. CPU is the target's own processes' utime + stime over the load, read
from /proc before and after, divided by the requests or events the client received.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks import loadgen, report
from benchmarks.idle import Holders
from benchmarks.processes import TICKS, Server, core_ticks
from benchmarks.targets import SUT_CPU

PATH = "/v1/chat/completions"
PACED_DELAY = 0.02  # 50 events/s
PACED_CHUNKS = 97  # role + 97 pieces + finish + usage + [DONE] = 101 events, 100 gaps
BURST_CHUNKS = 197  # role + 197 pieces + finish + [DONE] = 200 events


@dataclass(frozen=True)
class Scale:
    """Sizes and durations; ``--quick`` shrinks them for smoke runs."""

    seconds: float = 4.0
    paced_seconds: float = 6.0
    paced: tuple[int, int] = (500, 1000)
    idle: int = 8000
    hedge_seconds: float = 6.0  # per hedging variant (three of them)

    @staticmethod
    def quick() -> Scale:
        return Scale(seconds=1.5, paced_seconds=2.0, paced=(100, 200), idle=1000, hedge_seconds=3.0)


@dataclass
class Outcome:
    """What one scenario measured on one target."""

    figures: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)


class Meter:
    """The target's CPU time over one load, and how busy each core was meanwhile (everyone's
    processes: what else ran on the target's core is the run's noise)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._cpu = server.cpu_seconds()
        self._cores = core_ticks()

    def stop(self) -> tuple[float, dict[str, float]]:
        """The target's CPU seconds, and the cores' figures."""
        cpu = self._server.cpu_seconds() - self._cpu
        now = core_ticks()
        figures = {}
        for core, (busy, total) in now.items():
            busy0, total0 = self._cores.get(core, (0, 0))
            figures[f"CPU {core} busy %"] = (busy - busy0) / max(total - total0, 1) * 100
            if core == SUT_CPU:  # the target's own core: what others took of it
                seconds = (total - total0) / TICKS
                share = figures[f"CPU {core} busy %"] - cpu / max(seconds, 1e-9) * 100
                figures[f"others on CPU {core} %"] = share
        return cpu, figures


def chat(server: Server, chunks: int, *, stream: bool = True, **mock: Any) -> bytes:
    """A chat completion request whose answer the mock shapes (``mock`` overrides)."""
    body: dict[str, Any] = {
        "model": "mock-gpt",
        "stream": stream,
        "messages": [{"role": "user", "content": "benchmark me"}],
        "mock": {"chunks": chunks, "unbatched": True, **mock},
    }
    if stream and mock.get("delay"):
        body["stream_options"] = {"include_usage": True}  # the upstream sends it either way
    return loadgen.post(PATH, orjson.dumps(body), server.headers)


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def json_completions(server: Server, scale: Scale) -> Outcome:
    """Non-streaming chat completions, a closed loop of 50 connections."""
    meter = Meter(server)
    r = await loadgen.closed_loop(
        server.port, chat(server, 16, stream=False), connections=50, seconds=scale.seconds
    )
    cpu, cores = meter.stop()
    latencies = [(e.ended or 0) - e.started for e in r.exchanges]
    return Outcome(
        {
            "req/s": len(r.exchanges) / r.elapsed,
            "CPU us/req": cpu / max(len(r.exchanges), 1) * 1e6,
            "latency p50 ms": pct(latencies, 0.5) * 1e3,
            "latency p99 ms": pct(latencies, 0.99) * 1e3,
            "errors": r.errors,
            **cores,
        }
    )


async def burst_streams(server: Server, scale: Scale) -> Outcome:
    """Unpaced 200-event streams (each event its own chunk), a closed loop of 16 connections."""
    meter = Meter(server)
    r = await loadgen.closed_loop(
        server.port, chat(server, BURST_CHUNKS), connections=16, seconds=scale.seconds
    )
    cpu, cores = meter.stop()
    events = sum(e.events for e in r.exchanges)
    short = sum(1 for e in r.exchanges if e.status == 200 and e.events != BURST_CHUNKS + 3)
    return Outcome(
        {
            "events/s": events / r.elapsed,
            "CPU us/event": cpu / max(events, 1) * 1e6,
            "errors": r.errors + short,
            **cores,
        }
    )


async def paced_streams(server: Server, streams: int, scale: Scale) -> Outcome:
    """``streams`` streams at 50 events/s open at once, started evenly over one stream's length."""
    expected = PACED_CHUNKS + 4
    ideal = (expected - 1) * PACED_DELAY
    meter = Meter(server)
    r = await loadgen.staggered_loop(
        server.port,
        chat(server, PACED_CHUNKS, delay=PACED_DELAY),
        connections=streams,
        ramp=ideal,
        seconds=scale.paced_seconds,
    )
    cpu, cores = meter.stop()
    events = sum(e.events for e in r.exchanges)
    bad = sum(1 for e in r.exchanges if e.status != 200 or e.events != expected)
    # Latency figures from the steady state only (streams started after the ramp), and from
    # whole streams only: a refused one (a fast 503) would make the rest look quicker.
    steady_from = min((e.started for e in r.exchanges), default=0.0) + ideal
    steady = [
        e
        for e in r.exchanges
        if e.started >= steady_from and e.status == 200 and e.events == expected
    ]
    ttfb = [(e.first_event or 0) - e.started for e in steady]
    gaps = [b - a for e in steady for a, b in itertools.pairwise(e.event_times or [])]
    durations = [(e.ended or 0) - e.started for e in steady if e.ended]
    return Outcome(
        {
            "TTFB p50 ms": pct(ttfb, 0.5) * 1e3,
            "TTFB p99 ms": pct(ttfb, 0.99) * 1e3,
            "gap p50 ms": pct(gaps, 0.5) * 1e3,
            "gap p99 ms": pct(gaps, 0.99) * 1e3,
            "gap p99.9 ms": pct(gaps, 0.999) * 1e3,
            "stream time p50 / ideal": pct(durations, 0.5) / ideal,
            "events/s": events / r.elapsed,
            "CPU us/event": cpu / max(events, 1) * 1e6,
            "errors": r.errors + bad,
            **cores,
        },
        {"TTFB ms": [t * 1e3 for t in ttfb], "gap ms": [g * 1e3 for g in gaps]},
    )


async def idle_streams(server: Server, streams: int) -> Outcome:
    """``streams`` open streams that got their first event and then nothing: RSS per stream,
    and the CPU it took to open them and, once the clients hung up, to end them."""
    warm = await loadgen.one_round(server.port, chat(server, 4), connections=100)
    warm_errors = sum(1 for e in warm if e.status != 200)
    await settled(server)
    before, cpu = server.rss_kib(), server.cpu_seconds()
    holders = Holders(server.port, chat(server, 8, stall_after=1), streams)
    try:
        opened, shed = await holders.opened()
        await asyncio.sleep(1.0)
        after = server.rss_kib()
    finally:
        holders.close()
    quiet = await settled(server)
    cpu = server.cpu_seconds() - cpu
    return Outcome(
        {
            "open streams": opened,
            "RSS KiB/stream": (after - before) / max(opened, 1),
            "CPU us/stream (open + end)": cpu / max(opened, 1) * 1e6,
            "seconds to settle after hang-up": quiet,
            report.SHED: shed,
            "errors": warm_errors + streams - opened,
        }
    )


async def settled(server: Server, *, busy: float = 0.05, timeout: float = 60.0) -> float:
    """Wait until the target uses under ``busy`` of a CPU (it finished what the last load left
    it to do); the seconds that took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    last = server.cpu_seconds()
    while loop.time() - began < timeout:
        await asyncio.sleep(0.5)
        now = server.cpu_seconds()
        if now - last < busy * 0.5:
            break
        last = now
    return loop.time() - began
