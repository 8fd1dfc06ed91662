"""deploy/ with real processes: metrics against a live /metrics, nginx in front of two gateways."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    ROOT,
    Proc,
    create_key,
    free_port,
    wait_for_port,
    write_config,
)
from tests.functional.client import chat_body, read_stream
from tests.redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]
DEPLOY = ROOT / "deploy"


def referenced_metrics() -> set[str]:
    """Metric names used by the alert rules and the dashboard."""
    text = (DEPLOY / "prometheus/alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana/llm-gateway.json").read_text())
    text += " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    return set(re.findall(r"\bllm_gateway_[a-z_]+", text))


async def test_every_metric_in_dashboard_and_alerts_is_exported(
    start_gateway, mock_upstream: Proc, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """After some traffic, a running gateway exports every metric the dashboard and alerts use."""
    config = write_config(tmp_path, mock_upstream.url)
    with config.open("a") as models:  # a fallback, so its series exist
        models.write("  with-fallback: {deployments: [mock], fallbacks: [alias]}\n")
    proc: Proc = start_gateway("--config", str(config), workers=2)
    for body in (
        chat_body("mock-gpt"),
        chat_body("mock-gpt", stream=False),
        chat_body("mock-gpt", mock={"fail_status": 502}),
    ):
        await read_stream(proc.url + "/v1/chat/completions", body)
    await asyncio.sleep(6)  # one stats flush
    async with aiohttp.ClientSession() as session, session.get(proc.url + "/metrics") as response:
        lines = (await response.text()).splitlines()
    exported = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    missing = sorted(name for name in referenced_metrics() if name not in exported)
    assert not missing, f"referenced but not exported: {missing}"
    assert len(referenced_metrics()) >= 15


class Nginx:
    """nginx with deploy/nginx/gateway.conf in front of the given gateway ports."""

    def __init__(self, workdir: Path, upstream_ports: list[int]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert Path(binary).exists(), "nginx missing: run bin/ensure-test-tools (make test does)"
        self.port = free_port()
        self.internal_port = free_port()
        servers = "\n".join(f"server 127.0.0.1:{p} max_fails=0;" for p in upstream_ports)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (workdir / name).mkdir(exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream llm_gateway {{
        {servers}
        keepalive 16;
        keepalive_timeout 10s;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        include {DEPLOY}/nginx/gateway.conf;
    }}
    server {{
        listen 127.0.0.1:{self.internal_port};
        include {DEPLOY}/nginx/internal.conf;
    }}
}}
"""
        )
        check = subprocess.run(
            [binary, "-t", "-c", str(self.conf), "-p", str(workdir)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([binary, "-c", str(self.conf), "-p", str(workdir)])
        wait_for_port(self.port, self.process)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def pair(
    start_gateway,
    mock_upstream: Proc,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    keyed_env: dict[str, str],
) -> Iterator[tuple[Nginx, list[Proc], dict[str, str]]]:  # type: ignore[no-untyped-def]
    """Two gateways sharing the suite's Redis, behind nginx; yields (nginx, gateways, headers)."""
    env = {
        **keyed_env,
        "LLM_GATEWAY_REDIS_URL": redis_url,
        "LLM_GATEWAY_STORE__REDIS_PREFIX": redis_prefix,
        "LLM_GATEWAY_KEEPALIVE_INTERVAL": "0.3",
    }
    _, key = create_key(env)
    config = str(write_config(tmp_path, mock_upstream.url))
    gateways = [start_gateway("--config", config, env=env) for _ in range(2)]
    nginx = Nginx(tmp_path, [g.port for g in gateways])
    yield nginx, gateways, {"Authorization": f"Bearer {key}"}
    nginx.stop()


async def first_event_times(url: str, headers: dict[str, str], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(url + "/v1/chat/completions", json=chat_body("mock-gpt")) as response,
        ):
            await response.content.readuntil(b"\n\n")
            times.append(time.perf_counter() - started)
            await response.read()
    return times


async def test_streams_pass_nginx_unbuffered(
    pair: tuple[Nginx, list[Proc], dict[str, str]],
) -> None:
    """Events arrive through nginx as they are sent, within a few ms of going direct."""
    nginx, gateways, auth = pair
    direct = statistics.median(await first_event_times(gateways[0].url, auth, 20))
    proxied = statistics.median(await first_event_times(nginx.url, auth, 20))
    assert proxied - direct < 0.005, (proxied, direct)
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession(headers=auth) as session,
        session.post(
            nginx.url + "/v1/chat/completions",
            json=chat_body("mock-gpt", mock={"chunks": 4, "delay": 0.25}),
        ) as response,
    ):
        async for _ in response.content.iter_any():
            arrivals.append(time.perf_counter())
    assert arrivals[-1] - arrivals[0] > 1.0  # spread over the stream, not released at the end


async def test_keepalive_comments_pass_nginx(
    pair: tuple[Nginx, list[Proc], dict[str, str]],
) -> None:
    """The gateway's keep-alive comments reach the client through nginx."""
    nginx, _, auth = pair
    body = chat_body("mock-gpt", mock={"chunks": 2, "first_byte_delay": 1.0})
    result = await read_stream(nginx.url + "/v1/chat/completions", body, auth)
    assert result.done and result.raw.startswith(b": keep-alive\n\n")


async def test_sigterm_to_one_gateway_behind_nginx(
    pair: tuple[Nginx, list[Proc], dict[str, str]],
) -> None:
    """A stream on a draining gateway finishes; new requests go to the other one."""
    nginx, gateways, auth = pair
    body = chat_body("mock-gpt", mock={"chunks": 40, "delay": 0.05})
    streams = [
        asyncio.create_task(read_stream(nginx.url + "/v1/chat/completions", body, auth))
        for _ in range(2)
    ]
    await asyncio.sleep(0.5)
    gateways[0].signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    followers = [
        await read_stream(nginx.url + "/v1/chat/completions", chat_body("mock-gpt"), auth)
        for _ in range(6)
    ]
    assert all(f.done for f in followers)
    results = await asyncio.gather(*streams)
    assert all(r.done and len(r.json_events()) == 42 for r in results)
    assert await asyncio.to_thread(gateways[0].process.wait, 20) == 0
    assert "worker draining" in gateways[0].log()
