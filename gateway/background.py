"""Work that runs after an answer went out (cache writes, settling limits): bounded, awaited at
shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def mark_retrieved(future: asyncio.Future[Any]) -> None:
    """A done-callback: a future's failure counts as seen, so one nobody awaited does not warn."""
    if not future.cancelled():
        future.exception()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a loop task and wait for it to end, cancelling again if a cancellation was lost
    (on Python 3.11 ``asyncio.timeout`` can turn an outside cancel that coincides with its own
    expiry into a TimeoutError, which the loop's retry handler would then swallow)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)


class BackgroundTasks:
    """At most ``limit`` tasks at once; beyond it new work is dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Start ``work``; False when it was dropped because the limit is reached."""
        if len(self._tasks) >= self._limit:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the tasks under way."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=seconds)
