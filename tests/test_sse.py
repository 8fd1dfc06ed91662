"""The SSE parser and encoder: WHATWG rules, and any split of the bytes gives the same events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import DONE, EventTooLarge, SSEEvent, SSEParser, encode_comment, encode_event


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


def test_mixed_line_endings_in_one_stream() -> None:
    """LF, CRLF and CR may be mixed within a stream, and LF then CR is two line ends."""
    assert parse(b"data: a\r\ndata: b\rdata: c\n\r") == [SSEEvent(b"a\nb\nc")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR ending one chunk and an LF starting the next make one line end, not two."""
    assert [e.data for e in parse(b"data: a\r", b"\ndata: b\r", b"\n\r\n")] == [b"a\nb"]


def test_empty_chunk_between_cr_and_lf() -> None:
    """An empty chunk between a CR and its LF does not turn the LF into a second line end."""
    assert parse(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == [SSEEvent(b"a\nb")]


def test_one_byte_at_a_time() -> None:
    """Feeding a CRLF stream byte by byte gives the same events as feeding it whole."""
    stream = b"\xef\xbb\xbfevent: e\r\nid: 1\r\n: c\r\ndata: a\r\ndata:\r\n\r\ndata: b\r\r"
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == parse(stream)
    assert parse(stream) == [SSEEvent(b"a\n", b"e", b"1"), SSEEvent(b"b")]


def test_lone_cr_at_chunk_end_then_another_line() -> None:
    """A CR ending a chunk followed by a non-LF byte ends the line exactly once."""
    assert parse(b"data: a\r", b"\r", b"data: b\r", b"\r") == [SSEEvent(b"a"), SSEEvent(b"b")]


def test_data_with_and_without_space() -> None:
    """One space after the colon is removed; a second space is data."""
    assert [e.data for e in parse(b"data:x\n\ndata: y\n\ndata:  z\n\n")] == [b"x", b"y", b" z"]


def test_multi_line_data() -> None:
    """Data lines join with LF and the final LF of the buffer is removed."""
    assert parse(b"data: a\ndata: b\ndata: c\n\n") == [SSEEvent(b"a\nb\nc")]


def test_empty_data_lines() -> None:
    """An empty data line contributes an empty line, and on its own is an event with empty data."""
    assert parse(b"data:\ndata: x\n\n") == [SSEEvent(b"\nx")]
    assert parse(b"data:\n\n") == [SSEEvent(b"")]


def test_comments_are_counted_not_returned() -> None:
    """Comment lines are skipped and counted, including one split across chunks."""
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n:x\ndata: 1\n\n") == [SSEEvent(b"1")]
    assert parser.feed(b": half") == []
    assert parser.feed(b" done\r\n") == []
    assert parser.comments == 3


def test_event_id_and_retry_fields() -> None:
    """event, id and retry are kept per event; a bad retry and an id with NUL are ignored."""
    events = parse(b"event: delta\nid: 7\nretry: 100\ndata: a\n\nretry: x\nid: a\x00b\ndata: b\n\n")
    assert events == [SSEEvent(b"a", b"delta", b"7", 100), SSEEvent(b"b")]


@pytest.mark.parametrize("value", [b"", b"1x", b"-1", b"  5", b"1.5", b"\xd9\xa3"])
def test_retry_only_when_all_ascii_digits(value: bytes) -> None:
    """A retry value that is not all ASCII digits is ignored."""
    assert parse(b"retry:" + value + b"\ndata: a\n\n") == [SSEEvent(b"a")]


def test_id_belongs_to_its_own_block() -> None:
    """An id applies to the block it appears in and is not carried to the next event."""
    assert parse(b"id: 1\ndata: a\n\ndata: b\n\n") == [SSEEvent(b"a", id=b"1"), SSEEvent(b"b")]


def test_later_field_wins_within_a_block() -> None:
    """When a field repeats within a block, the last value is used."""
    assert parse(b"event: a\nevent: b\ndata: x\n\n") == [SSEEvent(b"x", event=b"b")]


def test_leading_bom_is_dropped_even_when_split() -> None:
    """A UTF-8 BOM at the start of the stream is not part of the first field name."""
    assert parse(b"\xef\xbb", b"\xbfdata: a\n\n") == [SSEEvent(b"a")]
    assert parse(b"\xef", b"\xbb", b"\xbf", b"data: a\n\n") == [SSEEvent(b"a")]
    assert parse(b"\xef\xbb\xbfdata: b\n\n") == [SSEEvent(b"b")]


def test_only_one_bom_and_only_at_the_start() -> None:
    """A second BOM, or one later in the stream, is kept: the field name it prefixes is unknown."""
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n") == [SSEEvent(b"b")]
    assert parse(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [SSEEvent(b"a")]


def test_short_start_that_is_not_a_bom() -> None:
    """A first chunk shorter than a BOM that is not a BOM prefix is parsed as data."""
    assert parse(b"d", b"ata: a\n\n") == [SSEEvent(b"a")]
    assert parse(b"\xef", b"x\ndata: a\n\n") == [SSEEvent(b"a")]


def test_field_without_colon_and_unknown_fields() -> None:
    """A bare `data` line is an empty data line; unknown fields are ignored."""
    assert parse(b"data\nfoo: bar\ndata: x\n\n") == [SSEEvent(b"\nx")]


def test_blocks_without_data_are_not_events() -> None:
    """A block with only event/id fields dispatches nothing, and does not leak into the next."""
    assert parse(b"event: ping\nid: 3\nretry: 5\n\ndata: a\n\n") == [SSEEvent(b"a")]


def test_unterminated_event_is_not_dispatched() -> None:
    """An event whose blank line has not arrived yet is held, not returned."""
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [SSEEvent(b"a")]


def test_pending_bytes_counts_the_incomplete_event() -> None:
    """pending_bytes covers held data lines and the partial line, and is zero after dispatch."""
    parser = SSEParser()
    parser.feed(b"data: abc\ndata: de")
    assert parser.pending_bytes == len(b"abc\n") + len(b"data: de")
    parser.feed(b"\n\n")
    assert parser.pending_bytes == 0


def test_incomplete_event_is_held_and_bounded() -> None:
    """An unfinished event is held back; past the bound it raises EventTooLarge."""
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 50) == []
    assert parser.pending_bytes > 50
    with pytest.raises(EventTooLarge):
        parser.feed(b"x" * 100)


def test_event_too_large_across_many_data_lines() -> None:
    """Many short data lines count towards the bound, and the error is a ValueError."""
    parser = SSEParser(max_event_bytes=100)
    with pytest.raises(ValueError, match="100 bytes"):
        for _ in range(30):
            parser.feed(b"data: 1234\n")


def test_event_too_large_keeps_the_events_completed_before_it() -> None:
    """The events a chunk completed before the bound was crossed travel on the exception."""
    parser = SSEParser(max_event_bytes=100)
    with pytest.raises(EventTooLarge) as caught:
        parser.feed(b"data: a\n\ndata: " + b"x" * 200)
    assert caught.value.events == [SSEEvent(b"a")]


def test_encoder_is_canonical() -> None:
    """encode_event writes LF, `data: ` per line, event and id first."""
    assert encode_event(b"a") == b"data: a\n\n"
    assert encode_event(b"a", event=b"e", id=b"1") == b"event: e\nid: 1\ndata: a\n\n"
    assert encode_comment(b"keep-alive") == b": keep-alive\n\n"
    assert DONE == b"[DONE]"


def test_encoder_splits_multi_line_data() -> None:
    """Each line of multi-line data, empty ones included, gets its own `data: ` line."""
    assert encode_event(b"a\n\nb") == b"data: a\ndata: \ndata: b\n\n"
    assert encode_event(b"a\n") == b"data: a\ndata: \n\n"


def test_encode_round_trip() -> None:
    """Encoded events, comments included, parse back to the same events."""
    parser = SSEParser()
    stream = (
        encode_event(b'{"a":1}', event=b"delta", id=b"42")
        + encode_comment(b"ping")
        + encode_event(b" lead\n\ntrail ")
        + encode_event(DONE)
    )
    assert parser.feed(stream) == [
        SSEEvent(b'{"a":1}', b"delta", b"42"),
        SSEEvent(b" lead\n\ntrail "),
        SSEEvent(DONE),
    ]
    assert parser.comments == 1


# -- property: any split of any stream gives the same events ---------------------------------------

# Lines are any bytes but CR and LF (BOM bytes, NUL and colons included), which is wider than
# printable text and still what an upstream may legitimately put on one line.
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
    empties=st.booleans(),
)
def test_any_split_gives_the_same_events(
    events: list[SSEEvent], end: bytes, cuts: list[int], empties: bool
) -> None:
    """Whatever the line endings and wherever the chunks are cut, the events are the originals."""
    stream = _encode(events, end)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    if empties:
        chunks = [piece for chunk in chunks for piece in (chunk, b"")]
    assert parse(stream) == events
    assert parse(*chunks) == events


@given(events=st.lists(_event, max_size=4), end=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_every_cut_between_cr_and_lf(events: list[SSEEvent], end: bytes) -> None:
    """Cutting the stream into single bytes, so every CRLF is split, still gives the originals."""
    stream = _encode(events, end)
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == events
