"""Budgets in money and tokens: a limit per period (``25/month`` USD, ``100000/day`` tokens,
``5/lifetime``), how a key record stores them, and the windows they are counted in. No I/O; the
ledger that budgets are drawn from is ``gateway/ledger.py``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Period = Literal["day", "month", "lifetime"]
Unit = Literal["usd", "tokens"]
PERIODS: tuple[Period, ...] = ("day", "month", "lifetime")


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit of ``unit`` per ``period``."""

    limit: float
    period: Period
    unit: Unit

    def __str__(self) -> str:
        amount = f"${self.limit:g}" if self.unit == "usd" else f"{self.limit:g} tokens"
        return f"{amount}/{self.period}"


def parse_budget(text: str, unit: Unit) -> Budget:
    """``25/month``, ``2/day``, ``100000/day``, ``5/lifetime`` (a bare number is lifetime)."""
    amount, _, period = text.strip().partition("/")
    period = period.strip().lower() or "lifetime"
    if period not in PERIODS:
        raise ValueError(f"budget period must be day, month or lifetime, got {period!r}")
    try:
        limit = float(amount)
    except ValueError:
        raise ValueError(f"budget amount must be a number, got {amount!r}") from None
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"budget amount must be positive, got {amount!r}")
    if unit == "tokens" and limit != int(limit):
        raise ValueError(f"a token budget is a whole number, got {amount!r}")
    return Budget(limit, period, unit)


def budgets_text(budgets: Sequence[Budget]) -> str | None:
    """Budgets as stored in a key record: ``usd:25/month,tokens:100000/day`` (None: none)."""
    if not budgets:
        return None
    return ",".join(f"{b.unit}:{b.limit!r}/{b.period}" for b in budgets)


def budgets_from_text(text: str | None) -> tuple[Budget, ...]:
    """The budgets of a stored key record (see :func:`budgets_text`)."""
    if not text:
        return ()
    found: list[Budget] = []
    for part in text.split(","):
        unit, _, rest = part.partition(":")
        if unit not in ("usd", "tokens"):
            raise ValueError(f"stored budget {part!r} has no unit")
        found.append(parse_budget(rest, "usd" if unit == "usd" else "tokens"))
    return tuple(found)


def budget_view(budget: Budget) -> dict[str, object]:
    """A budget as the admin API and ``keys show`` present it."""
    limit: float | int = int(budget.limit) if budget.unit == "tokens" else budget.limit
    return {"unit": budget.unit, "limit": limit, "period": budget.period, "text": str(budget)}


def window_start(period: Period, now: dt.datetime) -> str | None:
    """The first UTC day of the current window, as usage rollups name days (None: lifetime)."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "month":
        return now.strftime("%Y-%m-01")
    return None


def window(period: Period, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    """The current window's label and when it resets (UTC; None for lifetime)."""
    now = now.astimezone(dt.UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y%m%d"), start + dt.timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("m%Y%m"), following
    return "life", None
