"""The upstream side of a worker: a connection pool per deployment, explicit limits, errors
translated into the gateway's own.

The transport-level client is :mod:`gateway.httpclient`. Here: a deployment at its connection limit
answers a fast 503 instead of queueing; an error status is read (bounded) and raised as
UpstreamStatusError; a redirect or a compressed answer is a protocol error (never followed, never
inflated); the demo model is answered in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from gateway import metrics
from gateway.config import Config, Deployment
from gateway.errors import (
    ServiceUnavailable,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.httpclient import Endpoint, Exchange
from gateway.httppool import ConnectionPool
from gateway.mock.inprocess import InProcessProvider
from gateway.propagation import trace_headers
from gateway.stream import BodyConsumer, UpstreamResponse

ERROR_BODY_BYTES = 64 * 1024


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


class _LeasedResponse:
    """An exchange that gives its deployment's connection slot back when closed."""

    __slots__ = ("_exchange", "_lease", "content_type", "status")

    def __init__(self, exchange: Exchange, lease: _Lease) -> None:
        self._exchange = exchange
        self._lease: _Lease | None = lease
        self.status = exchange.status
        self.content_type = exchange.content_type

    def stream_to(self, consumer: BodyConsumer) -> None:
        self._exchange.stream_to(consumer)

    def pause(self) -> None:
        self._exchange.pause()

    def resume(self) -> None:
        self._exchange.resume()

    async def read_body(self, limit: int) -> bytes:
        return await self._exchange.read_body(limit)

    def close(self, *, complete: bool = False) -> None:
        self._exchange.close(complete=complete)
        if self._lease is not None:
            self._lease.release()
            self._lease = None


class UpstreamPool:
    """Owns the upstream connection pools of one worker; ``send`` opens a request."""

    def __init__(self, config: Config) -> None:
        self._deployments = dict(config.deployments)
        self._pools: dict[str, ConnectionPool] = {}
        self._leases = {
            name: _Lease(name, d.max_connections) for name, d in self._deployments.items()
        }
        self._inprocess = InProcessProvider(allow_overrides=config.server.mock_overrides_allowed)

    async def start(self) -> None:
        """Create one pool per network deployment (inside the running loop)."""
        for name, deployment in self._deployments.items():
            if deployment.in_process:
                continue
            self._pools[name] = ConnectionPool(
                Endpoint(deployment.base_url),
                max_idle=deployment.max_connections,
                connect_timeout=deployment.timeouts.connect,
            )

    async def close(self) -> None:
        """Close every idle connection (streams still running abort their own)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

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
        timeout), UpstreamProtocolError (a redirect, a compressed or malformed answer) or
        ServiceUnavailable (the deployment is at its connection limit).
        """
        lease = self._leases[deployment.name]
        lease.acquire()
        if deployment.in_process:
            return await self._inprocess.send(path, body, headers or {}, lease.release)
        try:
            exchange = await self._post(deployment, path, body, headers, api_key)
        except BaseException:
            lease.release()
            raise
        response = _LeasedResponse(exchange, lease)
        try:
            _check(deployment, exchange)
        except BaseException:
            response.close()
            raise
        if exchange.status >= 400:
            try:
                async with asyncio.timeout(deployment.timeouts.first_byte):
                    error_body = await exchange.read_body(ERROR_BODY_BYTES)
            except (TimeoutError, UpstreamProtocolError):
                error_body = b""
            finally:
                response.close()
            raise UpstreamStatusError(
                exchange.status,
                error_body,
                content_type=exchange.content_type,
                retry_after=exchange.retry_after,
                deployment=deployment.name,
            )
        return response

    async def _post(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        extra_headers: Mapping[str, str] | None,
        api_key: str | None,
    ) -> Exchange:
        request_headers = {"Content-Type": "application/json"}
        key = api_key or deployment.api_key
        if key:
            request_headers["Authorization"] = f"Bearer {key}"
        if extra_headers:
            request_headers.update(extra_headers)
        request_headers.update(trace_headers())
        pool = self._pools[deployment.name]
        try:
            return await pool.request(
                path,
                body,
                request_headers,
                name=deployment.name,
                first_byte=deployment.timeouts.first_byte,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"Deployment {deployment.name!r} did not answer within "
                f"{deployment.timeouts.first_byte:g} s."
            ) from exc


def _check(deployment: Deployment, exchange: Exchange) -> None:
    """Refuse what the gateway never acts on: a redirect, a body it would have to inflate."""
    if 300 <= exchange.status < 400:
        raise UpstreamProtocolError(
            f"Deployment {deployment.name!r} answered with a redirect ({exchange.status}); "
            "redirects are not followed."
        )
    encoding = exchange.content_encoding
    if encoding not in (None, "", "identity"):
        raise UpstreamProtocolError(
            f"Deployment {deployment.name!r} sent a compressed answer ({encoding}) although "
            "the gateway asked for identity."
        )
