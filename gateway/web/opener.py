"""How one request reaches its upstreams: the body each deployment's type wants, an event source
per stream (decoding a provider's own events), and a JSON answer made canonical.

OpenAI-compatible deployments get the client's body as it came (the model name swapped, usage
asked for); Azure, Anthropic and Gemini deployments get it built by their dialect from the
canonical request, with the upstream key in the header that API expects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import metrics
from gateway.config import Deployment, ModelRoute
from gateway.deployments import Opened, OpenedUpstream, UpstreamCall
from gateway.dialects import UPSTREAM_TYPES
from gateway.dialects.base import UpstreamSettings
from gateway.metrics import GapCounts
from gateway.openai import ParsedRequest
from gateway.source import EventSource
from gateway.stream import UpstreamResponse
from gateway.web import budgets
from gateway.web.accounting import model_label
from gateway.web.state import CONFIG, RECORD, ROUTER


def upstream_call(
    parsed: ParsedRequest, serving: ModelRoute, deployment: Deployment, key: str | None
) -> UpstreamCall:
    """The request for one deployment, in the API its ``type`` speaks."""
    upstream_model = serving.upstream_name(parsed.model)
    if deployment.type == "openai" or deployment.in_process:
        return UpstreamCall(parsed.upstream_body(upstream_model), api_key=key)
    canonical = parsed.body
    if parsed.stream:
        canonical = {**canonical, "stream_options": {"include_usage": True}}
    built = UPSTREAM_TYPES[deployment.type].build_request(
        canonical,
        upstream_model,
        UpstreamSettings(api_key=key or deployment.api_key, api_version=deployment.api_version),
    )
    return UpstreamCall(built.body, path=built.path, headers=built.headers)


def opener(
    request: web.Request, route: ModelRoute, parsed: ParsedRequest, *, record_limit: int
) -> Callable[[], Awaitable[OpenedUpstream]]:
    """The router's request for ``parsed``, with an event source per stream."""
    app = request.app
    server = app[CONFIG].server
    publish_gaps = metrics.publish_inter_event(model_label(app[CONFIG], parsed.model))

    def body_for(serving: ModelRoute, deployment: Deployment, key: str | None) -> UpstreamCall:
        return upstream_call(parsed, serving, deployment, key)

    spend = budgets.key_spend(request, route, parsed)
    lease = 0  # output tokens the admission drew, for the guard of each attempt's stream

    def make_source(response: UpstreamResponse, deployment: Deployment) -> EventSource:
        translated = deployment.type not in ("openai", "azure") and not deployment.in_process
        source = EventSource(
            response,
            deployment,
            keepalive=server.keepalive_interval,
            gaps=GapCounts(metrics.INTER_EVENT_BOUNDS, publish_gaps),
            record_limit=record_limit,
            decoder=UPSTREAM_TYPES[deployment.type].decoder() if translated else None,
        )
        if spend is not None:
            budgets.guard(spend, source, lease)
        return source

    async def open_upstream() -> OpenedUpstream:
        nonlocal lease
        if spend is not None:
            lease = await budgets.admit(spend, parsed)
            budgets.settle_with(request[RECORD], spend)
        opened: Opened = await app[ROUTER].open(
            route,
            parsed.endpoint.value,
            body_for,
            make_source=make_source if parsed.stream else None,
            body_limit=server.max_upstream_body_bytes,
        )
        kind = opened.deployment.type
        if not parsed.stream and kind not in ("openai", "azure") and opened.status == 200:
            opened.body = UPSTREAM_TYPES[kind].completion_from_upstream(opened.body)
        return opened

    return open_upstream
