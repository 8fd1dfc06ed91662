"""The pooled upstream client: a session per deployment, explicit limits, translated errors.

aiohttp's defaults are wrong for LLM streams (see PITFALLS.md): a 300 s total timeout and a silent
queue behind 100 connections. Here there is no total timeout, the connect timeout is per deployment,
time to first byte is bounded by the caller, and a deployment at its connection limit answers a fast
503 instead of queueing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from gateway import metrics
from gateway.config import Config, Deployment
from gateway.errors import (
    ServiceUnavailable,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.providers.inprocess import InProcessProvider

READ_CHUNK_BYTES = 512


class UpstreamResponse(Protocol):
    """An upstream answer being read. ``close()`` releases it; safe to call more than once."""

    status: int
    content_type: str

    async def read_chunk(self) -> bytes:
        """Up to 512 bytes of what has arrived; b"" at the end of the body."""
        ...

    def read_buffered(self) -> bytes:
        """Up to 512 bytes that have already arrived, without waiting; b"" when there are none."""
        ...

    async def read_body(self, limit: int) -> bytes:
        """The whole body, refusing one larger than ``limit`` bytes."""
        ...

    def close(self, *, complete: bool = False) -> None:
        """Release the response; an unfinished one aborts its connection (the upstream sees it).

        ``complete``: the body was read to its logical end ([DONE]), so the connection may be
        kept for reuse once its transport-level end arrives.
        """
        ...


class Upstreams(Protocol):
    """What the handlers need from the upstream side; tests substitute a scripted fake."""

    async def start(self) -> None:
        """Open connections pools (called inside the running loop)."""
        ...

    async def close(self) -> None:
        """Close everything."""
        ...

    def in_flight(self) -> Mapping[str, int]:
        """Requests in flight per deployment."""
        ...

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived (``api_key`` overrides
        the deployment's first key)."""
        ...


class _Lease:
    """Counts a deployment's requests in flight, refusing past the limit instead of queueing."""

    __slots__ = ("gauge", "in_flight", "limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_flight = 0
        self.gauge = metrics.UPSTREAM_IN_FLIGHT.labels(name)

    def acquire(self) -> None:
        if self.in_flight >= self.limit:
            raise ServiceUnavailable(
                f"Deployment {self.name!r} is at its limit of {self.limit} concurrent requests.",
                code="upstream_pool_full",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        self.gauge.inc()

    def release(self) -> None:
        self.in_flight -= 1
        self.gauge.dec()


class HttpUpstreamResponse:
    """An aiohttp response with reads translated into gateway errors."""

    __slots__ = ("_lease", "_response", "content_type", "status")

    def __init__(self, response: aiohttp.ClientResponse, lease: _Lease) -> None:
        self._response = response
        self._lease: _Lease | None = lease
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    async def read_chunk(self) -> bytes:
        try:
            return await self._response.content.read(READ_CHUNK_BYTES)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamProtocolError(
                "The upstream closed the connection in the middle of the response."
            ) from exc

    def read_buffered(self) -> bytes:
        try:
            return self._response.content.read_nowait(READ_CHUNK_BYTES)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamProtocolError(
                "The upstream closed the connection in the middle of the response."
            ) from exc

    async def read_body(self, limit: int) -> bytes:
        body = bytearray()
        while chunk := await self._response.content.readany():
            body += chunk
            if len(body) > limit:
                raise UpstreamProtocolError(
                    f"The upstream response is larger than the limit of {limit} bytes."
                )
        return bytes(body)

    def close(self, *, complete: bool = False) -> None:
        if self._lease is None:
            return
        self._lease.release()
        self._lease = None
        # A finished response goes back to the pool; an unfinished one must not be reused.
        if self._response.content.at_eof():
            self._response.release()
        elif complete:
            # After [DONE] the chunked terminator is usually a packet behind: wait for it in the
            # background rather than throw away a warm connection.
            task = asyncio.get_running_loop().create_task(_release_at_eof(self._response))
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)
        else:
            self._response.close()


_releasing: set[asyncio.Task[None]] = set()
RELEASE_WAIT_SECONDS = 1.0


async def _release_at_eof(response: aiohttp.ClientResponse) -> None:
    """Read what follows a stream's last event, then give the connection back to the pool."""
    try:
        async with asyncio.timeout(RELEASE_WAIT_SECONDS):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        response.close()
        return
    response.release()


class UpstreamPool:
    """Owns the upstream sessions of one worker; ``send`` opens a request to a deployment."""

    def __init__(self, config: Config) -> None:
        self._deployments = dict(config.deployments)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._leases = {
            name: _Lease(name, d.max_connections) for name, d in self._deployments.items()
        }
        self._inprocess = InProcessProvider()

    async def start(self) -> None:
        """Create one session per network deployment (a session must be made inside the loop)."""
        for name, deployment in self._deployments.items():
            if deployment.in_process:
                continue
            connector = aiohttp.TCPConnector(
                limit=deployment.max_connections,
                limit_per_host=0,
                keepalive_timeout=30,
                enable_cleanup_closed=True,
            )
            self._sessions[name] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=deployment.timeouts.connect),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )

    async def close(self) -> None:
        """Close every session and its connections."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def in_flight(self) -> Mapping[str, int]:
        """Requests in flight per deployment."""
        return {name: lease.in_flight for name, lease in self._leases.items()}

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to the deployment and return once response headers arrived.

        Raises UpstreamStatusError for an error status (its body read, bounded),
        UpstreamUnreachable, UpstreamTimeout (connect, or no headers within the first-byte
        timeout) or ServiceUnavailable (the deployment is at its connection limit).
        """
        lease = self._leases[deployment.name]
        lease.acquire()
        if deployment.in_process:
            return await self._inprocess.send(path, body, headers or {}, lease.release)
        try:
            response = await self._post(deployment, path, body, headers, api_key)
        except BaseException:
            lease.release()
            raise
        wrapped = HttpUpstreamResponse(response, lease)
        if response.status >= 400:
            try:
                async with asyncio.timeout(deployment.timeouts.first_byte):
                    error_body = await wrapped.read_body(64 * 1024)
            except (TimeoutError, UpstreamProtocolError):
                error_body = b""
            finally:
                wrapped.close()
            raise UpstreamStatusError(
                response.status,
                error_body,
                content_type=wrapped.content_type,
                retry_after=response.headers.get("Retry-After"),
            )
        return wrapped

    async def _post(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        extra_headers: Mapping[str, str] | None,
        api_key: str | None,
    ) -> aiohttp.ClientResponse:
        request_headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        key = api_key or deployment.api_key
        if key:
            request_headers["Authorization"] = f"Bearer {key}"
        if extra_headers:
            request_headers.update(extra_headers)
        session = self._sessions[deployment.name]
        url = deployment.base_url + path
        try:
            async with asyncio.timeout(deployment.timeouts.first_byte):
                return await session.post(url, data=body, headers=request_headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"Deployment {deployment.name!r} did not answer within "
                f"{deployment.timeouts.first_byte:g} s."
            ) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamTimeout(
                f"Connecting to deployment {deployment.name!r} timed out."
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"Deployment {deployment.name!r} is unreachable ({type(exc).__name__})."
            ) from exc
