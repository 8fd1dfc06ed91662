"""Arbitrary input never escapes a translator as anything but a gateway error."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dialects import CLIENT_DIALECTS, UPSTREAM_TYPES
from gateway.dialects.base import UpstreamSettings
from gateway.errors import GatewayError, InvalidRequest
from gateway.sse import SSEEvent

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "model", "messages", "input", "max_tokens", "system", "tools", "tool_choice", "stream",
        "content", "role", "type", "text", "instructions", "stop_sequences", "source", "id",
        "name", "arguments", "call_id", "output", "image_url", "input_schema", "tool_use_id",
        "choices", "delta", "tool_calls", "function", "index", "finish_reason", "usage", "error",
        "prompt_tokens", "prompt_tokens_details", "cached_tokens", "candidates", "parts",
        "functionCall", "args", "finishReason", "usageMetadata", "message", "content_block",
        "partial_json", "stop_reason", "input_tokens", "url", "data", "media_type", "contents",
    ]
)  # fmt: skip
# Shaped like real requests, events and chunks, with any value anywhere.
shaped = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(KEYS, shaped, max_size=6))
def test_client_requests_fail_only_with_invalid_request(body: dict[str, Any]) -> None:
    """Any JSON object is either translated or refused with an InvalidRequest (a 400)."""
    raw = orjson.dumps(body)
    for dialect in CLIENT_DIALECTS.values():
        try:
            canonical = dialect.parse_request(raw)
        except InvalidRequest:
            continue
        for upstream in UPSTREAM_TYPES.values():
            with contextlib.suppress(InvalidRequest):
                upstream.build_request(canonical, "m", UpstreamSettings())


@settings(max_examples=300, deadline=None)
@given(events=st.lists(shaped, max_size=5))
def test_upstream_events_fail_only_with_gateway_errors(events: list[Any]) -> None:
    """Any sequence of JSON events is decoded or fails as a GatewayError, never a crash."""
    for upstream in UPSTREAM_TYPES.values():
        decoder = upstream.decoder()
        try:
            for value in events:
                decoder.feed(SSEEvent(orjson.dumps(value)))
            decoder.at_eof()
        except GatewayError:
            pass
        with contextlib.suppress(GatewayError):
            upstream.completion_from_upstream(orjson.dumps(events[0] if events else {}))


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(shaped, max_size=5))
def test_client_encoders_take_any_canonical_chunk(chunks: list[Any]) -> None:
    """Odd canonical chunks (what an OpenAI upstream may send) are encoded or a GatewayError."""
    for dialect in CLIENT_DIALECTS.values():
        encoder = dialect.encoder(model="m")
        try:
            for chunk in chunks:
                encoder.feed(orjson.dumps(chunk))
        except GatewayError as err:
            encoder.error(err)
        encoder.done()
        fresh = dialect.encoder(model="m")
        with contextlib.suppress(GatewayError):
            fresh.feed(b"not json at all")
