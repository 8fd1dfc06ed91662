"""Trace context for upstream requests: what the upstream client adds to its request headers.

Kept apart from gateway/web/telemetry.py so the upstream client can call it without importing
the web layer or OpenTelemetry: with tracing off, :func:`trace_headers` is one global read and an
empty mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

EMPTY: Mapping[str, str] = MappingProxyType({})
Injector = Callable[[dict[str, str]], None]
_inject: Injector | None = None


def trace_headers() -> Mapping[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span; empty when tracing is off."""
    inject = _inject
    if inject is None:
        return EMPTY
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def install(inject: Injector | None) -> None:
    """Set (or with None, clear) the injector of this worker process's tracer."""
    global _inject
    _inject = inject
