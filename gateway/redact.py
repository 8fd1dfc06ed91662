"""Secrets scrubbed from what an upstream says before a client sees it (sans-IO: bytes to bytes).

An upstream error body may echo the request it refused ("Incorrect API key provided: Bearer
sk-..."), its host or its headers. Whatever the gateway passes through, a JSON error or a stream's
final error event, goes through :func:`error_event` or :meth:`Redactor.status_error` first: every
configured upstream key and host, and anything shaped like a bearer token or an ``sk-`` key,
becomes ``[redacted]``. An upstream 401/403 is the gateway's misconfiguration, not the client's, so
it is answered with an error of the gateway's own that names the deployment, without the
upstream's text.

The replacement has no quote or backslash, so a JSON body stays valid JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.errors import UpstreamError, UpstreamStatusError

REDACTED = b"[redacted]"
# A bearer credential (RFC 6750's token characters, 8 or more of them); an OpenAI-style key.
_TOKEN_PATTERNS = (
    rb"[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/=\-]{8,}",
    rb"\bsk-[A-Za-z0-9_\-]{6,}",
)
# Below this length a configured "secret" (a test placeholder) would redact ordinary words.
MIN_SECRET_LENGTH = 6


class UpstreamCredentialsRejected(UpstreamError):
    """A deployment refused the gateway's own credentials (its 401/403): 502, never passed on."""

    default_code = "upstream_auth_failed"


class Redactor:
    """Replaces known secrets and token-shaped strings in bytes."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )
        alternatives = [re.escape(s.encode()) for s in literals] + list(_TOKEN_PATTERNS)
        self._pattern = re.compile(b"|".join(b"(?:" + a + b")" for a in alternatives))

    @classmethod
    def for_config(cls, config: Config) -> Redactor:
        """Every upstream key of every deployment, and the hosts they live on."""
        secrets: list[str] = []
        for deployment in config.deployments.values():
            secrets.extend(deployment.api_keys)
            if not deployment.in_process:
                host = urlsplit(deployment.base_url).netloc
                secrets.append(host.rsplit("@", 1)[-1])
        return cls(secrets)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every secret replaced; the same object when there was none."""
        return self._pattern.sub(REDACTED, data)

    def status_error(self, error: UpstreamStatusError) -> UpstreamError:
        """What the client sees for an upstream error status: scrubbed, or the gateway's own."""
        if error.upstream_status in (401, 403):
            where = f"Deployment {error.deployment!r}" if error.deployment else "The upstream"
            return UpstreamCredentialsRejected(
                f"{where} refused the gateway's credentials (status {error.upstream_status}); "
                "the operator must fix its API key.",
            )
        scrubbed = self.scrub(error.body)
        if scrubbed == error.body:
            return error
        return UpstreamStatusError(
            error.upstream_status,
            scrubbed,
            content_type=error.content_type,
            retry_after=error.headers.get("Retry-After"),
            deployment=error.deployment,
        )


# The worker's redactor: installed by make_app from the config, used by the stream engine's hook.
_installed = Redactor()


def install(redactor: Redactor) -> None:
    """Make ``redactor`` the one :func:`error_event` uses (one per worker process)."""
    global _installed
    _installed = redactor


def installed() -> Redactor:
    """The worker's redactor."""
    return _installed


def error_event(data: bytes) -> bytes:
    """The stream engine's hook: call it on an upstream's own error event before relaying it."""
    return _installed.scrub(data)
