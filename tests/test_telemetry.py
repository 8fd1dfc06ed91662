"""Tracing with the SDK's in-memory exporter: the request span, the attempt span, propagation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import propagation
from gateway.config import Deployment, TelemetrySettings, load_config
from gateway.store.sqlite import SQLiteStore
from gateway.web import make_app
from gateway.web.telemetry import Tracing
from tests.fakes import FakeUpstreams, ScriptedResponse, Step

Client = TestClient  # type: ignore[type-arg]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PROMPT = "my secret prompt"
BODY = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.5, "stream_options": {"include_usage": True}}  # fmt: skip
STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
    b"data: [DONE]\n\n"
)


class HeaderSeeingUpstreams(FakeUpstreams):
    """A scripted upstream that records the trace headers the client would send with each call."""

    def __init__(self) -> None:
        super().__init__()
        self.trace_headers: list[Mapping[str, str]] = []

    async def send(
        self,
        deployment: Deployment,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> ScriptedResponse:
        self.trace_headers.append(dict(propagation.trace_headers()))
        return await super().send(deployment, path, body, headers=headers, api_key=api_key)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def traced_client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    upstreams: FakeUpstreams,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    *,
    capture_prompts: bool = False,
) -> Client:
    settings = TelemetrySettings(enabled=True, capture_prompts=capture_prompts)
    app = make_app(
        load_config(None, {"XDG_STATE_HOME": str(tmp_path)}),  # its spool in the test's directory
        upstreams=upstreams,
        store=SQLiteStore(tmp_path / "store.sqlite3"),
        tracing=Tracing(settings, exporter=exporter),
    )
    return await aiohttp_client(app)


async def test_request_span_continues_traceparent_with_genai_attributes(
    aiohttp_client: Callable[..., Awaitable[Client]], exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The server span joins the client's trace and carries model, usage and first-token time."""
    upstreams = HeaderSeeingUpstreams()
    upstreams.script(Step(STREAM))
    client = await traced_client(aiohttp_client, upstreams, exporter, tmp_path)
    response = await client.post(
        "/v1/chat/completions",
        json=BODY,
        headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "Authorization": "Bearer sk-x"},
    )
    assert response.status == 200
    await response.read()
    await client.close()
    for _ in range(100):  # the server span ends when the handler has returned, a moment after
        spans = {span.kind: span for span in exporter.get_finished_spans()}
        if SpanKind.SERVER in spans and SpanKind.CLIENT in spans:
            break
        await asyncio.sleep(0.02)
    server, attempt = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert server.name == "chat demo"
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "demo"
    assert attributes["gen_ai.response.model"] == "demo"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["http.response.status_code"] == 200
    assert [event.name for event in server.events] == ["gen_ai.first_token"]
    assert server.start_time < server.events[0].timestamp <= (server.end_time or 0)
    everything = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert PROMPT not in everything and "sk-x" not in everything
    # The attempt is a child of the request, and its context is what goes upstream.
    assert attempt.parent is not None and attempt.parent.span_id == server.context.span_id
    sent = upstreams.trace_headers[0]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"


async def test_prompts_are_attributes_only_when_capture_is_enabled(
    aiohttp_client: Callable[..., Awaitable[Client]], exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """telemetry.capture_prompts puts the messages on the request span."""
    upstreams = FakeUpstreams()
    upstreams.script(Step(STREAM))
    client = await traced_client(aiohttp_client, upstreams, exporter, tmp_path,
                                 capture_prompts=True)  # fmt: skip
    await (await client.post("/v1/chat/completions", json=BODY)).read()
    await client.close()
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert PROMPT in str((server.attributes or {})["gen_ai.input.messages"])


async def test_a_failed_attempt_is_an_error_span(
    aiohttp_client: Callable[..., Awaitable[Client]], exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """An upstream that is unreachable gives an attempt span with error.type, and a 5xx request."""
    from gateway.errors import UpstreamUnreachable

    upstreams = FakeUpstreams(error=UpstreamUnreachable("down"))
    client = await traced_client(aiohttp_client, upstreams, exporter, tmp_path)
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status == 502
    await client.close()
    attempts = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(attempts) == len(upstreams.sent) >= 1
    assert all((s.attributes or {}).get("error.type") == "upstream_unreachable" for s in attempts)
    assert propagation.trace_headers() == {}  # no span outside a request: nothing to send


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    """With telemetry off, building the app imports neither the tracer nor the exporter.

    (redis-py 8 imports opentelemetry's API and metrics SDK by itself when they are installed.)
    """
    ours = ("gateway.web.telemetry", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    code = (
        "import sys; from gateway.config import load_config; from gateway.web import make_app; "
        "make_app(load_config(None, {'XDG_STATE_HOME': sys.argv[1]})); "
        f"print(sorted(m for m in sys.modules if m.startswith({ours!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
