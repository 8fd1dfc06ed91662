"""Start, pin, measure and stop the processes a benchmark measures.

Every process runs in the bench's own temporary directory with an environment stripped of the
user's ``LLM_GATEWAY_*`` settings, so nothing is read from or written to the user's ``var/``.
CPU time and resident memory are read from ``/proc`` for a process and all its descendants (a
gateway is its supervisor, its workers and multiprocessing's resource tracker).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
ISOLATED_ENV = ("LLM_GATEWAY_", "PROMETHEUS_MULTIPROC_DIR", "REDIS_URL")


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
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {port} within {timeout} s")


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a bench process: the user's, less gateway settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_ENV)}
    return {**env, **(extra or {})}


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (their own, not their reaped children's), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended; its time is lost, so measure live processes only
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / TICKS


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def core_ticks() -> dict[int, tuple[int, int]]:
    """CPU number -> (busy, total) clock ticks since boot, from /proc/stat (all processes)."""
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            ticks[int(name[3:])] = (sum(numbers) - numbers[3] - numbers[4], sum(numbers))
    return ticks


@dataclass
class Server:
    """A started server process pinned to one CPU."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request
    upstream: Server | None = None  # the mock a relay or gateway forwards to

    def pids(self) -> list[int]:
        """The processes that do this server's work."""
        return tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time spent so far by this server's processes."""
        return cpu_seconds(self.pids())

    def rss_kib(self) -> int:
        """Resident memory of this server's processes, in KiB."""
        return rss_kib(self.pids())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str, cpu: int, args: list[str], workdir: Path, env: dict[str, str] | None = None
) -> Server:
    """Start ``args`` (which must listen on the port given by ``{port}``) pinned to ``cpu``."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", str(cpu), *(a.format(port=port) for a in args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bench_env(env),
            cwd=workdir,
        )
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        raise RuntimeError(f"{name}: {exc}\n{log.read_text(errors='replace')[-2000:]}") from None
    return Server(name, process, port, log)


def start_mock(name: str, cpu: int, workdir: Path, *options: str) -> Server:
    """`llm-gateway mock-upstream [options]` pinned to ``cpu``."""
    args = [str(BIN / "llm-gateway"), "mock-upstream", "--port", "{port}", *options]
    return start(name, cpu, args, workdir)


def start_relay(name: str, cpu: int, upstream: Server, workdir: Path) -> Server:
    """The minimal aiohttp relay (benchmarks/relay.py) in front of ``upstream``."""
    origin = f"http://127.0.0.1:{upstream.port}"
    args = [sys.executable, "-m", "benchmarks.relay", "--port", "{port}", "--upstream", origin]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    server = start(name, cpu, args, workdir, env)
    server.upstream = upstream
    return server


def start_gateway(
    name: str,
    cpu: int,
    config: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Server:
    """`llm-gateway serve` (or ``command serve``) with the YAML ``config``, pinned to ``cpu``;
    its store in ``workdir``."""
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    store = {"LLM_GATEWAY_STORE__PATH": str(workdir / f"{name}.sqlite3"), **(env or {})}
    program = command or [str(BIN / "llm-gateway")]
    args = [*program, "serve", "--config", str(path), "--port", "{port}"]
    return start(name, cpu, args, workdir, store)
