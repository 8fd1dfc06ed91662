"""Whether a request may use the cache, and its key.

The key is a SHA-256 over the endpoint, the resolved model and every body field that changes the
answer: everything but ``stream``, ``stream_options`` and ``user``. It is scoped to the API key
unless ``cache.scope`` is global, so one tenant never reads another's answers.

Request headers:
    X-Gateway-Cache: on | off        opt in (mode deterministic) or out
    X-Gateway-Cache-TTL: seconds     how long this answer is kept (at most the configured TTL)
    X-Gateway-Cache-Replay: paced    replay a stream with its recorded timing
    Cache-Control: no-cache          skip the lookup, store the answer
    Cache-Control: no-store          neither look up nor store
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from gateway.config import CacheSettings
from gateway.errors import InvalidRequest
from gateway.openai import Endpoint, ParsedRequest

IGNORED_FIELDS = frozenset({"stream", "stream_options", "user"})
MAX_TTL = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What the cache does for one request."""

    key: str | None  # None: the cache is bypassed
    lookup: bool = False
    store: bool = False
    ttl: float = 0.0
    paced: bool = False

    @property
    def bypass(self) -> bool:
        return self.key is None


BYPASS = CacheDecision(None)


def decide(
    parsed: ParsedRequest,
    upstream_model: str,
    headers: Mapping[str, str],
    scope: str,
    settings: CacheSettings,
) -> CacheDecision:
    """The decision for ``parsed``; ``scope`` is the API key id (or "" without auth)."""
    opt = headers.get("X-Gateway-Cache", "").strip().lower()
    control = {part.strip().lower() for part in headers.get("Cache-Control", "").split(",")}
    if settings.mode == "off" or opt == "off" or "no-store" in control:
        return BYPASS
    if settings.mode == "deterministic" and opt != "on" and not _deterministic(parsed):
        return BYPASS
    ttl = settings.ttl_for(parsed.model)
    asked = headers.get("X-Gateway-Cache-TTL")
    if asked is not None:
        try:
            ttl = float(asked)
        except ValueError:
            ttl = -1.0
        if not 0 <= ttl <= MAX_TTL:
            raise InvalidRequest(
                f"X-Gateway-Cache-TTL must be a number of seconds from 0 to {MAX_TTL:g}.",
                param="X-Gateway-Cache-TTL",
            )
        # A client may shorten an entry's life, never lengthen it past what the operator set.
        ttl = min(ttl, settings.ttl_for(parsed.model))
    material = {k: v for k, v in parsed.body.items() if k not in IGNORED_FIELDS}
    material["model"] = upstream_model
    digest = hashlib.sha256(
        parsed.endpoint.value.encode() + b"\0" + orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    owner = "global" if settings.scope == "global" else (scope or "anonymous")
    return CacheDecision(
        key=f"{owner}:{digest}",
        lookup="no-cache" not in control,
        store=ttl > 0,
        ttl=ttl,
        paced=headers.get("X-Gateway-Cache-Replay", "").strip().lower() == "paced",
    )


def _deterministic(parsed: ParsedRequest) -> bool:
    """Embeddings always are; completions with temperature 0 or a seed are meant to be."""
    body = parsed.body
    return (
        parsed.endpoint is Endpoint.EMBEDDINGS
        or body.get("temperature") == 0
        or isinstance(body.get("seed"), int)
    )
