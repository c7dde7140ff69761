"""``Gate``: a first-come, first-served limit on operations running at once.

A repository runs at most as many database operations at a time as its own engine's pool can
lend connections (size plus overflow), and queues the rest here, in arrival order. Past that
limit SQLAlchemy's pool would queue them instead, on an ``asyncio.Queue`` whose woken waiter
can lose the freed connection to a caller that arrived later and goes back to the end of the
line: at 50 concurrent callers some waited out the pool's 30 s timeout while thousands of
later ones were served. Here a released permit is handed to the longest waiter directly, so
nobody overtakes it (written here rather than taken from ``asyncio.Semaphore``, whose
handling of woken and cancelled waiters has changed between the Python releases convostore
supports).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["Gate"]


class Gate:
    """At most ``capacity`` holders at once; waiters are let in in the order they came."""

    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Wait for a permit. A caller cancelled while waiting leaves its place, and passes
        on a permit handed to it in the same moment."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a permit back: to the longest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    @property
    def waiting(self) -> int:
        """How many callers wait for a permit now."""
        return len(self._waiters)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
