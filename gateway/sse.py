"""Server-sent events, sans-IO: an incremental WHATWG parser (bytes in, events out) and an encoder.

The parser follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation:
lines end with CRLF, CR or LF (a CR ending one chunk and an LF starting the next are one line end),
a leading BOM is dropped, ``:`` starts a comment, one space after the field's colon is removed, and
an empty line dispatches the event. Only events with at least one ``data`` line are returned, and
``id`` belongs to its own block (no last-event-ID carried over: the relay re-frames each event).

Data stays bytes: the relay forwards it without decoding. The common case (a chunk without CR,
lines starting ``data: ``) is split with bytes methods and handled inline; CR handling and the
other fields take a slower path that OpenAI-style upstreams never take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

DONE = b"[DONE]"
_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched event."""

    data: bytes
    event: bytes | None = None
    id: bytes | None = None
    retry: int | None = None


class EventTooLarge(ValueError):
    """An event grew past the parser's bound before it was complete.

    ``events`` holds the events the same chunk completed before the bound was crossed, so a caller
    can still deliver them. The parser should be abandoned after this.
    """

    def __init__(self, message: str, *, events: Sequence[SSEEvent] = ()) -> None:
        super().__init__(message)
        self.events = list(events)


class SSEParser:
    """Incremental parser: ``feed`` bytes as they arrive, get back the events they completed."""

    __slots__ = (
        "_after_cr",
        "_comments",
        "_data",
        "_event",
        "_id",
        "_max",
        "_partial",
        "_pending",
        "_retry",
        "_started",
    )

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        self._max = max_event_bytes
        self._partial = b""  # an unfinished line
        self._after_cr = False  # the previous chunk ended with CR: a leading LF is not a new line
        self._started = False  # the BOM check has been done
        self._data: list[bytes] = []  # data lines of the event being built
        self._event: bytes | None = None
        self._id: bytes | None = None
        self._retry: int | None = None
        self._pending = 0  # bytes in the data buffer (each line plus its LF)
        self._comments = 0

    def whole_data_event(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is exactly one canonical ``data: ...`` event with nothing pending:
        the shape real upstreams send (one event per write), and already in canonical framing."""
        return (
            chunk[-2:] == b"\n\n"
            and chunk[:6] == b"data: "
            and not self._partial
            and not self._data
            and self._started
            and not self._after_cr
            and self._event is None
            and self._id is None
            and self._retry is None
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
            and len(chunk) <= self._max
        )

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an event that is not complete yet."""
        return self._pending + len(self._partial)

    @property
    def comments(self) -> int:
        """Comment lines seen so far."""
        return self._comments

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; return the events it completed, in order.

        Raises EventTooLarge when the event still incomplete at the end of ``chunk`` holds more
        than ``max_event_bytes``.
        """
        if not chunk:
            return []  # must not clear _after_cr: an LF may still follow
        if self.whole_data_event(chunk):
            return [SSEEvent(chunk[6:-2])]
        if not self._started:
            chunk = self._strip_bom(chunk)
            if not self._started:
                return []
        if self._after_cr:
            self._after_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\r" in chunk:
            lines = self._split_with_cr(chunk)
        else:
            lines = chunk.split(b"\n")
        if self._partial:
            lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        events: list[SSEEvent] = []
        data = self._data
        pending = self._pending
        for line in lines:
            if line[:6] == b"data: ":  # the hot path, inline
                data.append(line[6:])
                pending += len(line) - 5
            elif line:
                pending += self._field(line)
            elif data:
                joined = data[0] if len(data) == 1 else b"\n".join(data)
                events.append(SSEEvent(joined, self._event, self._id, self._retry))
                data = self._data = []
                pending = 0
                self._event = self._id = self._retry = None
            else:
                self._event = self._id = self._retry = None
        self._pending = pending
        if pending + len(self._partial) > self._max:
            raise EventTooLarge(
                f"an event exceeded {self._max} bytes before it was complete", events=events
            )
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Drop a BOM at the very start, which may arrive split across chunks."""
        head = self._partial + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._partial = head
            return b""
        self._started = True
        self._partial = b""
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _split_with_cr(self, chunk: bytes) -> list[bytes]:
        """Split on CRLF, CR and LF; the last element is the unfinished remainder."""
        if chunk.endswith(b"\r"):
            # The LF that may start the next chunk belongs to this line end; remember to skip it.
            self._after_cr = True
            lines = chunk[:-1].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            lines.append(b"")
            return lines
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")

    def _field(self, line: bytes) -> int:
        """Apply one non-empty line; return the bytes it added to the data buffer."""
        if line[0] == 0x3A:  # ":"
            self._comments += 1
            return 0
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._data.append(value)
            return len(value) + 1
        if name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value
        elif name == b"retry" and value.isdigit():  # bytes.isdigit is ASCII-only
            self._retry = int(value)
        return 0


def encode_event(data: bytes, *, event: bytes | None = None, id: bytes | None = None) -> bytes:
    """Canonical SSE framing: optional ``event:`` and ``id:``, a ``data: `` line per line, LF."""
    head = b""
    if event is not None:
        head += b"event: " + event + b"\n"
    if id is not None:
        head += b"id: " + id + b"\n"
    if b"\n" not in data:
        return head + b"data: " + data + b"\n\n"
    return head + b"".join([b"data: " + line + b"\n" for line in data.split(b"\n")]) + b"\n"


def encode_comment(text: bytes) -> bytes:
    """A comment line, which clients ignore: used for keep-alives."""
    return b": " + text + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"  # the end of an OpenAI-style stream, framed
KEEPALIVE = encode_comment(b"keep-alive")  # what an idle stream sends every keep-alive interval
