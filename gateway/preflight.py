"""Checks made once, before any worker starts: the store answers, and auth has a master key.

A gateway that would run with auth on but no usable master key refuses to start, with a message
that says what to set, rather than serving an admin API nobody can use.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.config import MIN_MASTER_KEY_LENGTH, Config
from gateway.store import StoreUnavailable, describe, make_store

log = logging.getLogger("gateway.preflight")

MASTER_KEY_HINT = (
    "set LLM_GATEWAY_MASTER_KEY to a random string of at least "
    f"{MIN_MASTER_KEY_LENGTH} characters, for example: "
    "export LLM_GATEWAY_MASTER_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
)


class PreflightError(Exception):
    """The gateway must not start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class AuthState:
    """Whether /v1 needs keys at start-up, and why."""

    required: bool
    reason: str


# Values that ship in examples (deploy/kubernetes/secret.yaml): whoever copies them unchanged
# runs with a master key the whole world can read.
PLACEHOLDER_WORDS = ("replace", "changeme", "change-me", "example", "placeholder", "your-")


def weak_master_key(master_key: str) -> str | None:
    """Why ``master_key`` must not be used (too short, too few characters, a placeholder)."""
    if len(master_key) < MIN_MASTER_KEY_LENGTH or len(set(master_key)) < 8:
        return f"it is weak ({len(master_key)} characters, {len(set(master_key))} distinct)"
    lowered = master_key.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "it is a placeholder from an example, not a secret"
    return None


def auth_state(config: Config) -> AuthState:
    """Open the store, count keys, and decide; raise PreflightError for a missing or weak master
    key (a weak one refuses start-up even while auth is off: it could mint the first key)."""
    master_key = config.auth.master_key
    if master_key is not None and (problem := weak_master_key(master_key)) is not None:
        raise PreflightError(f"LLM_GATEWAY_MASTER_KEY cannot be used: {problem}: {MASTER_KEY_HINT}")
    state = asyncio.run(_auth_state(config))
    if state.required and master_key is None:
        raise PreflightError(
            f"auth is on ({state.reason}) but no master key is set: {MASTER_KEY_HINT}"
        )
    return state


async def _auth_state(config: Config) -> AuthState:
    mode = config.auth.mode
    if mode == "off":
        return AuthState(False, "auth.mode is off")
    if mode == "on":
        return AuthState(True, "auth.mode is on")
    if config.store.shared:
        return AuthState(True, f"the shared store ({describe(config.store)}) holds the keys")
    store = make_store(config.store)
    try:
        await store.open()
        count = await store.count_keys()
    except StoreUnavailable as exc:
        raise PreflightError(f"the store ({describe(config.store)}) cannot be used: {exc}") from exc
    finally:
        await store.close()
    if count:
        return AuthState(True, f"{count} API key(s) exist in {describe(config.store)}")
    return AuthState(False, f"no API key exists in {describe(config.store)}")
