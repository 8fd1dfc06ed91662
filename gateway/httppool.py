"""Keep-alive connections to one deployment (the transport-level client's pool): a request gets
the most recently used idle connection, or a new one within the connect timeout."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping

from gateway.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.httpclient import Connection, Endpoint, Exchange

IDLE_SECONDS = 30.0  # an idle pooled connection older than this is closed, not reused


class ConnectionPool:
    """Keep-alive connections to one deployment, reused most recent first."""

    def __init__(self, endpoint: Endpoint, *, max_idle: int, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: collections.deque[Connection] = collections.deque()

    async def request(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        name: str,
        first_byte: float,
    ) -> Exchange:
        """POST ``body`` and return the exchange once the response headers arrived.

        A reused connection that the upstream had already closed is retried once on a new one.
        """
        head = self._head(path, len(body), headers)
        async with asyncio.timeout(first_byte):
            for attempt in range(2):
                conn, reused = await self._connection(name)
                exchange = Exchange(conn)
                conn.send(exchange, head, body)
                try:
                    await exchange.headers_done
                except UpstreamUnreachable:
                    if reused and attempt == 0:
                        continue  # a stale keep-alive connection: once more, on a new one
                    raise
                except BaseException:
                    exchange.close()
                    raise
                return exchange
        raise AssertionError("unreachable")

    def _head(self, path: str, length: int, headers: Mapping[str, str]) -> bytes:
        endpoint = self.endpoint
        lines = [
            f"POST {endpoint.prefix}{path} HTTP/1.1",
            f"Host: {endpoint.host_header}",
            f"Content-Length: {length}",
            "Accept-Encoding: identity",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connection(self, name: str) -> tuple[Connection, bool]:
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn, True
            conn.abort()
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: Connection(self),
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.ssl,
                    server_hostname=endpoint.host if endpoint.ssl else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"Connecting to deployment {name!r} timed out.") from exc
        except OSError as exc:
            raise UpstreamUnreachable(
                f"Deployment {name!r} is unreachable ({type(exc).__name__})."
            ) from exc
        return protocol, False

    def idle(self, conn: Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()
