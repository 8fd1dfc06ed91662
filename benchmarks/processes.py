"""Start, pin, find and stop the processes a benchmark measures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Block until the port accepts connections; raise if the process died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {port} within {timeout} s")


@dataclass
class Server:
    """A started server process pinned to one CPU."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    upstream: Server | None = None  # the mock a gateway relays

    def measured_pid(self) -> int:
        """The process doing the work: the gateway's worker, or the mock itself."""
        children = [
            pid
            for pid in _children(self.process.pid)
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        return children[0] if children else self.process.pid

    def rss_kib(self) -> int:
        """Resident memory of the measured process, in KiB."""
        for line in Path(f"/proc/{self.measured_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _start(name: str, cpu: int, args: list[str], port: int, env: dict[str, str]) -> Server:
    log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["taskset", "-c", str(cpu), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    log.close()
    wait_for_port(port, process)
    return Server(name, process, port)


def start_mock(name: str, cpu: int) -> Server:
    """`llm-gateway mock-upstream` pinned to ``cpu``."""
    port = free_port()
    return _start(
        name, cpu, [str(BIN / "llm-gateway"), "mock-upstream", "--port", str(port)], port, {}
    )


def start_gateway(
    cpu: int, mock_port: int, workdir: Path, *, config: str | None = None, name: str = "gateway"
) -> Server:
    """`llm-gateway serve` with one worker, pinned to ``cpu``, in front of the mock (or with the
    YAML ``config`` given)."""
    path = workdir / f"bench-{name}.yaml"
    path.write_text(
        config
        or f"""
server:
  access_log: false
  log_level: warning
  backlog: 4096
deployments:
  mock:
    base_url: http://127.0.0.1:{mock_port}/v1
    models: [mock-gpt]
    max_connections: 20000
"""
    )
    port = free_port()
    args = [str(BIN / "llm-gateway"), "serve", "--config", str(path), "--port", str(port)]
    return _start(name, cpu, args, port, {})
