"""Traces end to end: a real gateway exporting OTLP/HTTP to the suite's own receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Proc, free_port
from tests.functional.client import chat_body, read_stream

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
PROMPT = "a prompt that must not be exported"


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint that keeps what it was sent."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    spans: list[tuple[dict[str, Any], Span]] = field(default_factory=list)  # (resource, span)

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.spans) < count:
                await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    received = Receiver(f"http://127.0.0.1:{port}/v1/traces")

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        received.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield received
    await runner.cleanup()


def attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = getattr(value, value.WhichOneof("value") or "string_value")
    return values


async def test_spans_reach_an_otlp_receiver_continuing_the_clients_trace(
    start_gateway: Any, mock_upstream: Proc, receiver: Receiver, tmp_path: Path
) -> None:
    """Request span joins the client's trace; the attempt span's context reaches the upstream."""
    config = tmp_path / "traced.yaml"
    config.write_text(f"""
telemetry:
  enabled: true
  endpoint: {receiver.url}
  service_name: gateway-under-test
deployments:
  mock: {{base_url: "{mock_upstream.url}/v1", api_key: sk-upstream-secret, models: [mock-gpt]}}
""")
    proc: Proc = start_gateway("--config", str(config), env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    body = chat_body("mock-gpt", messages=[{"role": "user", "content": PROMPT}],
                     stream_options={"include_usage": True})  # fmt: skip
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    result = await read_stream(proc.url + "/v1/chat/completions", body, headers)
    assert result.done
    await receiver.wait_for(2)
    by_kind = {span.kind: (resource, span) for resource, span in receiver.spans}
    resource, server = by_kind[Span.SpanKind.SPAN_KIND_SERVER]
    _, attempt = by_kind[Span.SpanKind.SPAN_KIND_CLIENT]
    assert resource["service.name"] == "gateway-under-test"
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == CLIENT_SPAN
    assert server.name == "chat mock-gpt"
    values = attributes(server)
    usage = result.json_events()[-1]["usage"]
    assert values["gen_ai.request.model"] == values["gen_ai.response.model"] == "mock-gpt"
    assert values["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert values["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert [event.name for event in server.events] == ["gen_ai.first_token"]
    assert attempt.trace_id == server.trace_id and attempt.parent_span_id == server.span_id
    assert attributes(attempt)["llm_gateway.deployment"] == "mock"
    async with (
        aiohttp.ClientSession() as session,
        session.get(mock_upstream.url + "/_mock/requests") as response,
    ):
        seen = (await response.json())[-1]
    assert seen["traceparent"] == f"00-{TRACE_ID}-{attempt.span_id.hex()}-01"
    exported = b"".join(receiver.bodies)
    assert PROMPT.encode() not in exported and b"sk-upstream-secret" not in exported
