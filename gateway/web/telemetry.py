"""OpenTelemetry traces: a span per /v1 request, a child span per upstream attempt, over OTLP/HTTP.

Optional: the ``otel`` extra, and ``telemetry.enabled`` in the config. When it is off nothing from
``opentelemetry`` is imported and the only cost is :func:`trace_headers` returning an empty mapping.
The request span follows the GenAI semantic conventions (``gen_ai.system``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*``, the first token as an
event); it continues a client's ``traceparent`` and the upstream request carries the attempt's
(gateway/propagation.py, which the upstream client calls).
Attributes are filled in once, when the request's stats event exists: nothing runs per event. A
prompt is never an attribute unless ``telemetry.capture_prompts`` says so; a key never is.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway import propagation
from gateway.config import Config, TelemetrySettings
from gateway.errors import GatewayError
from gateway.stats import StatsEvent
from gateway.trail import reason
from gateway.web.access import upstream_model
from gateway.web.accounting import RequestRecord, retries
from gateway.web.state import RECORD

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

T = TypeVar("T")
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class Tracing:
    """The tracer of one worker; made only when telemetry is enabled."""

    def __init__(
        self, settings: TelemetrySettings, *, exporter: SpanExporter | None = None
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.settings = settings
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Batched on the SDK's own thread: an exporter that is slow or down never blocks
            # the event loop (spans beyond its queue are dropped, and the SDK says so).
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint))
            )
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("llm-gateway")
        self.propagator = TraceContextTextMapPropagator()

    def activate(self) -> None:
        """Give the upstream client this tracer's context to propagate (one per process)."""
        propagation.install(self.propagator.inject)

    def shutdown(self) -> None:
        """Stop propagating, export what is still queued and stop the exporter."""
        propagation.install(None)
        self.provider.shutdown()

    # -- the request span -------------------------------------------------------------------------

    def middleware(self, config: Config) -> Middleware:
        """A span per /v1 POST, current while the handler runs, ended with the stats event."""
        from opentelemetry import context, trace

        @web.middleware
        async def telemetry_middleware(
            request: web.Request, handler: Handler
        ) -> web.StreamResponse:
            record = request.get(RECORD)
            if record is None:
                return await handler(request)
            operation = _OPERATIONS.get(request.path, "request")
            span = self.tracer.start_span(
                operation,
                context=self.propagator.extract(request.headers),
                kind=trace.SpanKind.SERVER,
                attributes={"gen_ai.operation.name": operation, "gen_ai.system": "openai",
                            "http.request.method": "POST", "url.path": request.path},
            )  # fmt: skip
            record.finishers.append(lambda event: self._finish(span, config, record, event))
            token = context.attach(trace.set_span_in_context(span))
            try:
                return await handler(request)
            finally:
                context.detach(token)

        return telemetry_middleware

    def _finish(self, span: Span, config: Config, record: RequestRecord, event: StatsEvent) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.update_name(f"{span.name} {event.model}")  # type: ignore[attr-defined]
        attributes: dict[str, Any] = {
            "gen_ai.request.model": event.model,
            "gen_ai.usage.input_tokens": event.prompt_tokens,
            "gen_ai.usage.output_tokens": event.completion_tokens,
            "http.response.status_code": event.status,
            "llm_gateway.request_id": event.request_id,
            "llm_gateway.key_id": event.key_id,
            "llm_gateway.tokens_estimated": not event.tokens_exact,
            "llm_gateway.cache_hit": event.cache_hit,
            "llm_gateway.termination": event.termination,
            "llm_gateway.retries": retries(record),
            "llm_gateway.hedges": record.stream.hedges if record.stream is not None else 0,
        }
        served = upstream_model(config, record.model, record.trail.served_by)
        if served is not None:
            attributes["gen_ai.response.model"] = served
        if event.deployment is not None:
            attributes["llm_gateway.deployment"] = event.deployment
        body = record.body or {}
        for name, attribute in (("temperature", "temperature"), ("max_tokens", "max_tokens")):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[f"gen_ai.request.{attribute}"] = value
        if self.settings.capture_prompts and "messages" in body:
            attributes["gen_ai.input.messages"] = orjson.dumps(body["messages"]).decode()
        span.set_attributes(attributes)
        end = time.time_ns()
        if event.ttfb_ms is not None:
            started: int = span.start_time  # type: ignore[attr-defined]
            # The loop's clock (millisecond ticks) against the span's: never past the end.
            at = min(started + int(event.ttfb_ms * 1e6), end)
            span.add_event("gen_ai.first_token", timestamp=at)
        if event.status >= 500:
            span.set_status(Status(StatusCode.ERROR, event.termination))
        span.end(end_time=end)

    # -- an upstream attempt ----------------------------------------------------------------------

    async def attempt(self, deployment: str, send: Callable[[], Awaitable[T]]) -> T:
        """Run ``send`` inside a client span for one upstream attempt (until its headers)."""
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        span = self.tracer.start_span(
            f"upstream {deployment}",
            kind=trace.SpanKind.CLIENT,
            attributes={"llm_gateway.deployment": deployment},
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            response = await send()
        except GatewayError as exc:
            span.set_attribute("error.type", reason(exc))
            span.set_status(Status(StatusCode.ERROR, reason(exc)))
            raise
        else:
            status = getattr(response, "status", None)
            if isinstance(status, int):
                span.set_attribute("http.response.status_code", status)
            return response
        finally:
            context.detach(token)
            span.end()
