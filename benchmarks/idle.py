"""Many open, idle streams, held by several client processes.

A process has at most 20,000 file descriptors here, and a relay holds two sockets per stream, so
the client side is spread over processes of ``PER_PROCESS`` connections each. Each holder opens
its connections, sends one request on each (a stream that sends its first event, then nothing),
reports how many saw their first event, and keeps them open until told to close. A stream the
target sheds (503) is asked for again after a second, as a client would. Streams are
opened at ``OPEN_RATE`` per second in all, so what is measured is streams held open, not how a
target copes with thousands of connections arriving in the same millisecond.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection as Pipe

import uvloop

from benchmarks import loadgen

PER_PROCESS = 2000
OPEN_RATE = 1000.0  # streams opened per second, all holders together
OPEN_TIMEOUT = 30.0  # after the last one was opened
BATCH = 20
RETRIES = 3  # a stream refused with 503 (load shedding) is asked for again, this many times
RETRY_AFTER = 1.0


class Holders:
    """Client processes holding ``count`` streams open on ``port`` until :meth:`close`."""

    def __init__(self, port: int, request: bytes, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Pipe] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        shares = range(0, count, PER_PROCESS)
        rate = OPEN_RATE / len(shares)
        for first in shares:
            ours, theirs = context.Pipe()
            share = min(PER_PROCESS, count - first)
            process = context.Process(target=hold, args=(port, request, share, rate, theirs))
            process.start()
            self._pipes.append(ours)
            self._processes.append(process)

    async def opened(self) -> tuple[int, int]:
        """Wait until every holder reported: the streams that saw their first event, and the
        503s (shed) they met on the way."""
        total = refused = 0
        for pipe, process in zip(self._pipes, self._processes, strict=True):
            while not pipe.poll():
                if not process.is_alive():
                    break  # it failed (its traceback is on stderr): none of its streams count
                await asyncio.sleep(0.05)
            else:
                opened, shed = pipe.recv()
                total, refused = total + opened, refused + shed
        return total, refused

    def close(self) -> None:
        """Tell every holder to close its connections, and wait for them to exit."""
        for pipe, process in zip(self._pipes, self._processes, strict=True):
            if process.is_alive():
                pipe.send("close")
        for process in self._processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def hold(port: int, request: bytes, count: int, rate: float, pipe: Pipe) -> None:
    """A holder process's entry point: open ``count`` streams at ``rate`` per second."""
    uvloop.run(_hold(port, request, count, rate, pipe))


async def _hold(port: int, request: bytes, count: int, rate: float, pipe: Pipe) -> None:
    conns: list[loadgen.Connection] = []
    exchanges: list[loadgen.Exchange] = []
    started = time.monotonic()
    while len(conns) < count:
        batch = min(BATCH, count - len(conns))
        try:
            opened = await asyncio.gather(*(loadgen.connect(port) for _ in range(batch)))
        except OSError:
            break
        conns.extend(opened)
        exchanges.extend(conn.send(request) for conn in opened)
        await asyncio.sleep(max(0.0, started + len(conns) / rate - time.monotonic()))
    refused = 0
    for attempt in range(RETRIES + 1):
        deadline = time.monotonic() + OPEN_TIMEOUT
        while any(e.first_event is None for e in exchanges) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        shed = [i for i, e in enumerate(exchanges) if e.status == 503]
        if not shed or attempt == RETRIES:
            break
        refused += len(shed)
        await asyncio.sleep(RETRY_AFTER)  # as a client honouring Retry-After would
        for index in shed:
            transport = conns[index].transport
            if transport is not None:
                transport.close()
            conns[index] = await loadgen.connect(port)
            exchanges[index] = conns[index].send(request)
    held = sum(1 for e in exchanges if e.first_event is not None and e.status == 200)
    pipe.send((held, refused))
    while not pipe.poll():
        await asyncio.sleep(0.05)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0.2)
