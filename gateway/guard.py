"""Keeping a request inside its key's budgets: drawn before it is spent, settled at the end.

:class:`KeySpend` is one request's account with the ledger. At admission it draws the prompt (at
the input price) and a first lease of output tokens; a budget that cannot cover both refuses the
request with 429 ``budget_exceeded``. At the end it settles: the request's real cost (its usage
at the table's prices) minus what it drew, given back or charged.

:class:`BudgetGuard` keeps a running stream inside its leases. Set on each attempt's event
source before its first event (a guard, through ``gate.py``: it sees every batch before any sink),
it admits a batch's leading events up to the lease and holds the rest, the upstream paused, until
the next lease answers. It draws that lease when the stream has used half of the current one, so a
healthy stream never waits. When no lease can be had, the stream ends with one
``budget_exceeded`` error (the upstream is cancelled; every sink reports it its own way) and only
what was delivered counts. Output tokens are content events (one streamed chunk is about one
token), found by a bytes search: no JSON is parsed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

from gateway.background import BackgroundTasks
from gateway.budget import Budget
from gateway.errors import BudgetExceeded
from gateway.ledger import Grant, Ledger
from gateway.openai import carries_content
from gateway.source import EventSource

log = logging.getLogger("gateway.budget")
DEFAULT_LEASE_TOKENS = 256
MAX_SETTLING = 10_000  # settlements under way per worker
_SETTLING = BackgroundTasks(MAX_SETTLING)  # for a KeySpend made without the app's


class KeySpend:
    """One request's draws from one key's budgets, and its settlement."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        key_id: str,
        budgets: Sequence[Budget],
        input_usd_per_token: float,
        output_usd_per_token: float,
        lease_tokens: int = DEFAULT_LEASE_TOKENS,
        settling: BackgroundTasks | None = None,
    ) -> None:
        self.ledger = ledger
        self.key_id = key_id
        self.budgets = tuple(budgets)
        self.input_usd_per_token = input_usd_per_token
        self.output_usd_per_token = output_usd_per_token
        self.lease_tokens = lease_tokens
        self.drawn_tokens = 0
        self.drawn_usd = 0.0
        self.settled = False
        self._settling = settling or _SETTLING

    async def admit(self, prompt_tokens: int) -> int:
        """Draw the prompt and the first lease; the lease's output tokens, or BudgetExceeded."""
        try:
            prompt = await self.ledger.draw(
                self.key_id, self.budgets, prompt_tokens, self.input_usd_per_token
            )
            self.took(prompt, self.input_usd_per_token)
            if prompt.tokens < prompt_tokens:
                raise exceeded(prompt, "the prompt alone costs more than is left")
            first = await self.ledger.draw(
                self.key_id, self.budgets, self.lease_tokens, self.output_usd_per_token
            )
        except BudgetExceeded:
            await self.give_back()
            raise
        except Exception as exc:  # the ledger is unreachable: fail open, as the limiter does
            log.warning("budget not checked: ledger unreachable", extra={"error": repr(exc)})
            return self.lease_tokens
        self.took(first, self.output_usd_per_token)
        if first.tokens <= 0:
            await self.give_back()
            raise exceeded(first, "nothing is left")
        return first.tokens

    def took(self, grant: Grant, usd_per_token: float) -> None:
        """Count a grant as drawn."""
        self.drawn_tokens += grant.tokens
        self.drawn_usd += grant.tokens * usd_per_token

    async def give_back(self) -> None:
        """Return everything drawn (the request never reached an upstream)."""
        await self._settle(0, 0.0)

    def settle_later(self, tokens: int, usd: float | None) -> None:
        """Settle in the background: the request used ``tokens`` and cost ``usd``."""
        if self.settled:
            return
        if not self._settling.spawn(self._settle(tokens, usd)):
            log.error("budget settlement dropped: too many under way", extra={"key": self.key_id})

    async def _settle(self, tokens: int, usd: float | None) -> None:
        if self.settled:
            return
        self.settled = True
        cost = self.drawn_usd if usd is None else usd  # no price: what was drawn stands
        try:
            await self.ledger.settle(
                self.key_id, self.budgets, tokens - self.drawn_tokens, cost - self.drawn_usd
            )
        except Exception as exc:
            log.warning("budget settlement failed", extra={"error": repr(exc), "key": self.key_id})


def exceeded(grant: Grant, why: str) -> BudgetExceeded:
    """The 429 a request gets (before its stream) or the error event that ends a stream."""
    binding = f" ({grant.binding})" if grant.binding is not None else ""
    when = ""
    headers: dict[str, str] = {}
    if grant.resets_at is not None:
        stamp = grant.resets_at.isoformat().replace("+00:00", "Z")
        when = f" It resets at {stamp}."
        headers["X-Gateway-Budget-Reset"] = stamp
        wait = (grant.resets_at - dt.datetime.now(dt.UTC)).total_seconds()
        headers["Retry-After"] = str(max(1, int(wait) + 1))
    return BudgetExceeded(
        f"This API key's budget{binding} is spent: {why}.{when}", headers=headers or None
    )


class BudgetGuard:
    """One stream's leases of output tokens, drawn through its request's :class:`KeySpend`."""

    def __init__(self, source: EventSource, spend: KeySpend, *, granted: int) -> None:
        self.source = source
        self.spend = spend
        self.granted = granted  # output tokens leased so far (the first lease, at admission)
        self.delivered = 0  # content events let through to the sinks
        self.exhausted: Grant | None = None
        self._drawing: asyncio.Task[Grant] | None = None

    # -- Guard ------------------------------------------------------------------------------------

    def admit(self, payloads: list[bytes]) -> int:
        taken = 0
        for payload in payloads:
            if carries_content(payload):
                if self.delivered >= self.granted:
                    break
                self.delivered += 1
            taken += 1
        if (
            self.delivered >= self.granted - self.spend.lease_tokens // 2
            and self._drawing is None
            and self.exhausted is None
        ):
            self._draw()  # ahead of need: a healthy stream never waits
        return taken

    def wait(self) -> None:
        if self.exhausted is not None:
            self._cut()
            return
        if self._drawing is None:  # the held events are released when it answers
            self._draw()

    # -- leases -----------------------------------------------------------------------------------

    def _draw(self) -> None:
        spend = self.spend
        self._drawing = asyncio.get_running_loop().create_task(
            spend.ledger.draw(
                spend.key_id, spend.budgets, spend.lease_tokens, spend.output_usd_per_token
            )
        )
        self._drawing.add_done_callback(self._drawn)

    def _drawn(self, task: asyncio.Task[Grant]) -> None:
        self._drawing = None
        if task.cancelled() or self.source.done:
            if not task.cancelled() and task.exception() is None:
                self.spend.took(task.result(), self.spend.output_usd_per_token)
            return
        error = task.exception()
        if error is not None:
            # The ledger is unreachable: fail open for this lease (the limiter's rule), logged.
            log.warning("budget not checked: ledger unreachable", extra={"error": repr(error)})
            grant = Grant(self.spend.lease_tokens)
        else:
            grant = task.result()
            self.spend.took(grant, self.spend.output_usd_per_token)
        if grant.tokens <= 0:
            self.exhausted = grant
        self.granted += grant.tokens
        self.source.release()  # what the gate holds (if anything) is offered again

    def _cut(self) -> None:
        """End the stream at its budget. The batch that went past it was not delivered: it is
        not counted either, so the request is accounted with what its client got."""
        self.source.content_events = self.delivered
        self.source.fail(exceeded(self.exhausted or Grant(0), "the stream was ended there"))
