"""One worker: uvloop, an aiohttp AppRunner and a SO_REUSEPORT site, drained on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import uvloop
from aiohttp import web

from gateway.capacity import raise_fd_limit
from gateway.config import Config
from gateway.logs import configure_logging
from gateway.web import make_app
from gateway.web.access import JsonAccessLogger
from gateway.web.protocol import GatewayRunner
from gateway.web.state import LOAD, WORKER_STATE

log = logging.getLogger("gateway.server")

# After answering a request whose body was not read (413, 408), aiohttp keeps reading and
# discarding it for this long before closing, so the client is not reset before it reads the answer.
# aiohttp's default of 10 s would keep a slow-body connection around long after its 408.
LINGERING_SECONDS = 2.0


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """The worker's own listening socket (SO_REUSEPORT: every worker binds the same port, the
    kernel spreads connections); kept so load shedding can read its accept queue."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def run_worker(config: Config, index: int, port: int) -> None:
    """Process entry point of a worker: serve until SIGTERM or SIGINT, then drain and return."""
    configure_logging(config.server.log_level)
    raise_fd_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, port=port, index=index))


async def serve(config: Config, *, port: int, index: int = 0) -> None:
    """Listen on the shared port until told to stop, then drain in-flight work."""
    settings = config.server
    app = make_app(config)
    runner = GatewayRunner(
        app,
        # Without it a client that disconnects does not cancel its handler (PITFALLS.md).
        handler_cancellation=True,
        # Also bounds a connection whose request headers never finish arriving.
        keepalive_timeout=settings.header_timeout,
        shutdown_timeout=settings.drain_grace,
        lingering_time=LINGERING_SECONDS,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("gateway.access") if settings.access_log else None,
        handle_signals=False,
    )
    await runner.setup()
    listener = listen(settings.host, port, settings.backlog)
    site = web.SockSite(runner, listener)
    await site.start()
    app[LOAD].listener = listener  # load shedding reads its accept queue
    log.info("worker ready", extra={"worker": index, "pid": os.getpid(), "port": port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    # Drain: readiness turns 503 while the listener stays open for the announce period (a
    # balancer that only watches readiness stops sending meanwhile), then the listening socket
    # closes (the other workers and instances take new connections), live streams get their
    # grace period, then whatever is left ends.
    app[WORKER_STATE].draining = True
    log.info(
        "worker draining",
        extra={
            "worker": index,
            "announce_s": settings.drain_announce,
            "grace_s": settings.drain_grace,
        },
    )
    if settings.drain_announce:
        await asyncio.sleep(settings.drain_announce)
    await runner.cleanup()
    log.info("worker stopped", extra={"worker": index})
