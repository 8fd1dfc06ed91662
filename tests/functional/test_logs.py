"""Logs as an operator greps them: the access line, scrapes left out, and rate-limited warnings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import Proc, free_port, gateway_command, start_process, wait_for_log
from tests.functional.client import chat_body, read_stream


def log_lines(proc: Proc, logger: str | None = None) -> list[dict[str, Any]]:
    """The gateway's JSON log lines, optionally of one logger."""
    lines = [orjson.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    return [line for line in lines if logger is None or line.get("logger") == logger]


async def get(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await response.read()
        return response.status


async def test_access_line_carries_what_operators_grep_for(gateway_on_mock: Proc) -> None:
    """One JSON line per request with ids, models, deployment, timings, tokens and the cache."""
    url = gateway_on_mock.url
    body = chat_body("alias", temperature=0, stream_options={"include_usage": True})
    for request_id in ("req-access-1", "req-access-2"):
        result = await read_stream(url + "/v1/chat/completions", body, {"X-Request-Id": request_id})
        assert result.done
    for path in ("/health", "/health/ready", "/metrics", "/health"):
        assert await get(url + path) == 200
    assert await get(url + "/v1/models") == 200
    wait_for_log(gateway_on_mock, '"path":"/v1/models"')
    lines = {line["request_id"]: line for line in log_lines(gateway_on_mock, "gateway.access")}
    first, second = lines["req-access-1"], lines["req-access-2"]
    usage = result.json_events()[-1]["usage"]
    assert first["msg"] == "request" and first["key_id"] == "anonymous"
    assert (first["model"], first["upstream_model"], first["deployment"]) == (
        "alias", "mock-gpt", "mock")  # fmt: skip
    assert (first["api"], first["status"], first["stream"]) == ("chat.completions", 200, True)
    assert 0 < first["ttfb_ms"] <= first["duration_ms"]
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])  # fmt: skip
    assert first["tokens_estimated"] is False
    assert (first["cache"], first["coalesced"], first["retries"], first["hedges"]) == (
        "miss", False, 0, 0)  # fmt: skip
    assert first["termination"] == "completed" and "cost" not in first
    assert second["cache"] == "hit"
    paths = [line.get("path") for line in log_lines(gateway_on_mock, "gateway.access")]
    assert not {"/health", "/health/ready", "/metrics"} & set(paths)  # scrapes left out
    assert paths.count("/v1/chat/completions") == 2  # one line per request, not two


async def test_no_access_log_flag_silences_it(start_gateway: Any) -> None:
    """`serve --no-access-log` writes no access lines; other logs stay."""
    proc: Proc = start_gateway("--no-access-log")
    result = await read_stream(proc.url + "/v1/chat/completions", chat_body())
    assert result.done and await get(proc.url + "/v1/models") == 200
    time.sleep(0.3)
    assert log_lines(proc, "gateway.access") == []
    assert any(line["msg"] == "worker ready" for line in log_lines(proc))


@pytest.fixture
def failing_and_backup(tmp_path: Path) -> Any:
    """Two mock upstreams: one answering every request 503, one healthy."""
    started = []
    for name, extra in (("down", ["--fail-status", "503"]), ("up", [])):
        port = free_port()
        args = gateway_command("mock-upstream", "--port", str(port), *extra)
        started.append(start_process(args, port, tmp_path / f"mock-{name}.log"))
    yield started
    for proc in started:
        proc.stop()


async def test_outage_warns_with_deployment_and_request_id_rate_limited(
    start_gateway: Any, failing_and_backup: list[Proc], tmp_path: Path
) -> None:
    """Failures, retries, fallbacks and the breaker opening are warnings; a burst, not a flood."""
    down, up = failing_and_backup
    config = tmp_path / "outage.yaml"
    config.write_text(f"""
routing:
  retries: {{attempts: 2, backoff_base: 0.001, backoff_max: 0.002}}
  breaker: {{failures: 8, recovery: 60}}
deployments:
  down: {{base_url: "{down.url}/v1", models: [primary]}}
  up: {{base_url: "{up.url}/v1"}}
models:
  primary: {{deployments: [down], fallbacks: [backup], upstream_model: mock-gpt}}
  backup: {{deployments: [up], upstream_model: backup-gpt}}
  # `down` also serves a route with somewhere else to go, so its breaker may open.
  spread: {{deployments: [down, up]}}
""")
    proc: Proc = start_gateway("--config", str(config))
    url = proc.url + "/v1/chat/completions"
    for index in range(20):
        result = await read_stream(url, chat_body("primary"), {"X-Request-Id": f"outage-{index}"})
        assert result.done
    wait_for_log(proc, "circuit breaker open")
    warnings = [line for line in log_lines(proc) if line["level"] == "warning"]
    failed = [w for w in warnings if w["msg"] == "upstream attempt failed"]
    assert 5 <= len(failed) <= 6  # 8 failures before the breaker opened, a burst of 5 logged
    assert all(w["deployment"] == "down" and w["reason"] == "status_503" for w in failed)
    assert [w["request_id"] for w in failed[:5]] == [f"outage-{i}" for i in range(5)]
    assert len([w for w in warnings if w["msg"] == "circuit breaker open"]) == 1
    fallbacks = [w for w in warnings if w["msg"] == "served by a fallback model"]
    assert 5 <= len(fallbacks) <= 6 and fallbacks[0]["fallback"] == "backup"
    retries = [w for w in warnings if w["msg"] == "retrying upstream request"]
    assert retries and retries[0]["reason"] == "status_503"
    # A request's access line is written just after its last byte: the last one may lag.
    wait_for_log(proc, '"api":"chat.completions"', 20)
    access = [line for line in log_lines(proc, "gateway.access") if line.get("api")]
    assert len(access) == 20
    assert access[0]["upstream_model"] == "backup-gpt" and access[0]["deployment"] == "up"
    assert access[0]["retries"] == 1 and access[-1]["retries"] == 0  # the breaker skips `down`


async def test_scrapes_are_logged_when_asked(start_gateway: Any) -> None:
    """server.access_log_health puts health checks and metric scrapes in the access log."""
    proc: Proc = start_gateway(env={"LLM_GATEWAY_SERVER__ACCESS_LOG_HEALTH": "true"})
    assert await get(proc.url + "/health") == 200 and await get(proc.url + "/metrics") == 200
    wait_for_log(proc, '"path":"/metrics"')
    paths = [line.get("path") for line in log_lines(proc, "gateway.access")]
    assert paths == ["/health", "/metrics"]


async def test_access_line_counts_a_hedge_apart_from_retries(
    start_gateway: Any, tmp_path: Path
) -> None:
    """A stream whose first event was late and was hedged logs hedges 1 and retries 0."""
    started = []
    for name, extra in (("slow", ["--first-byte-delay", "2"]), ("fast", [])):
        port = free_port()
        args = gateway_command("mock-upstream", "--port", str(port), *extra)
        started.append(start_process(args, port, tmp_path / f"mock-{name}.log"))
    slow, fast = started
    config = tmp_path / "hedged.yaml"
    config.write_text(f"""
deployments:
  slow: {{base_url: "{slow.url}/v1", weight: 1000000}}
  fast: {{base_url: "{fast.url}/v1", weight: 0.000001}}
models:
  hedged: {{deployments: [slow, fast], hedge: {{after: 0.2, max_extra: 1}}}}
""")
    try:
        proc: Proc = start_gateway("--config", str(config))
        headers = {"X-Request-Id": "hedged-1"}
        result = await read_stream(proc.url + "/v1/chat/completions", chat_body("hedged"), headers)
        assert result.done
        wait_for_log(proc, '"request_id":"hedged-1"')
        line = next(x for x in log_lines(proc, "gateway.access") if x["request_id"] == "hedged-1")
        assert (line["deployment"], line["hedges"], line["retries"]) == ("fast", 1, 0)
    finally:
        for mock_proc in started:
            mock_proc.stop()
