"""The suite's own SSE parser, so that functional tests do not judge the gateway by its own code.

It follows the WHATWG rules for interpreting an event stream
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation) as
literally as it can, and shares nothing with ``gateway.sse``: it is written for clarity, not speed.

- A line ends with CRLF, LF or CR; a CR at the end of a chunk waits for the next one (it may be the
  first half of a CRLF). A UTF-8 BOM at the very start is dropped.
- A line starting with ``:`` is a comment (counted, otherwise ignored).
- Otherwise the field name runs to the first ``:`` (the whole line when there is none) and the value
  is the rest, with one leading space removed if present.
- ``data`` appends the value and an LF to the data buffer; ``event`` sets the event type; ``id``
  sets the last event ID unless the value holds NUL; ``retry`` sets the reconnection time when the
  value is ASCII digits only; any other field is ignored.
- A blank line dispatches: with an empty data buffer nothing is dispatched, otherwise the event's
  data is the buffer less its final LF and its type is ``message`` unless ``event`` said otherwise.
  Data and type are reset either way; the last event ID is not (it carries over, as in a browser).
- At the end of the stream (``end``) an event with no blank line after it is discarded.

Bytes rather than text: the gateway relays bytes and the tests compare bytes. Working on bytes is
the same as working on decoded UTF-8 here, since no byte of a multi-byte UTF-8 sequence is CR, LF,
``:`` or space.
"""

from __future__ import annotations

from dataclasses import dataclass

CR, LF = b"\r", b"\n"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Event:
    """A dispatched event, with the fields a browser's MessageEvent would carry."""

    data: bytes
    event: bytes = b"message"
    id: bytes | None = None  # the last event ID when this event was dispatched; None if never set


class EventStreamParser:
    """Feed chunks as they arrive; each ``feed`` returns the events those bytes dispatched."""

    def __init__(self) -> None:
        self.comments = 0
        self.reconnection_time: int | None = None
        self._buffer = b""
        self._at_start = True
        self._data: list[bytes] = []
        self._type = b""
        self._last_id: bytes | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Take the next bytes of the stream; return the events they completed, in order."""
        self._buffer += chunk
        if self._at_start:
            if len(self._buffer) < len(BOM) and BOM.startswith(self._buffer):
                return []  # could still be a BOM split across chunks
            self._at_start = False
            self._buffer = self._buffer.removeprefix(BOM)
        events: list[Event] = []
        for line in self._complete_lines():
            event = self._process(line)
            if event is not None:
                events.append(event)
        return events

    def end(self) -> list[Event]:
        """The stream ended: a CR held back was a line end; an unfinished line is dropped."""
        if not self._buffer.endswith(CR):
            return []
        return self.feed(LF)  # CR then LF is one line end, the same as the CR alone

    def _complete_lines(self) -> list[bytes]:
        """Take every terminated line off the buffer, leaving an unterminated rest behind."""
        lines = []
        while True:
            cr, lf = self._buffer.find(CR), self._buffer.find(LF)
            if cr < 0 and lf < 0:
                return lines
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr == len(self._buffer) - 1:
                    return lines  # CR last: wait to see whether an LF follows
                end, after = cr, cr + 2 if self._buffer[cr + 1 : cr + 2] == LF else cr + 1
            else:
                end, after = lf, lf + 1
            lines.append(self._buffer[:end])
            self._buffer = self._buffer[after:]

    def _process(self, line: bytes) -> Event | None:
        """Apply one line of the stream; a blank line may return an event."""
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value + LF)
        elif name == b"event":
            self._type = value
        elif name == b"id" and b"\x00" not in value:
            self._last_id = value
        elif name == b"retry" and value and all(0x30 <= byte <= 0x39 for byte in value):
            self.reconnection_time = int(value)
        return None

    def _dispatch(self) -> Event | None:
        """The blank-line step: an event if any data was buffered, and a fresh buffer either way."""
        data, event_type = b"".join(self._data), self._type
        self._data, self._type = [], b""
        if not data:
            return None
        return Event(data.removesuffix(LF), event_type or b"message", self._last_id)
