"""Value checks: each takes a raw value and its dotted key, returns the typed value or raises.

The checks do not know which file or variable a value came from: they raise :class:`Invalid`
naming the key, and :func:`gateway.config.load_config` puts the source in front.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any


class Invalid(Exception):
    """One bad value: ``key`` is its dotted path; ``str()`` is ``"key: what is wrong"``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


def shown(value: Any) -> str:
    """A value for an error message: its type, never its content (it may be a secret)."""
    if isinstance(value, bool | int | float):
        return repr(value)
    return type(value).__name__ if not isinstance(value, str) else "a string"


def check(predicate: Callable[[Any], bool], value: Any, key: str, expected: str) -> None:
    """Raise ``key: expected EXPECTED, got ...`` unless ``predicate(value)``."""
    if not predicate(value):
        raise Invalid(key, f"expected {expected}, got {shown(value)}")


def reject_unknown(
    raw: Mapping[str, Any], known: set[str], prefix: str, *, listed: set[str] | None = None
) -> None:
    """Fail on the first key of ``raw`` that is not a setting, listing those that are (or
    ``listed``: the known names less deprecated ones)."""
    for key in raw:
        if key not in known:
            hint = ", ".join(sorted(known if listed is None else listed))
            raise Invalid(f"{prefix}{key}", f"unknown setting (expected one of: {hint})")


def mapping(value: Any, key: str) -> Mapping[str, Any]:
    """A mapping (None reads as an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(key, f"expected a mapping, got {shown(value)}")
    return value


def choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    """One of ``choices``; YAML's ``on``/``off`` (read as booleans) count as those words."""
    if isinstance(value, bool) and ("on" if value else "off") in choices:
        value = "on" if value else "off"
    if value not in choices:
        raise Invalid(key, f"must be one of {', '.join(choices)}, got {shown(value)}")
    return str(value)


def integer(value: Any, key: str, *, minimum: int = 1) -> int:
    """A whole number of at least ``minimum`` (a string of digits from the environment too)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
        value, key, f"a whole number of at least {minimum}",
    )  # fmt: skip
    return int(value)


def _number(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return value


def positive(value: Any, key: str) -> float:
    """A number above 0."""
    value = _number(value)
    check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
        value, key, "a positive number",
    )  # fmt: skip
    return float(value)


def non_negative(value: Any, key: str) -> float:
    """A number of seconds, 0 or more."""
    value = _number(value)
    check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        value, key, "a number of seconds, 0 or more",
    )  # fmt: skip
    return float(value)


def boolean(value: Any, key: str) -> bool:
    """true or false."""
    check(lambda v: isinstance(v, bool), value, key, "true or false")
    return bool(value)


def string(value: Any, key: str) -> str:
    """A non-empty string."""
    check(lambda v: isinstance(v, str) and v != "", value, key, "a non-empty string")
    return str(value)


def strings(value: Any, key: str) -> tuple[str, ...]:
    """A list of non-empty strings; a comma-separated string (from the environment) too."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    check(
        lambda v: isinstance(v, list) and all(isinstance(i, str) and i for i in v),
        value, key, "a list of strings",
    )  # fmt: skip
    return tuple(value)


def secret(value: Any, key: str, environ: Mapping[str, str]) -> str:
    """A literal secret, or ``env:VAR`` read from the environment at start-up."""
    text = string(value, key)
    if not text.startswith("env:"):
        return text
    variable = text[4:]
    resolved = environ.get(variable)
    if not resolved:
        raise Invalid(key, f"environment variable {variable} is not set")
    return resolved


def url(value: str, schemes: tuple[str, ...], key: str) -> str:
    """``value`` unless it starts with none of ``schemes`` (the URL is not echoed)."""
    if not value.startswith(schemes):
        listed = ", ".join(schemes[:-1]) + f" or {schemes[-1]}" if len(schemes) > 1 else schemes[0]
        raise Invalid(key, f"must start with {listed}")
    return value


def http_statuses(value: Any, key: str) -> tuple[int, ...]:
    """A list of HTTP error statuses (400 to 599)."""
    check(
        lambda v: isinstance(v, list) and all(isinstance(s, int) and 400 <= s < 600 for s in v),
        value, key, "a list of HTTP error statuses",
    )  # fmt: skip
    return tuple(value)


def seconds_by_name(value: Any, key: str) -> tuple[tuple[str, float], ...]:
    """``{name: seconds}`` (``cache.model_ttls``), as pairs."""
    return tuple(
        (str(name), positive(seconds, f"{key}.{name}"))
        for name, seconds in mapping(value, key).items()
    )


def price(value: Any, key: str) -> float:
    """USD per million tokens, 0 or more."""
    check(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e6,
        value, key, "a price in USD per million tokens (0 or more)",
    )  # fmt: skip
    return float(value)
