"""The SSE parser and encoder: WHATWG rules, and any split of the bytes gives the same events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import EventTooLarge, SSEEvent, SSEParser, encode_comment, encode_event


def parse(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(end: bytes) -> None:
    """LF, CRLF and lone CR all end lines."""
    stream = b"data: a" + end + end + b"data: b" + end + end
    assert [e.data for e in parse(stream)] == [b"a", b"b"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR ending one chunk and an LF starting the next make one line end, not two."""
    assert [e.data for e in parse(b"data: a\r", b"\ndata: b\r", b"\n\r\n")] == [b"a\nb"]


def test_data_with_and_without_space() -> None:
    """One space after the colon is removed; a second space is data."""
    assert [e.data for e in parse(b"data:x\n\ndata: y\n\ndata:  z\n\n")] == [b"x", b"y", b" z"]


def test_multi_line_data_and_empty_data_lines() -> None:
    """Data lines join with LF, and an empty data line contributes an empty line."""
    assert parse(b"data: a\ndata: b\n\n")[0].data == b"a\nb"
    assert parse(b"data:\ndata: x\n\n")[0].data == b"\nx"


def test_comments_are_counted_not_returned() -> None:
    """Comment lines are skipped and counted."""
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n:x\ndata: 1\n\n") == [SSEEvent(b"1")]
    assert parser.comments == 2


def test_event_id_and_retry_fields() -> None:
    """event, id and retry are kept per event; a bad retry and an id with NUL are ignored."""
    events = parse(b"event: delta\nid: 7\nretry: 100\ndata: a\n\nretry: x\nid: a\x00b\ndata: b\n\n")
    assert events == [SSEEvent(b"a", b"delta", b"7", 100), SSEEvent(b"b")]


def test_leading_bom_is_dropped_even_when_split() -> None:
    """A UTF-8 BOM at the start of the stream is not part of the first field name."""
    assert parse(b"\xef\xbb", b"\xbfdata: a\n\n") == [SSEEvent(b"a")]
    assert parse(b"\xef\xbb\xbfdata: b\n\n") == [SSEEvent(b"b")]


def test_field_without_colon_and_unknown_fields() -> None:
    """A bare `data` line is an empty data line; unknown fields are ignored."""
    assert parse(b"data\nfoo: bar\ndata: x\n\n") == [SSEEvent(b"\nx")]


def test_blocks_without_data_are_not_events() -> None:
    """A block with only event/id fields dispatches nothing, and does not leak into the next."""
    assert parse(b"event: ping\nid: 3\n\ndata: a\n\n") == [SSEEvent(b"a")]


def test_incomplete_event_is_held_and_bounded() -> None:
    """An unfinished event is held back; past the bound it raises EventTooLarge."""
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 50) == []
    assert parser.pending_bytes > 50
    with pytest.raises(EventTooLarge):
        parser.feed(b"x" * 100)


def test_encoder_is_canonical() -> None:
    """encode_event writes LF, `data: ` per line, event and id first."""
    assert encode_event(b"a") == b"data: a\n\n"
    assert encode_event(b"a\nb", event=b"e", id=b"1") == b"event: e\nid: 1\ndata: a\ndata: b\n\n"
    assert encode_comment(b"keep-alive") == b": keep-alive\n\n"


# -- property: any split of any stream gives the same events ---------------------------------------

_line = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_event = st.builds(
    SSEEvent,
    data=st.lists(_line, min_size=1, max_size=3).map(b"\n".join),
    event=st.none() | _line.filter(bool),
    id=st.none() | _line.filter(lambda b: b"\x00" not in b),
    retry=st.none(),
)


def _encode(events: list[SSEEvent], end: bytes) -> bytes:
    out = b""
    for event in events:
        out += encode_event(event.data, event=event.event, id=event.id).replace(b"\n", end)
    return out


@given(
    events=st.lists(_event, max_size=6),
    end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_gives_the_same_events(
    events: list[SSEEvent], end: bytes, cuts: list[int]
) -> None:
    """Whatever the line endings and wherever the chunks are cut, the events are the originals."""
    stream = _encode(events, end)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert parse(*chunks) == events
    assert parse(stream) == events
