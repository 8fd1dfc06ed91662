"""Hand-written fakes for the seams in gateway.upstream and the store (no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import Deployment
from gateway.errors import GatewayError
from gateway.store.base import StatsEvent, StoreUnavailable
from gateway.stream import BodyConsumer


@dataclass
class Step:
    """One thing a scripted upstream does: wait, then yield bytes (or raise)."""

    data: bytes = b""
    delay: float = 0.0
    error: GatewayError | None = None


class ScriptedResponse:
    """An UpstreamResponse that plays a script of chunks to its consumer, as a socket would."""

    def __init__(self, steps: Sequence[Step], content_type: str) -> None:
        self.status = 200
        self.content_type = content_type
        self._steps = list(steps)
        self.closed = False
        self.paused = False
        self._task: asyncio.Task[None] | None = None

    def stream_to(self, consumer: BodyConsumer) -> None:
        self._task = asyncio.get_running_loop().create_task(self._play(consumer))

    async def _play(self, consumer: BodyConsumer) -> None:
        while self._steps:
            step = self._steps.pop(0)
            await asyncio.sleep(step.delay)
            while self.paused:
                await asyncio.sleep(0.005)
            if self.closed:
                return
            if step.error is not None:
                consumer.end(step.error)
                return
            consumer.body(step.data)
        if not self.closed:
            consumer.end(None)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def read_body(self, limit: int) -> bytes:
        return b"".join(step.data for step in self._steps)

    def close(self, *, complete: bool = False) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()


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
    """A Store in memory that applies each event id once and can be told to fail."""

    def __init__(self) -> None:
        self.applied: dict[str, StatsEvent] = {}
        self.calls = 0
        self.down = False
        self.fail_after_apply = 0  # apply, then raise: a partial failure seen by the caller

    async def record_events(self, events: list[StatsEvent]) -> int:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("fake store is down")
        fresh = [e for e in events if e.event_id not in self.applied]
        self.applied.update((e.event_id, e) for e in fresh)
        if self.fail_after_apply:
            self.fail_after_apply -= 1
            raise StoreUnavailable("fake store failed after applying")
        return len(fresh)

    def requests(self) -> int:
        return len(self.applied)
