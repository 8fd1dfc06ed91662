"""The redactor: configured secrets and token-shaped strings never leave in upstream errors."""

from __future__ import annotations

import orjson

from gateway import redact
from gateway.config import load_config
from gateway.errors import UpstreamStatusError
from gateway.redact import Redactor, UpstreamCredentialsRejected


def config_with_key(key: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        {"UPSTREAM_KEY": key},
        overrides={
            "deployments": {
                "east": {"base_url": "https://llm.internal:8443/v1", "api_key": "env:UPSTREAM_KEY"}
            },
            "models": {"*": {"deployments": ["east"]}},
        },
    )


def test_configured_keys_hosts_and_token_shapes_are_replaced() -> None:
    """A configured key of any shape, its host, bearer tokens and sk- keys all become [redacted]."""
    redactor = Redactor.for_config(config_with_key("plainsecret-123"))
    text = (
        b'{"error":{"message":"key plainsecret-123 from llm.internal:8443 with '
        b'Authorization: Bearer abc.def-ghi and sk-proj-0123456789abcdef"}}'
    )
    scrubbed = redactor.scrub(text)
    for secret in (b"plainsecret-123", b"llm.internal:8443", b"abc.def-ghi", b"sk-proj-0123"):
        assert secret not in scrubbed
    assert scrubbed.count(b"[redacted]") == 4
    assert orjson.loads(scrubbed)["error"]["message"].startswith("key [redacted] from")


def test_ordinary_text_is_left_alone() -> None:
    """Words like 'bearer' alone, short strings and risk-free text pass through unchanged."""
    redactor = Redactor(["abc"])  # too short to be a secret: not redacted
    text = b'{"error":{"message":"the bearer of bad news asked abc; sk- is a prefix"}}'
    assert redactor.scrub(text) == text


def test_upstream_401_and_403_become_the_gateways_error_naming_the_deployment() -> None:
    """An upstream refusing the gateway's credentials is a 502 of the gateway's own."""
    redactor = Redactor(["sk-upstream-secret"])
    for status in (401, 403):
        echoed = b'{"error":{"message":"Incorrect API key provided: sk-upstream-secret"}}'
        error = redactor.status_error(UpstreamStatusError(status, echoed, deployment="east"))
        assert isinstance(error, UpstreamCredentialsRejected) and error.http_status == 502
        assert "'east'" in error.message and b"sk-upstream" not in error.to_json()


def test_other_statuses_keep_their_status_with_a_scrubbed_body() -> None:
    """A 400 or 429 keeps its status and Retry-After; only the secret is replaced."""
    redactor = Redactor(["sk-upstream-secret"])
    original = UpstreamStatusError(
        429, b'{"error":{"message":"slow down sk-upstream-secret"}}', retry_after="3"
    )
    error = redactor.status_error(original)
    assert error.http_status == 429 and error.headers["Retry-After"] == "3"
    assert b"[redacted]" in error.to_json() and b"sk-upstream-secret" not in error.to_json()
    clean = UpstreamStatusError(400, b'{"error":{"message":"bad temperature"}}')
    assert redactor.status_error(clean) is clean


def test_the_stream_hook_uses_the_installed_redactor() -> None:
    """error_event scrubs with the worker's redactor, installed by make_app."""
    previous = redact.installed()
    try:
        redact.install(Redactor(["my-upstream-key-1"]))
        event = b'{"error":{"message":"denied for my-upstream-key-1"}}'
        assert redact.error_event(event) == b'{"error":{"message":"denied for [redacted]"}}'
    finally:
        redact.install(previous)
