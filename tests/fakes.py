"""Hand-written fakes for the seams in gateway.upstream (no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import Deployment
from gateway.errors import GatewayError
from gateway.store.base import StoreUnavailable, UsageDelta


@dataclass
class Step:
    """One thing a scripted upstream does: wait, then yield bytes (or raise)."""

    data: bytes = b""
    delay: float = 0.0
    error: GatewayError | None = None


class ScriptedResponse:
    """An UpstreamResponse that plays a script of chunks."""

    def __init__(self, steps: Sequence[Step], content_type: str) -> None:
        self.status = 200
        self.content_type = content_type
        self._steps = list(steps)
        self.closed = False
        self.reads = 0
        self._ready_at: float | None = None

    async def read_chunk(self) -> bytes:
        self.reads += 1
        if not self._steps:
            return b""
        # Like a socket read, a cancelled read loses nothing and does not restart the wait.
        step = self._steps[0]
        loop = asyncio.get_running_loop()
        if self._ready_at is None:
            self._ready_at = loop.time() + step.delay
        await asyncio.sleep(max(0.0, self._ready_at - loop.time()))
        self._steps.pop(0)
        self._ready_at = None
        if step.error is not None:
            raise step.error
        return step.data

    def read_buffered(self) -> bytes:
        return b""

    async def read_body(self, limit: int) -> bytes:
        return b"".join(step.data for step in self._steps)

    def close(self, *, complete: bool = False) -> None:
        self.closed = True


@dataclass
class FakeUpstreams:
    """Answers every send() with the next scripted response, recording the bodies sent."""

    responses: list[ScriptedResponse] = field(default_factory=list)
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    error: GatewayError | None = None

    def script(self, *steps: Step, content_type: str = "text/event-stream") -> ScriptedResponse:
        response = ScriptedResponse(steps, content_type)
        self.responses.append(response)
        return response

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def in_flight(self) -> dict[str, int]:
        return {}

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> ScriptedResponse:
        self.sent.append((deployment.name, path, body))
        if self.error is not None:
            raise self.error
        return self.responses.pop(0)


class FakeStore:
    """A Store in memory that applies each batch id once and can be told to fail."""

    def __init__(self) -> None:
        self.applied: dict[str, list[UsageDelta]] = {}
        self.calls = 0
        self.down = False
        self.fail_after_apply = 0  # apply, then raise: a partial failure seen by the caller

    async def apply_usage(self, batch_id: str, deltas: list[UsageDelta]) -> bool:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("fake store is down")
        fresh = batch_id not in self.applied
        if fresh:
            self.applied[batch_id] = deltas
        if self.fail_after_apply:
            self.fail_after_apply -= 1
            raise StoreUnavailable("fake store failed after applying")
        return fresh

    def requests(self) -> int:
        return sum(d.requests for deltas in self.applied.values() for d in deltas)
