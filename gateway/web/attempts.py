"""The upstream pool as the router sees it: every attempt counted in the request's trail, traced.

A thin wrapper around any :class:`~gateway.upstream.Upstreams`, so the router and the client stay
as they are: one extra call per attempt, nothing per event. (A failed attempt is warned about by
the router, which alone knows when an attempt failed: up to the stream's first event.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway import trail
from gateway.config import Deployment
from gateway.stream import UpstreamResponse
from gateway.upstream import Upstreams

if TYPE_CHECKING:
    from gateway.web.telemetry import Tracing


class ObservedUpstreams:
    """Delegates to ``inner``; counts each attempt in the request's trail and, with tracing on,
    wraps it in a client span (until the upstream's headers)."""

    def __init__(self, inner: Upstreams, tracing: Tracing | None = None) -> None:
        self._inner = inner
        self._tracing = tracing

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    def in_flight(self) -> Mapping[str, int]:
        return self._inner.in_flight()

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> UpstreamResponse:
        """Send one attempt through the inner pool."""
        trail.attempt_sent(deployment.name)
        if self._tracing is None:
            return await self._inner.send(deployment, path, body, headers=headers, api_key=api_key)
        return await self._tracing.attempt(
            deployment.name,
            lambda: self._inner.send(deployment, path, body, headers=headers, api_key=api_key),
        )
