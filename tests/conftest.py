"""Shared fixtures: real processes on real ports, started the way a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0
MASTER_KEY = "test-master-key-0123456789-abcdefghijklmnop"
STORE_FILE = "store.sqlite3"  # in the test's tmp_path: start_gateway's default and keyed_env's


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT
) -> None:
    """Block until something accepts on ``port``, failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def wait_for_log(proc: Proc, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
    """Block until ``text`` appears ``count`` times in the process log."""
    deadline = time.monotonic() + timeout
    while proc.log().count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} did not appear {count} times:\n{proc.log()}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A started server process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_process(
    args: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> Proc:
    """Start a command with its output in ``log_path`` and wait until it listens on ``port``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        args, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
    )
    log_file.close()
    proc = Proc(process, port, log_path)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        proc.stop(5)
        raise RuntimeError(f"{exc}\n--- log ---\n{proc.log()}") from None
    return proc


def gateway_command(*args: str) -> list[str]:
    """The installed ``llm-gateway`` entry point with arguments."""
    return [str(BIN / "llm-gateway"), *args]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[object]:
    """Start ``llm-gateway serve`` processes; all are stopped at the end of the test."""
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None, workers: int = 1) -> Proc:
        port = free_port()
        log_path = tmp_path / f"gateway-{len(started)}.log"
        # Each test has a store of its own unless it names one.
        # No readiness announce period on SIGTERM unless a test asks for one: stops stay quick.
        full_env = {
            "LLM_GATEWAY_STORE__PATH": str(tmp_path / STORE_FILE),
            "LLM_GATEWAY_DRAIN_ANNOUNCE": "0",
            **(env or {}),
        }
        # A variable a test sets to "" is left out (the strict environment check refuses empty
        # values): the way to start without the fixture's store path, say.
        full_env = {name: value for name, value in full_env.items() if value != ""}
        proc = start_process(
            gateway_command("serve", "--port", str(port), "--workers", str(workers), *args),
            port,
            log_path,
            full_env,
        )
        started.append(proc)
        wait_for_log(proc, "worker ready", workers)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def keyed_env(tmp_path: Path) -> dict[str, str]:
    """A strong master key and the test's own store: the environment of a gateway with keys.

    Pass it to ``create_key`` and ``run_cli`` as well as to ``start_gateway``, so the CLI writes
    keys where the gateway reads them; add settings on top with ``{**keyed_env, ...}``.
    """
    return {
        "LLM_GATEWAY_STORE__PATH": str(tmp_path / STORE_FILE),
        "LLM_GATEWAY_MASTER_KEY": MASTER_KEY,
    }


@pytest.fixture
def mock_upstream(tmp_path: Path) -> Iterator[Proc]:
    """A real ``llm-gateway mock-upstream`` process on a free port."""
    port = free_port()
    proc = start_process(
        gateway_command("mock-upstream", "--port", str(port)), port, tmp_path / "mock.log"
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One real mock process for a whole test module; tests restore any behaviour they set."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("mock") / "mock.log"
    proc = start_process(gateway_command("mock-upstream", "--port", str(port)), port, log_path)
    yield proc
    proc.stop()


@pytest.fixture
def hostile_upstream(tmp_path: Path) -> Iterator[Proc]:
    """The suite's hostile upstream (tests/hostile_upstream.py) as a real process."""
    port = free_port()
    proc = start_process(
        [sys.executable, "-m", "tests.hostile_upstream", "--port", str(port)],
        port,
        tmp_path / "hostile.log",
    )
    yield proc
    proc.stop()


def write_config(tmp_path: Path, mock_url: str, *, server: str = "", deployment: str = "") -> Path:
    """A gateway config with one deployment `mock` on the mock upstream serving `mock-gpt`."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
server:
  log_level: info
{server}
deployments:
  mock:
    base_url: {mock_url}/v1
    api_key: sk-upstream-test
    models: [mock-gpt, mock-embed]
{deployment}
models:
  alias:
    deployments: [mock]
    upstream_model: mock-gpt
"""
    )
    return path


@pytest.fixture
def gateway_on_mock(start_gateway, mock_upstream: Proc, tmp_path: Path) -> Proc:  # type: ignore[no-untyped-def]
    """A gateway process routing `mock-gpt` and `alias` to a real mock upstream process."""
    proc: Proc = start_gateway("--config", str(write_config(tmp_path, mock_upstream.url)))
    proc.extra["mock_url"] = mock_upstream.url
    return proc


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an ``llm-gateway`` command with ``env`` added to the environment."""
    return subprocess.run(
        gateway_command(*args), capture_output=True, text=True, timeout=60,
        env={**os.environ, **env}, cwd=ROOT,
    )  # fmt: skip


def create_key(env: dict[str, str], *args: str) -> tuple[str, str]:
    """``keys create`` through the CLI; returns (key id, key)."""
    result = run_cli("keys", "create", "--name", "test", *args, env=env)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    return fields["id"].strip(), fields["key"].strip()


@pytest.fixture(autouse=True, scope="session")
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every process the suite starts keeps its default store under a private directory, never
    in the user's own ``~/.local/state/llm-gateway`` (a test key left there would make
    ``make serve`` ask for a master key)."""
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous
