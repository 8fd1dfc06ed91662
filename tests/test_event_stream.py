"""The suite's own SSE parser (tests/event_stream.py) against the WHATWG specification examples."""

from __future__ import annotations

import pytest

from tests.event_stream import Event, EventStreamParser


def parse(stream: bytes, *, chunk: int | None = None) -> tuple[list[Event], EventStreamParser]:
    """Every event of ``stream``, fed whole or ``chunk`` bytes at a time."""
    parser = EventStreamParser()
    size = chunk or len(stream) or 1
    events = [e for i in range(0, len(stream), size) for e in parser.feed(stream[i : i + size])]
    return [*events, *parser.end()], parser


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_the_specifications_stock_example(chunk: int | None) -> None:
    """Three messages, the second of two data lines joined with LF, whatever the chunking."""
    stream = (
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\ndata: has two lines.\n\n"
        b"data: This is the third message.\n\n"
    )
    events, _ = parse(stream, chunk=chunk)
    assert [e.data for e in events] == [
        b"This is the first message.",
        b"This is the second message, it\nhas two lines.",
        b"This is the third message.",
    ]
    assert {e.event for e in events} == {b"message"}


def test_event_names_the_type_for_one_event_only() -> None:
    """`event:` sets the type of the event it is in; the next one is a `message` again."""
    events, _ = parse(b"event: add\ndata: 73857293\n\ndata: 2153\n\n")
    assert [(e.event, e.data) for e in events] == [(b"add", b"73857293"), (b"message", b"2153")]


def test_comments_ids_and_the_optional_space() -> None:
    """A comment is counted, not dispatched; an empty `id` resets the last event ID, which
    otherwise carries over; only one space after the colon is removed."""
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n"
    )
    events, parser = parse(stream)
    assert [(e.data, e.id) for e in events] == [
        (b"first event", b"1"),
        (b"second event", b""),
        (b" third event", b""),
    ]
    assert parser.comments == 1


def test_empty_data_lines_and_an_unterminated_event() -> None:
    """`data` without a colon is an empty line of data; an event with no blank line is dropped."""
    events, _ = parse(b"data\n\ndata\ndata\n\ndata:")
    assert [e.data for e in events] == [b"", b"\n"]


@pytest.mark.parametrize("ending", [b"\r\n", b"\r", b"\n"])
@pytest.mark.parametrize("chunk", [None, 1])
def test_every_line_ending_is_a_line_ending(ending: bytes, chunk: int | None) -> None:
    """CRLF, CR and LF end lines alike, also when a CRLF is split between two chunks."""
    stream = b"data: a" + ending + b"data: b" + ending + ending + b"data: c" + ending * 2
    events, _ = parse(stream, chunk=chunk)
    assert [e.data for e in events] == [b"a\nb", b"c"]


def test_a_leading_bom_is_dropped_and_retry_takes_digits_only() -> None:
    """The BOM at the very start is not part of the first field; `retry: 1x` is ignored."""
    events, parser = parse(b"\xef\xbb\xbfretry: 1500\ndata: x\n\nretry: 1x\ndata: y\n\n", chunk=1)
    assert [e.data for e in events] == [b"x", b"y"]
    assert parser.reconnection_time == 1500


def test_a_block_without_data_dispatches_nothing() -> None:
    """An `event:` or `id:` block with no data dispatches nothing and forgets its type."""
    events, _ = parse(b"event: ping\nid: 7\n\ndata: after\n\n")
    assert events == [Event(b"after", b"message", b"7")]
