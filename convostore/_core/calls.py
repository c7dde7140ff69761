"""The lifecycle of repository calls: admission, shielding, retries, and draining at ``stop()``.

Every call that reaches the database is admitted here first (``enter``/``leave``), so ``stop()``
can refuse new calls and wait for every call in flight, including one that is between two of
its transactions. Each database operation runs through ``run``: it waits its turn at the
``Gate``, in arrival order, so that no more operations run at once than the pool can lend
connections; ``run`` is the one place where driver errors become ``StoreError`` and where an
operation that met a dead connection is sent again: every write carries an idempotency key (or
is idempotent by itself), so sending it again after an unknown outcome never stores it twice.

A server that stops answering (a hung host, a black-holed network) would hold a call forever;
on convostore's own PostgreSQL engine each connect and statement is bounded by
``attempt_timeout`` instead, and one that ran out of time counts as a lost connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from sqlalchemy.exc import TimeoutError as PoolTimeout

from convostore._core.gate import Gate, holding
from convostore.errors import (
    NotRunning,
    StoreError,
    StoreUnavailable,
    causes,
    is_disconnect,
    is_transient,
    translate_errors,
)

__all__ = ["CallLifecycle", "attempt_timeout"]

T = TypeVar("T")
logger = logging.getLogger("convostore")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_MIN_ATTEMPT_TIMEOUT = 1.0
"""Seconds a connect or statement may always take, whatever ``reconnect_timeout`` says."""


def attempt_timeout(reconnect_timeout: float) -> float | None:
    """How long one connect, statement or wait for a pooled connection may take on
    convostore's own PostgreSQL engine: half of ``reconnect_timeout``, so that a call whose
    connection died without a word still has time to retry on a fresh one, and at least
    ``_MIN_ATTEMPT_TIMEOUT``; None (unbounded) if ``reconnect_timeout`` is infinite."""
    if not math.isfinite(reconnect_timeout):
        return None
    return max(reconnect_timeout / 2, _MIN_ATTEMPT_TIMEOUT)


def _timed_out(exc: BaseException) -> bool:
    """Whether a connect, a statement or a wait for a pooled connection ran out of time."""
    return any(isinstance(cause, _TIMEOUTS) for cause in causes(exc))


_TIMEOUTS = (asyncio.TimeoutError, PoolTimeout)


class CallLifecycle:
    """Counts the calls in flight and runs their database operations."""

    def __init__(
        self,
        reconnect_timeout: float,
        attempt_timeout: float | None = None,
        gate: Gate | None = None,
    ) -> None:
        """``attempt_timeout``: the bound of each connect and statement, which an operation
        that timed out has spent already. None: not known (an engine passed in has the
        caller's timeouts), so a timeout is taken to have spent all of ``reconnect_timeout``.
        ``gate``: where operations queue for a connection (None: the pool's own queue
        decides, as on an engine passed in)."""
        self.gate = gate
        self.phase: Literal["new", "running", "stopping", "stopped"] = "new"
        self._reconnect_timeout = reconnect_timeout
        self._attempt_timeout = attempt_timeout
        self._active = 0
        self._shielded: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        """Admit a call, or raise ``NotRunning`` outside ``start()`` ... ``stop()``."""
        if self.phase != "running":
            raise NotRunning(
                "the SessionRepository is not running: use `async with repo:` or "
                "`await repo.start()` first"
                if self.phase == "new"
                else "the SessionRepository was stopped"
            )
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        if not self._active and self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Refuse new calls, then wait until every admitted call and every shielded
        operation has ended."""
        self.phase = "stopping"
        while self._active or self._shielded:
            if self._shielded:
                await asyncio.wait(list(self._shielded))
            if self._active:
                self._idle = asyncio.Event()
                await self._idle.wait()
        self.phase = "stopped"

    async def run(
        self,
        action: str,
        operation: Callable[[], Coroutine[Any, Any, T]],
        *,
        shield: bool = False,
    ) -> T:
        """Run ``operation()``, translating driver errors. If it fails because the connection
        or server went away, the database undid it to break a deadlock, or something ran out
        of time (a connect, a statement, a wait for
        a pooled connection: a silent server holds them all), run it again, backing off while
        the server is down, until ``reconnect_timeout`` seconds have passed since the call
        began; then raise ``StoreUnavailable``. The clock is read only once an operation has
        failed, so a call that succeeds reads none: one that failed on a timeout began
        ``attempt_timeout`` earlier.

        ``shield``: run it to its end even if the caller is cancelled (a client hung up), so
        no multi-statement transaction is cut short; the caller still sees the cancellation.
        Single-statement operations run in the caller's task, which saves a task per call.

        Each attempt holds a permit of the gate while it runs, not while it backs off."""
        deadline: float | None = None
        backoff = 0.0
        while True:
            try:
                if shield:
                    return await self._shield(action, self.gated(operation))
                with translate_errors(action):
                    return await self.gated(operation)
            except asyncio.CancelledError as exc:
                # The frames the operation was cancelled in hold its cursor; on SQLite the
                # connection SQLAlchemy closed stays open until that cursor is freed, and
                # keeps the read it was in (the WAL cannot be reset behind it).
                traceback.clear_frames(exc.__traceback__)
                raise
            except StoreError as exc:
                transient = is_transient(exc)
                if not (transient or is_disconnect(exc) or _timed_out(exc)):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._left_after(exc)
                    if transient:
                        # InnoDB undoing a deadlock's victim is routine under contention.
                        logger.info("convostore: %s was undone by a deadlock; retrying", action)
                    elif now < deadline:
                        logger.warning("convostore: %s met a lost connection; retrying", action)
                if now >= deadline:
                    raise StoreUnavailable(
                        f"{action} failed: the database was unreachable or did not answer "
                        f"for {self._reconnect_timeout:g} s (StoreConfig.reconnect_timeout)"
                    ) from exc.__cause__
                await asyncio.sleep(min(backoff, deadline - now))
                backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)

    async def gated(self, operation: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``operation()`` holding a permit of the gate, waiting for one first at most as
        long as an attempt may take (``asyncio.TimeoutError`` then, which ``run`` counts as
        an attempt that ran out of time: operations ahead that a silent server holds)."""
        gate = self.gate
        if gate is None:
            return await operation()
        return await holding(gate, self._attempt_timeout or self._reconnect_timeout, operation)

    def _left_after(self, exc: BaseException) -> float:
        """Seconds left for retries after an operation failed with ``exc`` (the first failure
        of a call)."""
        if not _timed_out(exc):
            return self._reconnect_timeout
        spent = self._attempt_timeout
        if spent is None or spent >= self._reconnect_timeout:
            return 0.0
        return self._reconnect_timeout - spent

    async def _shield(self, action: str, operation: Coroutine[Any, Any, T]) -> T:
        async def translated() -> T:
            with translate_errors(action):
                return await operation

        task = asyncio.ensure_future(translated())
        self._shielded.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._shielded.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller may never look at it
