"""Hedged streams, as real processes: a slow and a fast deployment of one model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.conftest import Proc, free_port, gateway_command, start_process
from tests.functional.client import chat_body, read_stream


async def test_a_late_first_event_is_hedged_to_the_next_deployment(
    start_gateway, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The slow deployment (first byte after 3 s) is tried first; after 0.3 s the request also
    goes to the fast one, whose stream the client gets; the slow request is cancelled at once
    and its prompt is counted as hedge cost."""
    mocks: list[Proc] = []
    for name, delay in (("slow", "3"), ("fast", "0")):
        port = free_port()
        mocks.append(
            start_process(
                gateway_command("mock-upstream", "--port", str(port), "--first-byte-delay", delay),
                port,
                tmp_path / f"{name}.log",
            )
        )
    slow, fast = mocks
    config = tmp_path / "hedge.yaml"
    config.write_text(
        f"""
deployments:
  slow: {{base_url: "{slow.url}/v1", weight: 1000}}
  fast: {{base_url: "{fast.url}/v1", weight: 0.001}}
models:
  h:
    deployments: [slow, fast]
    upstream_model: mock-gpt
    hedge: {{after: 0.3, max_extra: 1}}
"""
    )
    try:
        proc: Proc = start_gateway("--config", str(config))
        for _ in range(3):
            started = time.monotonic()
            result = await read_stream(proc.url + "/v1/chat/completions", chat_body("h"))
            assert result.status == 200 and result.done
            assert time.monotonic() - started < 2.0  # not the slow one's 3 s
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            slow_stats = await (await session.get(slow.url + "/_mock/stats")).json()
            fast_stats = await (await session.get(fast.url + "/_mock/stats")).json()
            metrics = await (await session.get(proc.url + "/metrics")).text()
        assert fast_stats["completed"] == 3
        assert slow_stats["completed"] == 0 and slow_stats["in_flight"] == 0
        assert 'llm_gateway_hedges_total{outcome="won"} 3.0' in metrics
        hedge_cost = [
            line for line in metrics.splitlines()
            if line.startswith('llm_gateway_hedge_prompt_tokens_total{model="h"}')
        ]  # fmt: skip
        assert hedge_cost and float(hedge_cost[0].split()[-1]) > 0
    finally:
        for mock in mocks:
            mock.stop()


async def test_no_hedge_when_the_first_event_is_on_time(
    start_gateway, mock_upstream: Proc, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A stream whose first event comes before the delay sends nothing extra."""
    config = tmp_path / "hedge.yaml"
    config.write_text(
        f"""
deployments:
  a: {{base_url: "{mock_upstream.url}/v1"}}
  b: {{base_url: "{mock_upstream.url}/v1"}}
models:
  h:
    deployments: [a, b]
    upstream_model: mock-gpt
    hedge: {{after: 2}}
"""
    )
    proc: Proc = start_gateway("--config", str(config))
    for _ in range(3):
        result = await read_stream(proc.url + "/v1/chat/completions", chat_body("h"))
        assert result.done
    async with aiohttp.ClientSession() as session:
        stats = await (await session.get(mock_upstream.url + "/_mock/stats")).json()
        metrics = await (await session.get(proc.url + "/metrics")).text()
    assert stats["requests"] == 3
    assert 'llm_gateway_hedges_total{outcome="not_needed"} 3.0' in metrics
