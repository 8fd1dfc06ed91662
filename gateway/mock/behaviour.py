"""How the mock answers: :class:`MockBehaviour` (size, pacing, failures), overridable per request.

The defaults come from ``llm-gateway mock-upstream`` options (or ``POST /_mock/behaviour``); a
request overrides them with ``X-Mock-*`` headers and then with a ``"mock"`` object in its body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

MOCK_MODELS: tuple[str, ...] = ("mock-gpt", "mock-gpt-mini", "mock-embed")
_HEADER_PREFIX = "x-mock-"


class MockDisconnect(Exception):
    """The behaviour asks for the connection to be cut here (``die_after``)."""


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    """How the mock answers; every field can be overridden per request."""

    chunks: int = 16
    chunk_size: int = 1
    delay: float = 0.0
    first_byte_delay: float = 0.0
    fail_status: int | None = None
    fail_before_first_byte: bool = False
    die_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None
    retry_after: float | None = None
    # Each event its own write and HTTP chunk, as OpenAI and vLLM flush them (benchmarks), and
    # ``delay`` kept as a fixed schedule (event n at n * delay) so the mock's own lag never adds up.
    unbatched: bool = False
    cached_tokens: int = 0  # reported as prompt_tokens_details.cached_tokens (at most the prompt)
    report_usage: bool = True  # False: no usage, as servers ignoring include_usage (OpenAI chat)
    honour_max_tokens: bool = True  # False: answer past max_tokens, as a misbehaving upstream may
    reply: str | None = None  # answer with this text (cut into ``chunks`` pieces), not random words
    # A share of the server's requests whose first byte waits ``slow_first_delay`` instead of
    # ``first_byte_delay`` (an upstream with a slow tail): see :func:`first_byte_delay`.
    slow_first_ratio: float = 0.0
    slow_first_delay: float = 0.0

    def merged(self, overrides: Mapping[str, Any]) -> MockBehaviour:
        """A copy with ``overrides`` applied; a ValueError names any bad key or value."""
        types = {f.name: f.type for f in fields(self)}
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in types:
                raise ValueError(f"unknown mock setting {key!r}")
            values[key] = _coerce(key, value, str(types[key]))
        return replace(self, **values)


DEFAULT_BEHAVIOUR = MockBehaviour()


def _coerce(key: str, value: Any, annotation: str) -> Any:
    if value is None and "None" in annotation:
        return None
    try:
        if annotation.startswith("str"):
            if not isinstance(value, str):
                raise TypeError
            return value
        if annotation.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes"}
            if not isinstance(value, bool):
                raise TypeError
            return value
        if annotation.startswith("int"):
            number = int(value)
            if number < 0 or isinstance(value, bool) or (key == "chunks" and number < 1):
                raise ValueError
            return number
        seconds = float(value)
        if seconds < 0 or not math.isfinite(seconds) or (key.endswith("ratio") and seconds > 1):
            raise ValueError
        return seconds
    except (TypeError, ValueError):
        raise ValueError(f"invalid value for mock setting {key!r}: {value!r}") from None


def behaviour_for(
    defaults: MockBehaviour, body: Mapping[str, Any], headers: Mapping[str, str]
) -> MockBehaviour:
    """The behaviour for one request: defaults, then X-Mock-* headers, then the body's "mock"."""
    from_headers = {
        name[len(_HEADER_PREFIX) :].replace("-", "_"): value
        for name, value in ((k.lower(), v) for k, v in headers.items())
        if name.startswith(_HEADER_PREFIX)
    }
    behaviour = defaults.merged(from_headers) if from_headers else defaults
    in_body = body.get("mock")
    if in_body is None:
        return behaviour
    if not isinstance(in_body, Mapping):
        raise ValueError("the 'mock' field must be an object")
    return behaviour.merged(in_body)


def first_byte_delay(behaviour: MockBehaviour, index: int) -> float:
    """Seconds before the first byte of the server's request number ``index`` (from 1).

    Request n is slow when ``floor(n * slow_first_ratio)`` steps up at n: exactly that share of
    requests, spread evenly, and the same requests on every run (benchmarks are reproducible).
    """
    ratio = behaviour.slow_first_ratio
    if ratio and math.floor(index * ratio) > math.floor((index - 1) * ratio):
        return behaviour.slow_first_delay
    return behaviour.first_byte_delay
