"""First come, first served: ``Gate``, a limit on operations running at once, and ``Turns``,
one holder at a time across worker threads and the event loop.

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
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TypeVar

__all__ = ["Gate", "Turns", "holding", "stepping_aside"]

T = TypeVar("T")


class Gate:
    """At most ``capacity`` holders at once; waiters are let in in the order they came."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        """How many may hold a permit at once."""
        self._free = capacity
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float | None = None, *, first: bool = False) -> None:
        """Wait for a permit, at most ``timeout`` seconds (then ``asyncio.TimeoutError``). A
        caller cancelled or timed out while waiting leaves its place, and passes on a permit
        handed to it in the same moment. ``first``: ahead of those waiting (a caller whose
        operation is under way already, see ``stepping_aside``)."""
        if self._free > 0 and (first or not self._waiters):
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        expired: list[bool] = []

        def expire() -> None:
            if not waiter.done():
                expired.append(True)
                waiter.cancel()

        # A timer on the waiter itself, not asyncio.wait_for, which wakes the caller one
        # loop iteration after the permit comes (it cost throughput at 50 callers).
        timer = loop.call_later(timeout, expire) if timeout is not None else None
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if expired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            if timer is not None:
                timer.cancel()

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


class _Holder:
    """The permit of a gate that the current task holds, while it holds it."""

    __slots__ = ("gate", "held")

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.held = True


_holder: ContextVar[_Holder | None] = ContextVar("convostore_gate_holder", default=None)


async def holding(gate: Gate, timeout: float | None, operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation()`` holding a permit of ``gate``, waiting for one first at most
    ``timeout`` seconds; the permit may be passed on meanwhile (``stepping_aside``)."""
    await gate.acquire(timeout)
    holder = _Holder(gate)
    token = _holder.set(holder)
    try:
        return await operation()
    finally:
        _holder.reset(token)
        if holder.held:
            gate.release()


async def stepping_aside(wait: Awaitable[T]) -> T:
    """Await ``wait``, work that others do on their connections (a group of writes this
    task's write joined), with this task's permit passed on to the next in line meanwhile;
    then take one again, ahead of those waiting, since the operation is under way."""
    holder = _holder.get()
    if holder is None or not holder.held:
        return await wait
    holder.held = False
    holder.gate.release()
    try:
        return await wait
    finally:
        await holder.gate.acquire(first=True)
        holder.held = True


class Turns:
    """One holder at a time, in the order they asked, whether they wait in a worker thread
    (``hold_in_thread``, blocking it) or in the event loop (``acquire``, awaiting).

    SQLite's write transactions of one process take their turns here. The file admits one
    writer at a time anyway; left to contend for its lock, writers poll it with growing
    sleeps (the busy timeout), and one that kept missing it waited seconds while others were
    served. Waiting in the worker thread that will run the transaction, the next writer
    starts the moment the last one commits, without a trip through the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        """The ticket the next one to ask gets."""
        self._serving = 0
        """The ticket whose holder has the turn."""
        self._left: set[int] = set()
        """Tickets of loop waiters cancelled before their turn came."""
        self._awaiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._blocked: dict[int, threading.Lock] = {}
        """Tickets of threads waiting for their turn: each blocks on its own lock, which
        ``release`` unlocks when the turn comes (waking only that thread, not all)."""

    @property
    def asked(self) -> int:
        """How many have asked for a turn so far."""
        return self._next

    def hold_in_thread(self) -> None:
        """Block this (worker) thread until it has the turn. Call ``release`` after."""
        with self._lock:
            ticket = self._next
            self._next += 1
            if self._serving == ticket:
                return
            blocked = self._blocked[ticket] = threading.Lock()
            blocked.acquire()
        blocked.acquire()

    async def acquire(self) -> None:
        """Wait in the event loop for the turn. Call ``release`` after. A caller cancelled
        while waiting leaves its place, and passes on a turn handed to it in that moment."""
        loop = asyncio.get_running_loop()
        with self._lock:
            ticket = self._next
            self._next += 1
            if self._serving == ticket:
                return
            waiter = loop.create_future()
            self._awaiting[ticket] = (loop, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                before_turn = self._awaiting.pop(ticket, None) is not None
                if before_turn:
                    self._left.add(ticket)
            if not before_turn and not waiter.cancelled():
                self.release()  # the turn came and is ours; a cancelled one _grant passes on
            raise

    def release(self) -> None:
        """End the holder's turn and give it to the next in line (from any thread)."""
        with self._lock:
            self._serving += 1
            while self._serving in self._left:
                self._left.discard(self._serving)
                self._serving += 1
            awaiting = self._awaiting.pop(self._serving, None)
            blocked = self._blocked.pop(self._serving, None)
        if blocked is not None:
            blocked.release()
        elif awaiting is not None:
            loop, waiter = awaiting
            loop.call_soon_threadsafe(self._grant, waiter)

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():
            self.release()
        else:
            waiter.set_result(None)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """The turn, awaited in the event loop, for the block's duration."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
