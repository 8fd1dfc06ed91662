"""Many open, idle streams, held by several client processes.

A process has at most 20,000 file descriptors here, and a relay holds two sockets per stream, so
the client side is spread over processes of ``PER_PROCESS`` connections each. Each holder opens
its connections, sends one request on each (a stream that sends its first event, then nothing),
reports how many saw their first event, and keeps them open until told to close.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection as Pipe

import uvloop

from benchmarks import loadgen

PER_PROCESS = 2000
OPEN_TIMEOUT = 60.0


class Holders:
    """Client processes holding ``count`` streams open on ``port`` until :meth:`close`."""

    def __init__(self, port: int, request: bytes, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Pipe] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for first in range(0, count, PER_PROCESS):
            ours, theirs = context.Pipe()
            share = min(PER_PROCESS, count - first)
            process = context.Process(target=hold, args=(port, request, share, theirs))
            process.start()
            self._pipes.append(ours)
            self._processes.append(process)

    async def opened(self) -> int:
        """Wait until every holder reported; the streams that saw their first event."""
        total = 0
        for pipe in self._pipes:
            while not pipe.poll():
                await asyncio.sleep(0.05)
            total += int(pipe.recv())
        return total

    def close(self) -> None:
        """Tell every holder to close its connections, and wait for them to exit."""
        for pipe in self._pipes:
            pipe.send("close")
        for process in self._processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def hold(port: int, request: bytes, count: int, pipe: Pipe) -> None:
    """A holder process's entry point."""
    uvloop.run(_hold(port, request, count, pipe))


async def _hold(port: int, request: bytes, count: int, pipe: Pipe) -> None:
    conns = []
    for _ in range(count):
        try:
            conns.append(await loadgen.connect(port))
        except OSError:
            break
    exchanges = [conn.send(request) for conn in conns]
    deadline = time.monotonic() + OPEN_TIMEOUT
    while any(e.first_event is None for e in exchanges) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pipe.send(sum(1 for e in exchanges if e.first_event is not None and e.status == 200))
    while not pipe.poll():
        await asyncio.sleep(0.05)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0.2)
