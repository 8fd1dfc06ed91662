"""Load shedding: this worker's event-loop lag and listen queue, sampled by one timer.

A worker past what it can serve used to let new connections wait silently in the kernel's accept
queue (12 s measured). Here a timer every ``INTERVAL`` seconds measures how late it fires (the lag
every callback and every queued connection suffers) and, on Linux, how many connections wait in
the listen queue (``TCP_INFO`` on a listening socket reports the queue in ``tcpi_unacked``). While
either is over its bound, new /v1 requests get an immediate 503 ``overloaded`` with Retry-After,
counted in ``llm_gateway_shed_total``; the streams already running are left alone.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from gateway import metrics

INTERVAL = 0.05
DECAY = 0.7  # per tick: a lag spike keeps counting for a few ticks, not for one sample only
_TCP_INFO_QUEUE = struct.Struct("=I")
_QUEUE_OFFSET = 24  # tcpi_unacked: after 8 one-byte fields and rto, ato, snd_mss, rcv_mss


class LoadMonitor:
    """Says whether the worker should refuse new requests right now."""

    def __init__(
        self, *, max_lag: float, max_queue: int, listener: socket.socket | None = None
    ) -> None:
        self.max_lag = max_lag
        self.max_queue = max_queue
        self.listener = listener
        self.lag = 0.0
        self.queue = 0
        self._timer: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def overloaded(self) -> str | None:
        """Why new requests are refused now ("lag", "queue"), or None.

        The lag counts the overdue tick too: in a burst the whole burst is handled in one loop
        iteration, before the timer can fire, so the last sample alone would admit all of it.
        The wall clock, because the loop's own clock stands still within an iteration.
        """
        if self.lag > self.max_lag or time.monotonic() - self._expected > self.max_lag:
            return "lag"
        if self.queue > self.max_queue:
            return "queue"
        return None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._expected = time.monotonic() + INTERVAL
        self._timer = self._loop.call_later(INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = time.monotonic()
        self.lag = max(now - self._expected, self.lag * DECAY)
        self.queue = listen_queue(self.listener) if self.listener is not None else 0
        metrics.LOOP_LAG.set(self.lag)
        metrics.ACCEPT_QUEUE.set(self.queue)
        self._expected = now + INTERVAL
        self._timer = loop.call_later(INTERVAL, self._tick)


def listen_queue(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (0 where it cannot be read)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
    except OSError:
        return 0
    if len(info) < _QUEUE_OFFSET + 4:
        return 0
    return int(_TCP_INFO_QUEUE.unpack_from(info, _QUEUE_OFFSET)[0])
