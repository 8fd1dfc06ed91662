"""What an event source keeps for sinks that come later, and how it hands it over."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.recording import Recording


class Calls:
    """A sink that records each deliver call as it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, list[bytes], bool]] = []

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        self.calls.append((framed, payloads, usage_only))

    def keepalive(self) -> None:
        return None

    def finish(self, error: GatewayError | None) -> None:
        return None


def event(n: int) -> tuple[bytes, list[bytes], bool]:
    return b"data: %d\n\n" % n, [b"%d" % n], False


def test_a_late_sink_gets_runs_of_batches_in_one_call_each() -> None:
    """Ten batches kept before the sink came arrive in one call (one client write), a usage-only
    batch in a call of its own, in order, with every payload."""
    recording = Recording(0)
    for n in range(10):
        recording.add(event(n), n * 0.01, shared=False)
    recording.add((b"data: usage\n\n", [b"usage"], True), 0.1, shared=False)
    recording.add(event(10), 0.11, shared=False)
    sink = Calls()
    recording.replay_to(sink)
    assert [len(payloads) for _, payloads, _ in sink.calls] == [10, 1, 1]
    assert [usage_only for _, _, usage_only in sink.calls] == [False, True, False]
    assert b"".join(framed for framed, _, _ in sink.calls) == b"".join(
        [b"data: %d\n\n" % n for n in range(10)] + [b"data: usage\n\n", b"data: 10\n\n"]
    )
    assert not recording.on  # without a limit nothing is kept after the first sink


def test_a_shared_recording_stops_past_its_limit_and_keeps_what_it_holds_until_then() -> None:
    """Kept for the cache and followers while under the limit; past it, dropped, not joinable."""
    recording = Recording(25)
    recording.add(event(1), 0.0, shared=True)
    recording.add(event(2), 0.1, shared=True)
    assert recording.on
    kept = b"data: 1\n\ndata: 2\n\n"
    assert recording.as_bytes() == (kept, [(9, 0.0), (18, 0.1)])
    recording.add(event(3), 0.2, shared=True)
    assert not recording.on and recording.batches == []
