"""What an event source framed, kept for sinks that come later.

A coalesced follower that joins a running stream, and the cache that stores a finished one, need
every batch from the first. Until the first sink attaches everything is kept; after that only
while the stream is shared (``limit`` bytes: the cache's largest object) and still under it.
"""

from __future__ import annotations

from gateway.stream import Sink

Batch = tuple[bytes, list[bytes], bool]  # framed bytes, their payloads, whether usage only


class Recording:
    """The batches a source delivered, with when (seconds after its first event)."""

    __slots__ = ("batches", "limit", "offsets", "on", "size")

    def __init__(self, limit: int) -> None:
        self.batches: list[Batch] = []
        self.offsets: list[float] = []
        self.limit = limit  # 0: kept only until the first sink attaches
        self.size = 0
        self.on = True

    def add(self, batch: Batch, offset: float, *, shared: bool) -> None:
        """Keep a batch; past the limit (with a sink attached, so nothing is lost) stop."""
        self.size += len(batch[0])
        if shared and self.size > self.limit:
            self.stop()  # too large to keep: no longer joinable nor cacheable
            return
        self.batches.append(batch)
        self.offsets.append(offset)

    def replay_to(self, sink: Sink) -> None:
        """Deliver what was kept to a sink that attaches now, consecutive batches of one kind
        joined: a fast upstream may have sent dozens of events while the client's response was
        being prepared, and one write for them all is what the client needs (py-spy: a write per
        batch here was a quarter of a burst stream's CPU)."""
        batches = self.batches
        start = 0
        while start < len(batches):
            usage_only = batches[start][2]
            end = start + 1
            while end < len(batches) and batches[end][2] == usage_only:
                end += 1
            if end - start == 1:
                sink.deliver(*batches[start])
            else:
                run = batches[start:end]
                payloads = [payload for _, each, _ in run for payload in each]
                sink.deliver(b"".join(framed for framed, _, _ in run), payloads, usage_only)
            start = end
        if not self.limit:
            self.stop()

    def stop(self) -> None:
        """Keep nothing more, and drop what was kept."""
        self.on = False
        self.batches, self.offsets = [], []

    def as_bytes(self) -> tuple[bytes, list[tuple[int, float]]]:
        """The kept stream as SSE bytes, with (end offset, seconds) per delivery."""
        marks: list[tuple[int, float]] = []
        end = 0
        for (framed, _, _), offset in zip(self.batches, self.offsets, strict=True):
            end += len(framed)
            marks.append((end, round(offset, 4)))
        return b"".join(framed for framed, _, _ in self.batches), marks
