"""The benchmark harness itself (benchmarks/): its figures, its baselines, its isolation.

No figure is asserted here: only that the harness measures what it says it measures.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks import hedging, report, run
from benchmarks.processes import cpu_seconds, start_mock, start_relay, tree
from gateway.mock.answer import expected_text
from tests.conftest import ROOT
from tests.functional.client import chat_body, read_stream

BURN = """
import os, subprocess, sys, time
if sys.argv[1:] == ["child"]:
    while time.process_time() < 0.3:
        pass
    print("burnt", flush=True)
    time.sleep(60)
else:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], "child"])
    child.wait()
"""


def test_targets_are_judged_against_the_baselines_of_the_same_run() -> None:
    """A relative target moves with its baseline; an absolute one does not; a missing one is n/a."""
    results: report.Results = {
        "json": {"relay": {"req/s": 1000.0}, "on": {"req/s": 1200.0, "CPU us/req": 150.0}},
        "paced500": {"mock": {"TTFB p50 ms": 1.0}, "on": {"TTFB p50 ms": 2.5}},
        "burst": {"on": {"CPU us/event": 7.0}},
    }
    assert report.verdicts(results) == {
        "json": {"req/s": "PASS", "CPU us/req": "PASS"},
        "paced500": {"TTFB p50 ms": "PASS", "TTFB p99 ms": "n/a", "CPU us/event": "n/a"},
        "burst": {"CPU us/event": "MISS"},
    }
    results["json"]["relay"]["req/s"] = 1500.0
    results["paced500"]["mock"]["TTFB p50 ms"] = 0.1
    verdicts = report.verdicts(results)
    assert verdicts["json"]["req/s"] == verdicts["paced500"]["TTFB p50 ms"] == "MISS"
    assert report.ratios(results)["json"]["on"]["req/s"] == {"relay": 0.8}
    table = report.markdown(results, {"json": "JSON"})
    assert "| JSON | req/s | - | 1,500 | - | 1,200 | 0.80x | - | - | >= 1x relay | MISS |" in table


def test_cdf_keeps_the_extremes_and_the_order() -> None:
    """The quantiles kept for the plot start at the minimum and end at the maximum."""
    curve = report.cdf([5.0, 1.0, 3.0, 2.0, 4.0], points=3)
    assert curve == [1.0, 3.0, 5.0]
    assert report.cdf([]) == []
    assert math.isnan(report.Target("<=", 2, "mock").bound({}, "TTFB p50 ms"))


def test_cpu_is_read_for_a_process_and_its_descendants() -> None:
    """CPU burnt by a grandchild counts for the process that started it (a gateway's workers)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", BURN, BURN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"burnt\n"
        pids = tree(parent.pid)
        assert len(pids) == 2 and pids[0] == parent.pid
        assert cpu_seconds(pids) >= 0.29
        assert cpu_seconds(pids[:1]) < 0.29  # the parent itself only waited
    finally:
        for pid in reversed(tree(parent.pid)):
            os.kill(pid, signal.SIGKILL)
        parent.wait()
        parent.stdout.close()


async def test_the_minimal_relay_passes_streams_and_json_through(tmp_path: Path) -> None:
    """The aiohttp floor relays a stream whole and a JSON answer as it came."""
    upstream = start_mock("mock", 1, tmp_path)
    relay = start_relay("relay", 0, upstream, tmp_path)
    try:
        body = chat_body("mock-gpt", mock={"chunks": 30, "unbatched": True})
        url = f"http://127.0.0.1:{relay.port}/v1/chat/completions"
        streamed = await read_stream(url, body)
        answer = await read_stream(url, {**body, "stream": False})
    finally:
        relay.stop()
        upstream.stop()
    assert streamed.status == 200 and streamed.done
    assert streamed.headers["Content-Type"] == "text/event-stream"
    assert streamed.text() == expected_text(body)
    message = orjson.loads(answer.raw)["choices"][0]["message"]["content"]
    assert answer.status == 200 and message == expected_text(body)


@pytest.mark.slow
def test_bench_uses_a_store_of_its_own_and_writes_only_its_outputs(tmp_path: Path) -> None:
    """With a key in the user's store, a bench run still works and leaves that store as is."""
    env = {
        "LLM_GATEWAY_MASTER_KEY": "user-master-key-0123456789-abcdefghijklmnop",
        "XDG_STATE_HOME": str(tmp_path / "state"),  # where the user's store is by default
    }
    user_store = tmp_path / "state" / "llm-gateway" / "llm-gateway.sqlite3"
    (tmp_path / "var").mkdir()
    created = subprocess.run(
        [str(Path(sys.executable).parent / "llm-gateway"), "keys", "create", "--name", "user"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env}, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    digest = hashlib.sha256(user_store.read_bytes()).hexdigest()
    before = {p.name for p in (tmp_path / "var").iterdir()}
    bench = ["-m", "benchmarks.run", "--quick", "--only", "json", "--targets", "off", "on"]
    run = subprocess.run(
        [sys.executable, *bench],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    data = orjson.loads((tmp_path / "var" / "bench.json").read_bytes())
    for target in ("off", "on"):
        figures = data["results"]["json"][target]
        assert figures["errors"] == 0 and figures["req/s"] > 0 and figures["CPU us/req"] > 0
    assert "| JSON, 50 connections | CPU us/req |" in (tmp_path / "var" / "bench.md").read_text()
    assert hashlib.sha256(user_store.read_bytes()).hexdigest() == digest
    after = {p.name for p in (tmp_path / "var").iterdir()}
    assert after - before <= {"bench.json", "bench.md", "bench.png"}


def test_warnings_name_what_makes_a_figure_unreliable() -> None:
    """A saturated client core, a busy target core and a mock that cannot keep up are each named."""
    results: report.Results = {
        "paced500": {
            "mock": {"stream time p50 / ideal": 1.3, "CPU 1 busy %": 50.0},
            "on": {"CPU 1 busy %": 97.0, "others on CPU 0 %": 40.0},
        },
        "json": {"mock": {"req/s": 1000.0}, "relay": {"req/s": 900.0}, "on": {"req/s": 500.0}},
    }
    assert run.warnings(results) == [
        "paced500: CPU 1 (load client, upstream mock) was saturated (on): latencies may be the "
        "client's",
        "paced500: other processes took CPU 0 from the target (on 40%)",
        "paced500: the mock alone does not hold this load on this machine",
        "json: the mock directly is within 20% of the req/s of relay: the client side may be the "
        "limit",
    ]
    assert run.warnings({"json": {"mock": {"req/s": 1000.0}, "on": {"req/s": 500.0}}}) == []


def test_hedging_reads_counters_by_label_and_tables_each_variant() -> None:
    """Counters are summed over the samples whose labels match; each variant is one table row."""
    exposition = "\n".join(
        [
            "# HELP llm_gateway_hedges_total Hedged streams by outcome",
            'llm_gateway_hedges_total{outcome="won"} 7.0',
            'llm_gateway_hedges_total{outcome="lost"} 2.0',
            'llm_gateway_hedge_prompt_tokens_total{model="mock-gpt"} 1400.0',
            'llm_gateway_prompt_tokens_total{model="mock-gpt",key="a"} 100.0',
            'llm_gateway_prompt_tokens_total{model="mock-gpt",key="b"} 50.0',
        ]
    )
    assert hedging.metric(exposition, "llm_gateway_hedges_total", 'outcome="won"') == 7.0
    assert hedging.metric(exposition, "llm_gateway_hedges_total") == 9.0
    assert hedging.metric(exposition, "llm_gateway_prompt_tokens_total") == 150.0
    assert hedging.metric(exposition, "llm_gateway_shed_total") == 0.0
    table = hedging.table(
        {
            "hedging off": {"TTFE p99 ms": 2006.9, "hedges/req": 0.0},
            "after 0.3 s": {"TTFE p99 ms": 306.1, "hedges/req": 0.1, "others on CPU 0 %": 38.0},
        }
    )
    rows = table.splitlines()
    assert rows[2].startswith("| hedging off | - | - | - | 2,007 |") and "| 0 |" in rows[2]
    assert rows[3].startswith("| after 0.3 s |") and "| 306 | - | - | 0.100 |" in rows[3]
    assert rows[-1] == "- warning: hedging, after 0.3 s: other processes took 38% of CPU 0"
