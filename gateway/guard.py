"""The budget guard: a sink that keeps a running stream inside its key's budgets.

Attached to the event source before any other sink, it holds a lease of output tokens drawn from
the ledger. When the stream has used half its lease it draws the next one in the background, so
a healthy stream never waits; if the stream reaches the end of its lease while a draw is still on
its way, the source is paused until it answers. When no lease can be had, the stream ends with one
``budget_exceeded`` error (the upstream is cancelled; every sink reports it its own way). The
stream's output tokens are counted from the source's content counter: no JSON is parsed.

At the end :meth:`BudgetGuard.settle` charges what the stream really cost and gives back the
unused part of its leases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.budget import Budget, Grant, Ledger
from gateway.errors import BudgetExceeded, GatewayError
from gateway.source import EventSource

log = logging.getLogger("gateway.budget")
DEFAULT_LEASE_TOKENS = 256


class BudgetGuard:
    """One stream's leases from one key's budgets."""

    def __init__(
        self,
        source: EventSource,
        ledger: Ledger,
        *,
        key_id: str,
        budgets: Sequence[Budget],
        usd_per_token: float,
        granted: int,
        lease_tokens: int = DEFAULT_LEASE_TOKENS,
    ) -> None:
        self.source = source
        self.ledger = ledger
        self.key_id = key_id
        self.budgets = tuple(budgets)
        self.usd_per_token = usd_per_token
        self.granted = granted  # output tokens leased so far (the first lease, at admission)
        self.lease_tokens = lease_tokens
        self.exhausted: Grant | None = None
        self._drawing: asyncio.Task[Grant] | None = None
        self._waiting = False  # the source is paused for a draw

    # -- Sink -------------------------------------------------------------------------------------

    def deliver(self, framed: bytes, payloads: list[bytes], usage_only: bool) -> None:
        used = self.source.content_events  # this batch's events included
        if used > self.granted:
            if self._drawing is None and self.exhausted is None:
                self._draw()
            if self.exhausted is not None:
                self._cut()
                return
            if not self._waiting:
                self._waiting = True
                self.source.pause()  # the next lease is on its way: wait for it, not past it
        elif (
            used >= self.granted - self.lease_tokens // 2
            and self._drawing is None
            and self.exhausted is None
        ):
            self._draw()

    def keepalive(self) -> None:
        return None

    def finish(self, error: GatewayError | None) -> None:
        return None  # a draw still on its way settles itself in _drawn

    # -- leases -----------------------------------------------------------------------------------

    def _draw(self) -> None:
        self._drawing = asyncio.get_running_loop().create_task(
            self.ledger.draw(self.key_id, self.budgets, self.lease_tokens, self.usd_per_token)
        )
        self._drawing.add_done_callback(self._drawn)

    def _drawn(self, task: asyncio.Task[Grant]) -> None:
        self._drawing = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # The ledger is unreachable: fail open for this lease (the limiter's rule), logged.
            log.warning("budget not checked: ledger unreachable", extra={"error": repr(error)})
            grant = Grant(self.lease_tokens)
        else:
            grant = task.result()
        if grant.tokens <= 0:
            self.exhausted = grant
        self.granted += grant.tokens
        if self._waiting:
            self._waiting = False
            if self.exhausted is not None and self.source.content_events > self.granted:
                self._cut()
            self.source.resume()

    def _cut(self) -> None:
        grant = self.exhausted
        when = ""
        if grant is not None and grant.resets_at is not None:
            when = f"; it resets at {grant.resets_at.isoformat().replace('+00:00', 'Z')}"
        binding = grant.binding if grant is not None else None
        self.source.fail(
            BudgetExceeded(
                f"This API key's budget ({binding}) is spent{when}. The stream was ended there."
            )
        )

    async def settle(self, cost_usd: float, tokens: int) -> None:
        """Charge the stream's real cost and give back what its leases did not use."""
        leased_usd = self.granted * self.usd_per_token
        await self.ledger.settle(
            self.key_id, self.budgets, tokens - self.granted, cost_usd - leased_usd
        )
