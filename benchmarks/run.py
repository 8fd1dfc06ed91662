"""`make bench`: issue 11's scenarios against the gateway and its baselines, as real processes.

Each scenario runs against every target in turn (see targets.py): the mock answering directly,
the minimal aiohttp relay, the gateway with its features off and on. Each system under test has
CPU 0 to itself; its upstream mock, this load client and the idle-stream holders share CPU 1.
Everything runs in a temporary directory with a store and config of its own; only the outputs
are written here: var/bench.json, var/bench.md and var/bench.png.

    python -m benchmarks.run [--quick]
                             [--only json burst paced500 paced1000 idle extras failover hedging]
                             [--targets mock relay before off on] [--before REF]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

from benchmarks import extras, failover, hedging, report, scenarios
from benchmarks.processes import Server
from benchmarks.scenarios import Outcome, Scale
from benchmarks.targets import CLIENT_CPU, SUT_CPU, TARGETS, started

OUTPUT = Path("var")
CORE = ("json", "burst", "paced500", "paced1000", "idle")
ALL = (*CORE, "extras", "failover", "hedging")
BEGAN = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the run began."""
    print(f"[{time.monotonic() - BEGAN:6.1f} s] {message}", file=sys.stderr, flush=True)


def core_scenarios(scale: Scale) -> dict[str, tuple[str, Callable[[Server], Awaitable[Outcome]]]]:
    """name -> (title, what to run against one target)."""
    few, many = scale.paced
    return {
        "json": ("JSON, 50 connections", lambda s: scenarios.json_completions(s, scale)),
        "burst": ("burst streams of 200 events", lambda s: scenarios.burst_streams(s, scale)),
        "paced500": (f"{few} paced streams", lambda s: scenarios.paced_streams(s, few, scale)),
        "paced1000": (f"{many} paced streams", lambda s: scenarios.paced_streams(s, many, scale)),
        "idle": (f"{scale.idle} idle streams", lambda s: scenarios.idle_streams(s, scale.idle)),
    }  # fmt: skip


async def measure(
    only: list[str], names: tuple[str, ...], scale: Scale, workdir: Path, before: str | None
) -> dict[str, Any]:
    """Run the chosen scenarios; the document that becomes var/bench.json."""
    table = core_scenarios(scale)
    data: dict[str, Any] = {"results": {}, "cdf": {}, "titles": {}, "extras": {}}
    wanted = [name for name in CORE if name in only]
    if wanted or "extras" in only:
        progress(f"starting {', '.join(names)}")
        with started(names if wanted else ("on",), workdir, before) as systems:
            for scenario in wanted:
                title, run = table[scenario]
                data["titles"][scenario] = title
                for target, server in systems.items():
                    await scenarios.settled(server)  # the last load's tail is not measured
                    progress(f"{title}: {target}")
                    outcome = await run(server)
                    data["results"].setdefault(scenario, {})[target] = outcome.figures
                    if outcome.samples:
                        curves = {k: report.cdf(v) for k, v in outcome.samples.items()}
                        data["cdf"].setdefault(scenario, {})[target] = curves
            if "extras" in only and "on" in systems:
                progress("extras: cache hits, coalescing")
                data["extras"]["cache"] = await extras.cache_hits(systems["on"], scale.seconds)
                data["extras"]["coalescing"] = await extras.coalescing(systems["on"], scale.seconds)
    if "failover" in only:
        progress("failover")
        data["failover"] = await failover.scenario(workdir)
    if "hedging" in only:
        progress("hedging: off, after 0.3 s, after p95")
        data["hedging"] = await hedging.scenario(workdir, scale.hedge_seconds)
    progress("done")
    return data


def warnings(results: report.Results) -> list[str]:
    """What makes a figure of this run say less than it seems to: a load client (or CPU 1) at
    its limit, other processes on the target's CPU, a mock that cannot hold the load itself."""
    found = []
    for scenario, by_target in results.items():
        saturated = [t for t, f in by_target.items() if f.get(f"CPU {CLIENT_CPU} busy %", 0) > 90]
        if saturated:
            found.append(
                f"{scenario}: CPU {CLIENT_CPU} (load client, upstream mock) was "
                f"saturated ({', '.join(saturated)}): latencies may be the client's"
            )
        others = {t: f.get(f"others on CPU {SUT_CPU} %", 0) for t, f in by_target.items()}
        if noisy := [f"{t} {share:.0f}%" for t, share in others.items() if share > 15]:
            found.append(
                f"{scenario}: other processes took CPU {SUT_CPU} from the target "
                f"({', '.join(noisy)})"
            )
        if by_target.get("mock", {}).get("stream time p50 / ideal", 1) > 1.05:
            found.append(f"{scenario}: the mock alone does not hold this load on this machine")
    for scenario, figure in (("json", "req/s"), ("burst", "events/s")):
        by_target = results.get(scenario, {})
        direct = by_target.get("mock", {}).get(figure)
        if direct is None:
            continue
        close = [t for t in ("relay", "before", "off", "on")
                 if direct < by_target.get(t, {}).get(figure, 0) * 1.2]  # fmt: skip
        if close:
            found.append(
                f"{scenario}: the mock directly is within 20% of the {figure} of "
                f"{', '.join(close)}: the client side may be the limit"
            )
    return found


def write(data: dict[str, Any]) -> str:
    """Write var/bench.json, var/bench.md and var/bench.png; the markdown."""
    parts = [f"# make bench, {data['run']['date']}{' (quick)' if data['run']['quick'] else ''}"]
    if data["results"]:
        data["ratios"] = report.ratios(data["results"])
        data["verdicts"] = report.verdicts(data["results"])
        parts.append(report.markdown(data["results"], data["titles"]))
        if found := warnings(data["results"]):
            parts.append("\n".join(f"- warning: {w}" for w in found))
    if data.get("extras"):
        parts.append(extras.table(data["extras"]))
    if data.get("failover"):
        parts.append(failover.table(data["failover"]))
    if data.get("hedging"):
        parts.append(hedging.table(data["hedging"]))
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "bench.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if data["cdf"] or data["results"]:
        try:
            from benchmarks.plot import plot

            plot(data, OUTPUT / "bench.png")
            parts.append("![latency CDFs and CPU per event](bench.png)")
        except ImportError:
            parts.append("(no plot: matplotlib is missing; `make bench` installs the bench extra)")
    text = "\n\n".join(parts) + "\n"
    (OUTPUT / "bench.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ALL,
        default=list(ALL),
        metavar="SCENARIO",
        help=f"run only these: {', '.join(ALL)}",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(TARGETS),
        help="measure only these systems",
    )
    parser.add_argument("--quick", action="store_true", help="short phases, fewer streams")
    parser.add_argument(
        "--before", metavar="REF", help="also measure the gateway at this git revision"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {CLIENT_CPU})
    scale = Scale.quick() if args.quick else Scale()
    names = tuple(t for t in TARGETS if t in args.targets and (t != "before" or args.before))
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    try:
        data = uvloop.run(measure(args.only, names, scale, workdir, args.before))
    except BaseException:
        print(f"(the processes' logs are kept in {workdir})", file=sys.stderr)
        raise
    measured = [*data["results"].values(), data.get("hedging", {})]
    if any(f.get("errors") for s in measured for f in s.values()):
        print(f"(errors: the processes' logs are kept in {workdir})", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    data["run"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "seconds": round(time.monotonic() - BEGAN, 1),
        "scale": vars(scale),
        "targets": names,
        "before": args.before,
        "cpus": os.cpu_count(),
    }
    print(write(data))
    written = ", ".join(p.name for p in sorted(OUTPUT.glob("bench.*")))
    print(f"({data['run']['seconds']} s; in {OUTPUT}/: {written})")


if __name__ == "__main__":
    main()
