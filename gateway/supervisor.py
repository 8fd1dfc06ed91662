"""The supervisor: starts N workers on one port, restarts a worker that dies, forwards signals."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from gateway import metrics, preflight, spool
from gateway.config import Config
from gateway.logs import configure_logging
from gateway.server import run_worker

log = logging.getLogger("gateway.supervisor")

RESTART_BACKOFF_MAX = 10.0
# A worker that lived at least this long is considered healthy: its restart backoff resets.
HEALTHY_UPTIME = 10.0


class Supervisor:
    """Keeps ``workers`` processes running until asked to stop."""

    def __init__(self, config: Config, port: int) -> None:
        self._config = config
        self._port = port
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def run(self) -> int:
        """Start the workers and watch them; returns the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self._recover_spools("a previous run")
        for index in range(self._config.server.workers):
            self._start(index)
        while not self._stopping:
            self._watch_once()
        return self._stop_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=run_worker,
            args=(self._config, index, self._port),
            name=f"llm-gateway-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        self._started[index] = time.monotonic()
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    def _watch_once(self) -> None:
        sentinels = {p.sentinel: i for i, p in self._workers.items()}
        ready = wait([*sentinels, self._wake_read], timeout=5.0)
        if self._wake_read in ready:
            os.read(self._wake_read, 64)
        for sentinel in ready:
            index = sentinels.get(sentinel) if isinstance(sentinel, int) else None
            if index is None or self._stopping:
                continue
            self._restart(index)

    def _restart(self, index: int) -> None:
        process = self._workers[index]
        process.join()
        if process.pid is not None:
            metrics.mark_worker_dead(process.pid)
        self._recover_spools(f"worker {index} (pid {process.pid})")
        uptime = time.monotonic() - self._started[index]
        delay = 0.0 if uptime >= HEALTHY_UPTIME else self._backoff.get(index, 0.25) * 2
        self._backoff[index] = min(delay or 0.25, RESTART_BACKOFF_MAX)
        log.error(
            "worker died; restarting",
            extra={
                "worker": index,
                "pid": process.pid,
                "exitcode": process.exitcode,
                "restart_in_s": round(delay, 2),
            },
        )
        deadline = time.monotonic() + delay
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self._stopping:
            self._start(index)

    def _recover_spools(self, whose: str) -> None:
        """Count what dead workers left in their spools: requests in flight (now recorded as
        worker_crash) and events not yet delivered. The next worker to start delivers them."""
        settings = self._config.stats
        directory = Path(settings.spool_dir or f"{self._config.store.path}.spool")
        try:
            found = spool.recover_orphans(directory)
        except OSError as exc:
            log.error("cannot read the usage spool", extra={"dir": str(directory),
                                                             "error": str(exc)})  # fmt: skip
            return
        if not found.events:
            return
        metrics.WORKER_CRASH_REQUESTS.inc(len(found.crashes))
        metrics.WORKER_CRASH_UNDELIVERED.inc(len(found.ended))
        log.error(
            "usage left behind by a dead worker: in-flight requests recorded as worker_crash, "
            "undelivered events to be replayed",
            extra={
                "from": whose,
                "in_flight": len(found.crashes),
                "undelivered": len(found.ended),
                "estimated_completion_tokens": sum(e.completion_tokens for e in found.crashes),
            },
        )

    def _stop_all(self) -> int:
        """Forward SIGTERM to every worker and wait for their drains to finish."""
        log.info("stopping workers", extra={"workers": len(self._workers)})
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        server = self._config.server
        deadline = time.monotonic() + server.drain_announce + server.drain_grace + 15
        for process in self._workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join()
            if process.pid is not None:
                metrics.mark_worker_dead(process.pid)
        log.info("stopped")
        return 0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket: it turns port 0 into a real port that the
    workers then share, and keeps the port ours while workers restart."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run(config: Config) -> int:
    """Serve with the supervisor; returns the process exit code."""
    configure_logging(config.server.log_level)
    settings = config.server
    try:
        auth = preflight.auth_state(config)
    except preflight.PreflightError as exc:
        log.error(f"llm-gateway cannot start: {exc}")
        return 2
    spool_dir = Path(config.stats.spool_dir or f"{config.store.path}.spool")
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(spool_dir, os.W_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        log.error(f"llm-gateway cannot start: the usage spool directory {spool_dir} (stats."
                  f"spool_dir) cannot be used: {exc}")  # fmt: skip
        return 2
    metrics_dir = _metrics_directory()
    reservation = reserve_port(settings.host, settings.port)
    port = reservation.getsockname()[1]
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "llm-gateway listening",
        extra={
            "url": f"http://{shown_host}:{port}",
            "workers": settings.workers,
            "config": config.source,
            "models": config.listed_models(),
        },
    )
    if auth.required:
        log.info(f"auth is on: {auth.reason}; /v1 needs an API key")
    else:
        log.warning(
            f"auth is off ({auth.reason}): anyone who can reach this port can use the API. "
            "Create a key with `llm-gateway keys create --name NAME` to turn it on."
        )
    if config.embedded_demo:
        log.info(
            "running on embedded defaults: model 'demo' is the built-in mock. To put a real "
            "upstream behind the gateway: llm-gateway serve --upstream https://api.openai.com/v1 "
            "--upstream-key-env OPENAI_API_KEY (or --config gateway.yaml)"
        )
    try:
        return Supervisor(config, port).run()
    finally:
        reservation.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_directory() -> str | None:
    """Give every worker the same Prometheus multiprocess directory (ours unless one is set).

    Returns the directory to remove at exit (None when the operator chose it)."""
    chosen = os.environ.get(metrics.MULTIPROC_ENV)
    if chosen:
        # Files of a previous run would add old counts to the new ones.
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
        return None
    directory = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    return directory
