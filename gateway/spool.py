"""A worker's usage spool: a local append-only file that makes a request count before it ends.

Every /v1 request writes a ``begin`` line when it starts and its stats event when it ends; the
usage sink (the sidecar into the store, or the Redis usage bus) later writes a ``delivered`` line
for the events it handed on. Lines go to the file with one unbuffered ``write`` each, so a worker
killed with SIGKILL loses nothing that was written: the kernel has it. ``fsync`` runs every
``fsync_interval`` seconds, off the event loop, so a power loss or kernel crash loses at most that
window.

Each worker owns one spool file (an exclusive ``flock`` says so) named after its pid. A file whose
lock is free belongs to a dead worker: :func:`recover` reads it, turns every request begun and never
ended into a ``worker_crash`` event with the tokens known so far (estimated), and returns the
events not yet delivered. The supervisor does this when a worker dies (and logs what it found);
a starting worker adopts every orphaned file, delivers its events and deletes it. Event ids are
kept, so an event delivered twice (before a crash, and again from the spool) is applied once.

Line shapes (JSON): ``{"b": id, "rid": request id, "ts": t, "route": r}`` begin;
``{"p": id, "key": k, "model": m, "dep": d, "prompt": n, "completion": n}`` progress;
``{"e": {event}}`` end; ``{"d": [ids]}`` delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.store.base import StatsEvent

log = logging.getLogger("gateway.spool")

SUFFIX = ".spool"
COMPACT_BYTES = 1024 * 1024
CRASH_TERMINATION = "worker_crash"
CRASH_STATUS = 500


@dataclass(slots=True)
class Recovery:
    """What a dead worker's spool held."""

    ended: list[StatsEvent] = field(default_factory=list)  # ended, not yet delivered
    crashes: list[StatsEvent] = field(default_factory=list)  # in flight when the worker died

    @property
    def events(self) -> list[StatsEvent]:
        """Everything still to deliver."""
        return self.ended + self.crashes


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    with path.open("rb") as spool:
        for line in spool:
            if not line.endswith(b"\n"):
                return  # a torn last write: the request it describes had not been answered
            with contextlib.suppress(orjson.JSONDecodeError):
                yield orjson.loads(line)


def read_spool(path: Path, *, now: float | None = None) -> Recovery:
    """The undelivered events of a spool file, with a crash event for each unfinished request."""
    now = time.time() if now is None else now
    begun: dict[str, dict[str, Any]] = {}
    ended: dict[str, StatsEvent] = {}
    delivered: set[str] = set()
    for line in _lines(path):
        if "b" in line:
            begun[line["b"]] = line
        elif "p" in line:
            if line["p"] in begun:
                begun[line["p"]].update(line)
        elif "e" in line:
            try:
                event = StatsEvent.from_dict(line["e"])
            except TypeError:
                log.error("unreadable event in a spool; skipped", extra={"spool": str(path)})
                continue
            ended[event.event_id] = event
        elif "d" in line:
            delivered.update(line["d"])
    return Recovery(
        ended=[e for i, e in ended.items() if i not in delivered],
        crashes=[_crash_event(i, b, now) for i, b in begun.items() if i not in ended],
    )


def _crash_event(event_id: str, begin: dict[str, Any], now: float) -> StatsEvent:
    return StatsEvent(
        request_id=begin.get("rid", ""),
        key_id=begin.get("key") or "unknown",
        model=begin.get("model") or "unknown",
        deployment=begin.get("dep"),
        route=begin.get("route", ""),
        status=CRASH_STATUS,
        prompt_tokens=int(begin.get("prompt", 0)),
        completion_tokens=int(begin.get("completion", 0)),
        tokens_exact=False,
        cache_hit=False,
        latency_ms=max(0.0, now - float(begin["ts"])) * 1000,
        ttfb_ms=None,
        termination=CRASH_TERMINATION,
        ts=float(begin["ts"]),
        event_id=event_id,
    )


def _try_lock(path: Path) -> int | None:
    """An fd holding the file's exclusive lock, or None when a live worker holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def recover_orphans(directory: Path) -> Recovery:
    """Close every orphaned spool (crash events written into it) and say what it held.

    The supervisor calls this when a worker dies; the files stay for a worker to adopt."""
    total = Recovery()
    if not directory.is_dir():
        return total
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        fd = _try_lock(path)
        if fd is None:
            continue
        try:
            found = read_spool(path)
            if found.crashes:  # from now on they are ended events like any other
                os.write(fd, b"".join(b'{"e":' + orjson.dumps(e) + b"}\n" for e in found.crashes))
                os.fsync(fd)
        finally:
            os.close(fd)
        total.ended += found.ended
        total.crashes += found.crashes
    return total


class Spool:
    """This worker's spool file, plus the orphaned ones it adopted until they are delivered."""

    def __init__(self, directory: Path, *, fsync_interval: float) -> None:
        self._directory = directory
        self._fsync_interval = fsync_interval
        self._path: Path | None = None
        self._fd = -1
        self._dirty = False
        self._live: set[str] = set()
        self._undelivered: set[str] = set()
        self._orphans: dict[Path, tuple[int, set[str]]] = {}  # path -> (lock fd, ids pending)
        self._compacted_size = 0
        self._task: asyncio.Task[None] | None = None
        self.write_errors = 0

    @property
    def path(self) -> Path | None:
        """This worker's own spool file."""
        return self._path

    def open(self) -> list[StatsEvent]:
        """Create this worker's file and adopt orphaned ones; returns their undelivered events."""
        self._directory.mkdir(parents=True, exist_ok=True)
        adopted: list[StatsEvent] = []
        for path in sorted(self._directory.glob(f"*{SUFFIX}")):
            fd = _try_lock(path)
            if fd is None:
                continue
            found = read_spool(path)
            if not found.events:
                path.unlink(missing_ok=True)
                os.close(fd)
                continue
            self._orphans[path] = (fd, {e.event_id for e in found.events})
            adopted += found.events
        if adopted:
            log.warning(
                "replaying usage from the spool of a worker that died",
                extra={"events": len(adopted), "files": len(self._orphans)},
            )
        self._path = self._directory / f"{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return adopted

    # -- the request side: one write each -------------------------------------------------------

    def _append(self, line: bytes) -> None:
        try:
            os.write(self._fd, line)
        except OSError:
            self.write_errors += 1  # a full disk: the event still goes to its sink from memory
            return
        self._dirty = True

    def begin(self, event_id: str, request_id: str, ts: float, route: str) -> None:
        """A request started."""
        self._live.add(event_id)
        line = {"b": event_id, "rid": request_id, "ts": ts, "route": route}
        self._append(orjson.dumps(line) + b"\n")

    def progress(self, event_id: str, fields: dict[str, Any]) -> None:
        """What a live request has learned so far (key, model, tokens)."""
        self._append(orjson.dumps({"p": event_id, **fields}) + b"\n")

    def ended(self, event: StatsEvent) -> None:
        """A request ended: its event counts as published from now on."""
        self._live.discard(event.event_id)
        self._undelivered.add(event.event_id)
        self._append(b'{"e":' + orjson.dumps(event) + b"}\n")

    def delivered(self, ids: list[str]) -> None:
        """The sink handed these events on (committed to the store, or added to the bus)."""
        own = [i for i in ids if i in self._undelivered]
        if own:
            self._undelivered.difference_update(own)
            self._append(orjson.dumps({"d": own}) + b"\n")
        if len(own) < len(ids) and self._orphans:
            for path, (fd, pending) in list(self._orphans.items()):
                pending.difference_update(ids)
                if not pending:
                    path.unlink(missing_ok=True)
                    os.close(fd)
                    del self._orphans[path]

    # -- fsync and compaction, off the request path ---------------------------------------------

    def start(self) -> None:
        """Start fsyncing (and compacting) in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-spool")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._fsync_interval)
            await self.sync()
            self._maybe_compact()

    async def sync(self) -> None:
        """fsync what was written since the last time."""
        if self._dirty and self._fd >= 0:
            self._dirty = False
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.fsync, self._fd)

    def _maybe_compact(self) -> None:
        """Rewrite the file with only what is still open once it grew past a threshold."""
        if self._path is None:
            return
        size = os.fstat(self._fd).st_size
        if size < max(COMPACT_BYTES, 2 * self._compacted_size):
            return
        keep = self._live | self._undelivered
        fresh = self._path.with_suffix(".compacting")
        with fresh.open("wb") as out:
            for line in _lines(self._path):
                key = line.get("b") or line.get("p") or (line.get("e") or {}).get("event_id")
                if key in keep:
                    out.write(orjson.dumps(line) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        fd = os.open(fresh, os.O_WRONLY | os.O_APPEND)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(fresh, self._path)
        os.close(self._fd)
        self._fd = fd
        self._compacted_size = os.fstat(fd).st_size

    async def close(self) -> None:
        """Stop; the file is deleted when everything in it was delivered, else kept for replay."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._fd < 0:
            return
        await self.sync()
        if not self._undelivered and not self._live and self._path is not None:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1
        for fd, _ in self._orphans.values():
            os.close(fd)
        self._orphans.clear()

    def statistics(self) -> dict[str, int]:
        """Counters for health and logs."""
        return {
            "live": len(self._live),
            "undelivered": len(self._undelivered),
            "orphans": len(self._orphans),
            "write_errors": self.write_errors,
        }
