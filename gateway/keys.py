"""API keys: made once, shown once, stored only as a SHA-256 hash.

A key is ``sk-gw-`` and 32 random bytes in URL-safe base64 (256 bits), so a fast hash is enough:
there is nothing to brute-force, unlike a password.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import UTC, datetime

from gateway.budget import Budget, budget_view
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.store.base import KeyRecord

KEY_PREFIX = "sk-gw-"
_KEY_SHAPE = re.compile(r"sk-gw-[A-Za-z0-9_-]{32,128}")
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def generate_key() -> str:
    """A new random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(key: str) -> bool:
    """Whether a presented string has the shape of one of our keys (no store lookup otherwise)."""
    return bool(_KEY_SHAPE.fullmatch(key))


def new_key(
    name: str,
    *,
    models: tuple[str, ...] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_requests: int | None = None,
    expires_at: float | None = None,
    budgets: tuple[Budget, ...] = (),
    now: float | None = None,
) -> tuple[str, KeyRecord]:
    """A fresh key and the record to store for it."""
    key = generate_key()
    record = KeyRecord(
        id="key_" + secrets.token_hex(8),
        name=name,
        key_hash=hash_key(key),
        prefix=key[:12],
        created_at=time.time() if now is None else now,
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_requests=max_requests,
        expires_at=expires_at,
        budgets=budgets,
    )
    return key, record


def parse_expiry(text: str, now: float | None = None) -> float:
    """``24h``, ``30m``, ``7d``, ``2w`` from now, or an ISO date or date-time (UTC if no zone)."""
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expiry {text!r} is neither a duration (24h, 30m, 7d) nor a date (2026-12-31)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


INVALID_KEY_MESSAGE = "Invalid API key. Pass a valid key as 'Authorization: Bearer sk-gw-...'."


def invalid_key() -> AuthenticationError:
    """The one 401 every bad key gets, so a caller cannot tell unknown from revoked or expired."""
    return AuthenticationError(INVALID_KEY_MESSAGE)


def check_usable(record: KeyRecord | None, now: float) -> KeyRecord:
    """The record if the key may be used at all; the identical 401 otherwise."""
    if record is None or record.revoked_at is not None:
        raise invalid_key()
    if record.expires_at is not None and record.expires_at <= now:
        raise invalid_key()
    return record


def check_model(record: KeyRecord, model: str) -> None:
    """403 when the key is limited to other models."""
    if record.models is not None and model not in record.models:
        raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")


def key_status(record: KeyRecord, now: float) -> str:
    """active, revoked or expired."""
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def key_view(record: KeyRecord, now: float | None = None) -> dict[str, object]:
    """A key as shown to people and the admin API: never its hash, never the key."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "status": key_status(record, time.time() if now is None else now),
        "models": None if record.models is None else list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "max_requests": record.max_requests,
        "budgets": [budget_view(b) for b in record.budgets],
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
    }
