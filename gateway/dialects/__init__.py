"""Dialects: the APIs clients call and the APIs providers speak, around one canonical form.

See :mod:`gateway.dialects.base` for the interface. ``CLIENT_DIALECTS`` and ``UPSTREAM_TYPES``
are looked up by name: the inbound route's dialect, a deployment's ``type:``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.dialects.anthropic import AnthropicUpstream
from gateway.dialects.base import ClientDialect, UpstreamType
from gateway.dialects.chat import AzureUpstream, ChatDialect, OpenAIUpstream
from gateway.dialects.gemini import GeminiUpstream
from gateway.dialects.messages import MessagesDialect
from gateway.dialects.responses import ResponsesDialect

CLIENT_DIALECTS: Mapping[str, ClientDialect] = {
    d.name: d for d in (ChatDialect(), ResponsesDialect(), MessagesDialect())
}
UPSTREAM_TYPES: Mapping[str, UpstreamType] = {
    u.name: u for u in (OpenAIUpstream(), AzureUpstream(), AnthropicUpstream(), GeminiUpstream())
}
IDENTITY_UPSTREAMS = frozenset({"openai", "azure"})

__all__ = [
    "CLIENT_DIALECTS",
    "IDENTITY_UPSTREAMS",
    "UPSTREAM_TYPES",
    "ClientDialect",
    "UpstreamType",
]
