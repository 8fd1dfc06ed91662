"""Cache keys, entry conversions, the bounded memory backend and shared streams, no server."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.cache.backends import MemoryBackend, RedisBackend
from gateway.cache.entry import (
    CacheEntry,
    assemble_completion,
    completion_to_stream,
    stream_is_complete,
)
from gateway.cache.policy import decide
from gateway.config import CacheSettings, Deployment
from gateway.errors import GatewayError, InvalidRequest, UpstreamUnreachable
from gateway.openai import Endpoint, parse_request
from gateway.source import EventSource
from gateway.sse import SSEParser
from gateway.stream import BodyConsumer

SETTINGS = CacheSettings()


def parsed(**body: Any) -> Any:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return parse_request(orjson.dumps(request), Endpoint.CHAT)


def key(headers: dict[str, str] | None = None, scope: str = "key_a", **body: Any) -> str | None:
    return decide(parsed(**body), "upstream-m", headers or {}, scope, SETTINGS).key


def test_key_ignores_stream_options_and_user_but_not_sampling() -> None:
    """The cache key ignores stream, stream_options and user, not max_tokens or the key's scope."""
    base = key(temperature=0)
    assert base is not None
    assert key(temperature=0, stream=True, stream_options={"include_usage": True}) == base
    assert key(temperature=0, user="u1") == base
    assert key(temperature=0, max_tokens=5) != base
    assert key(temperature=0, scope="key_b") != base  # per key by default
    glob = CacheSettings(scope="global")
    shared = [decide(parsed(temperature=0), "m", {}, owner, glob).key for owner in "ab"]
    assert shared[0] == shared[1]


def test_modes_and_headers() -> None:
    """Deterministic requests are cached unless the mode or headers say otherwise; bad TTL: 400."""
    assert key(temperature=0.5) is None  # not deterministic
    assert key(temperature=0.5, seed=3) is not None
    assert key({"X-Gateway-Cache": "on"}, temperature=0.5) is not None
    assert key({"X-Gateway-Cache": "off"}, temperature=0) is None
    assert key({"Cache-Control": "no-store"}, temperature=0) is None
    no_cache = decide(parsed(temperature=0), "m", {"Cache-Control": "no-cache"}, "", SETTINGS)
    assert not no_cache.lookup and no_cache.store
    assert decide(parsed(), "m", {}, "", CacheSettings(mode="all")).key is not None
    assert decide(parsed(temperature=0), "m", {}, "", CacheSettings(mode="off")).key is None
    ttl = decide(parsed(temperature=0), "m", {"X-Gateway-Cache-TTL": "12"}, "", SETTINGS)
    assert ttl.ttl == 12
    with pytest.raises(InvalidRequest):
        decide(parsed(temperature=0), "m", {"X-Gateway-Cache-TTL": "-1"}, "", SETTINGS)


STREAM = b"".join(
    b"data: " + orjson.dumps(event) + b"\n\n"
    for event in [
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "lo", "tool_calls": [
             {"index": 0, "id": "call_1", "type": "function",
              "function": {"name": "get", "arguments": '{"a":'}}]}}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"tool_calls": [
             {"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
) + b"data: [DONE]\n\n"  # fmt: skip


def test_stream_assembles_into_a_completion_with_tool_calls_and_usage() -> None:
    """A recorded stream assembles into one completion with its text, tool calls and usage."""
    answer = orjson.loads(assemble_completion(STREAM))
    message = answer["choices"][0]["message"]
    assert answer["object"] == "chat.completion"
    assert message["content"] == "Hello"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a":1}'}}
    ]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["total_tokens"] == 7


def test_completion_round_trips_through_a_stream() -> None:
    """A completion replayed as a stream is complete and assembles back into the same completion."""
    completion = assemble_completion(STREAM)
    replayed = completion_to_stream(completion)
    assert stream_is_complete(replayed)
    events = [e.data for e in SSEParser().feed(replayed)]
    assert events[-1] == b"[DONE]"
    assert orjson.loads(assemble_completion(replayed)) == orjson.loads(completion)


def test_incomplete_streams_are_recognised() -> None:
    """A stream cut short or ending in an error event is not complete."""
    assert stream_is_complete(STREAM)
    assert not stream_is_complete(STREAM[:-20])
    assert not stream_is_complete(b'data: {"error":{"message":"x"}}\n\ndata: [DONE]\n\n')


def test_entry_survives_serialisation_and_rejects_garbage() -> None:
    """An entry and its timing marks survive dumps/loads; garbage or a new version is None."""
    entry = CacheEntry("stream", STREAM, [(100, 0.0), (len(STREAM), 0.25)], deployment="d")
    again = CacheEntry.loads(entry.dumps())
    assert again is not None and again.body == STREAM and again.marks == entry.marks
    chunks, offsets = again.chunks()
    assert b"".join(chunks) == STREAM and offsets == [0.0, 0.25]
    assert CacheEntry.loads(b"not json") is None
    assert CacheEntry.loads(b'{"v": 99}') is None


async def test_memory_backend_is_bounded_lru() -> None:
    """The memory backend evicts LRU, bounds its bytes, refuses the oversized, expires by TTL."""
    backend = MemoryBackend(max_entries=3, max_bytes=1000)
    for name in "abc":
        assert await backend.set(name, CacheEntry("json", b"x" * 100), ttl=60)
    assert await backend.get("a") is not None  # a is now the most recently used
    await backend.set("d", CacheEntry("json", b"x" * 100), ttl=60)
    assert await backend.get("b") is None  # the least recently used went
    assert await backend.get("a") is not None
    await backend.set("big", CacheEntry("json", b"x" * 900), ttl=60)
    assert backend.usage[1] <= 1000
    assert not await backend.set("huge", CacheEntry("json", b"x" * 2000), ttl=60)
    await backend.set("short", CacheEntry("json", b"y"), ttl=0.05)
    await asyncio.sleep(0.1)
    assert await backend.get("short") is None


class Chunks:
    """An upstream response whose body the test pushes to its consumer."""

    status = 200
    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.consumer: BodyConsumer | None = None
        self.closed_complete: bool | None = None

    def stream_to(self, consumer: BodyConsumer) -> None:
        self.consumer = consumer

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def read_body(self, limit: int) -> bytes:
        return b""

    def close(self, *, complete: bool = False) -> None:
        self.closed_complete = complete

    def send(self, data: bytes) -> None:
        assert self.consumer is not None
        self.consumer.body(data)

    def fail(self, error: GatewayError) -> None:
        assert self.consumer is not None
        self.consumer.end(error)


class Collected:
    """A sink that keeps what it was given."""

    def __init__(self) -> None:
        self.data = b""
        self.ended = False
        self.error: GatewayError | None = None

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        self.data += framed

    def keepalive(self) -> None:
        return None

    def finish(self, error: GatewayError | None) -> None:
        self.ended, self.error = True, error


async def recorded_source(upstream: Chunks) -> EventSource:
    source = EventSource(
        upstream, Deployment(name="d", base_url="http://d/v1"), keepalive=30, record_limit=1000
    )
    source.start()
    return source


async def test_a_late_sink_gets_everything_then_follows_live() -> None:
    """A coalesced client that joins late gets the recording first, then the live events."""
    upstream = Chunks()
    source = await recorded_source(upstream)
    first = Collected()
    source.attach(first)
    upstream.send(b"data: 1\n\n")
    late = Collected()
    source.attach(late)
    assert late.data == b"data: 1\n\n"  # what was relayed so far
    upstream.send(b"data: [DONE]\n\n")
    assert first.data == late.data == b"data: 1\n\ndata: [DONE]\n\n"
    assert first.ended and late.ended and late.error is None
    assert source.clean and upstream.closed_complete
    assert source.recording.as_bytes()[0] == first.data


async def test_the_last_sink_leaving_cancels_the_upstream() -> None:
    """The upstream goes on while any client remains and is aborted when the last one leaves."""
    upstream = Chunks()
    source = await recorded_source(upstream)
    sinks = [Collected(), Collected()]
    for sink in sinks:
        source.attach(sink)
    upstream.send(b"data: 1\n\n")
    source.detach(sinks[0])
    assert not source.done  # one client remains
    source.detach(sinks[1])
    assert source.done and not source.clean and upstream.closed_complete is False


async def test_an_upstream_failure_reaches_every_sink() -> None:
    """Every client of a shared stream sees the same failure after the same events."""
    upstream = Chunks()
    source = await recorded_source(upstream)
    sinks = [Collected() for _ in range(3)]
    for sink in sinks:
        source.attach(sink)
    upstream.send(b"data: 1\n\n")
    upstream.fail(UpstreamUnreachable("gone"))
    for sink in sinks:
        assert sink.data == b"data: 1\n\n"
        assert isinstance(sink.error, UpstreamUnreachable)
    assert not source.clean


async def test_unreachable_redis_cache_is_a_rate_limited_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis cache that cannot be reached answers misses and warns, a burst and no more."""
    import logging

    import redis.asyncio as aioredis

    from gateway import trail
    from gateway.redisconn import RedisConn
    from tests.conftest import free_port

    monkeypatch.setattr(trail, "LIMITER", trail.WarningLimiter(burst=2))
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    backend = RedisBackend(RedisConn(client, prefix="t"), timeout=0.25)
    with caplog.at_level(logging.WARNING):
        assert [await backend.get(f"k{i}") for i in range(4)] == [None] * 4
    await client.aclose()
    fallbacks = [r for r in caplog.records if r.__dict__.get("event") == "cache_fallback"]
    assert len(fallbacks) == 2 and fallbacks[0].__dict__["subject"] == "redis"


def test_a_client_ttl_never_exceeds_the_configured_one() -> None:
    """X-Gateway-Cache-TTL may shorten an entry's life, not lengthen it past cache.ttl."""
    settings = CacheSettings(ttl=300, model_ttls=(("m", 60.0),))
    week = decide(parsed(temperature=0), "m", {"X-Gateway-Cache-TTL": "604800"}, "", settings)
    assert week.ttl == 60
    short = decide(parsed(temperature=0), "m", {"X-Gateway-Cache-TTL": "5"}, "", settings)
    assert short.ttl == 5
