"""The hot paths' executor: statements SQLAlchemy compiled once, run on the pooled driver
connection.

SQLAlchemy stays the source of truth: its Core statements define the SQL, its dialect compiles
them and supplies the type processors, its engine owns the pool. What this module skips is the
per-statement work of SQLAlchemy's execution layer (more than the statement itself costs the
server; figures in docs/architecture.md), on the three paths a web request takes every time:
appending an exchange, loading a session, sliding its expiry.

- PostgreSQL (asyncpg): each operation is a single statement, so it runs in autocommit as one
  round trip (the append is one data-modifying CTE; see ``_core/store.py``).
- SQLite (aiosqlite): each operation runs as one function in the connection's worker thread,
  a whole transaction in one thread hop instead of one hop per statement.

Appends that arrive while others run queue and then go together, one commit for the group
(``Groups``): one SQLite transaction with a savepoint each, or one PostgreSQL round trip.

A connection that failed in an unknown state (lost, timed out) is invalidated, never reused;
one on which PostgreSQL merely refused a statement, or whose statement asyncpg is cancelling
for a cancelled caller, goes back to the pool. An error that means the server went away also
empties the pool of an engine convostore created, so that after a database restart the retry
(``_core/calls.py``) finds fresh connections at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import ClauseElement, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from convostore._core.gate import Gate, stepping_aside
from convostore.backends._statements import UpdateThenRead

__all__ = [
    "Compiled",
    "ConnectionLender",
    "Inserts",
    "Processor",
    "Reads",
    "discard",
    "give_back",
]

T = TypeVar("T")
W = TypeVar("W")
R = TypeVar("R")

Processor = Callable[[Any], Any]
Inserts = Callable[[tuple[Any, ...]], Sequence[tuple["Compiled", Sequence[Sequence[Any]]]]]
"""Given the first row of a write transaction's head statement: the inserts that follow it,
each a statement and its rows of positional arguments (``Compiled.args``)."""


Reads = Callable[[Sequence[Any]], Sequence[tuple["Compiled", Mapping[str, Any]]]]
"""Given the first row of a read's head statement: the statements to read after it, each
with its parameters (bound in the worker thread: they should need no processors)."""


class Compiled:
    """A Core statement compiled for one dialect: SQL text, and how to turn named parameters
    into the driver's positional arguments and result rows back into Python values."""

    def __init__(self, statement: ClauseElement | UpdateThenRead, dialect: Dialect) -> None:
        self.then: Compiled | None = None
        """For an ``UpdateThenRead``: the read to run after the update, if it matched a row;
        the update's result columns are the read's."""
        if isinstance(statement, UpdateThenRead):
            self.then = Compiled(statement.read, dialect)
            statement = statement.update
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None
        self.sql = str(compiled)
        self._binds: list[tuple[str | None, Any, Processor | None]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required or bind.callable is not None:
                self._binds.append((bind.key, None, processor))
            else:
                value = processor(bind.value) if processor else bind.value
                self._binds.append((None, value, None))
        self.statement: ClauseElement = statement
        returned = statement if self.then is None else self.then.statement
        selected = list(getattr(returned, "selected_columns", ()))
        self.columns = {column.key: index for index, column in enumerate(selected)}
        """Each result column's index, by name."""
        self.processors: list[Processor | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected
        ]
        """Each result column's conversion from the driver's value, or None if there is none."""
        self._processing = [(i, f) for i, f in enumerate(self.processors) if f is not None]

    def position(self, key: str) -> int:
        """The index in ``args`` of parameter ``key``, which must have no bind processor (so
        that a value set there later goes to the driver as it is)."""
        (index,) = [i for i, (name, _, processor) in enumerate(self._binds) if name == key]
        assert self._binds[index][2] is None
        return index

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``params``, bind processors applied."""
        return [
            constant if key is None else (processor(params[key]) if processor else params[key])
            for key, constant, processor in self._binds
        ]

    def row(self, row: Sequence[Any]) -> list[Any]:
        """A driver row with the result processors applied."""
        values = list(row)
        for index, processor in self._processing:
            values[index] = processor(values[index])
        return values


class ConnectionLender:
    """Lends the hot path pooled connections of an engine.

    With an engine convostore created, a connection an operation gives back may be kept for
    the next operation instead of going back to the pool: it skips a checkout and a return
    through SQLAlchemy's pool and greenlet per operation. It keeps one while
    nobody waits at the ``gate``, and as many as wait there while some do: a burst of
    operations ending together would otherwise fill the pool past its size, and the pool
    closes what it cannot hold, so the waiters let in next had to connect anew (hundreds of
    reconnects a second at 50 callers). It keeps one only while the pool could still lend
    another (the gate's capacity is the pool's size plus overflow), so that an operation that
    takes its connection from the pool itself never waits for a kept one; and none while
    something listens to the pool's checkouts (it sees one per operation then). A connection
    from a pool disposed since is closed, not reused; ``release`` (at ``stop()``) gives the
    kept ones back. An engine passed in is the caller's: its connections always go back to
    its pool."""

    def __init__(self, engine: AsyncEngine, *, gate: Gate | None) -> None:
        self.engine = engine
        self._gate = gate
        self._kept: list[tuple[Any, Any]] = []

    async def take(self) -> tuple[Any, Any]:
        """A pooled connection and the pool it came from."""
        pool = self.engine.sync_engine.pool
        while self._kept:
            kept = self._kept.pop()
            if kept[1] is pool and not pool.dispatch.checkout:
                return kept
            await give_back(kept[0])
        return await self.engine.raw_connection(), pool

    async def give_back(self, pooled: Any, pool: Any) -> None:
        """Keep ``pooled`` for a next operation, or return it to ``pool``."""
        gate = self._gate
        if (
            gate is not None
            and len(self._kept) < max(1, gate.waiting)
            and pool is self.engine.sync_engine.pool
            and isinstance(pool, QueuePool)
            and pool.checkedout() < gate.capacity
            and not pool.dispatch.checkout
        ):
            self._kept.append((pooled, pool))
        else:
            await give_back(pooled)

    @property
    def kept(self) -> int:
        """How many connections are kept now."""
        return len(self._kept)

    async def release(self, keep: int = 0) -> None:
        """Return the kept connections to their pool, all but ``keep`` of them."""
        while len(self._kept) > keep:
            await give_back(self._kept.pop(0)[0])


class Groups(Generic[W, R]):
    """Writes of one process, at most ``limit`` running at a time; those that arrive while
    the limit is reached wait in a queue, and go together, as one group, when one ends.

    ``one`` runs a write alone; ``many`` runs a group and returns each write's outcome, (True,
    its result) or (False, the exception it raised), in order, or raises what failed them
    all. A group runs in a task of its own: its callers may be cancelled, and it runs for the
    others; a write whose caller was cancelled before its group began is left out. A queued
    write holds no connection: all but the first of a group pass their permit of the
    repository's gate on while they wait (``gate.stepping_aside``), so that more operations
    run, and groups grow, without more connections than the pool has (the first one's permit
    stands for the group's connection)."""

    def __init__(
        self,
        one: Callable[[W], Awaitable[R]],
        many: Callable[[list[W]], Awaitable[list[tuple[bool, Any]]]],
        limit: int = 1,
    ) -> None:
        self._one = one
        self._many = many
        self._limit = limit
        self._running = 0
        self._queued: list[tuple[W, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        """Groups running (held: the event loop keeps only weak references to tasks)."""

    async def run(self, write: W) -> R:
        """``write``'s result, run alone or in a group."""
        if self._running >= self._limit:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queued.append((write, future))
            if len(self._queued) == 1:
                # The first of a group keeps its permit of the gate: the group's connection.
                return await future
            return await stepping_aside(future)
        self._running += 1
        try:
            return await self._one(write)
        finally:
            self._next()

    def _next(self) -> None:
        """After a write or a group: the queued writes go next, as a group."""
        queued = [(write, future) for write, future in self._queued if not future.done()]
        self._queued = []
        if not queued:
            self._running -= 1
            return
        task = asyncio.ensure_future(self._group(queued))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _group(self, queued: list[tuple[W, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._many([write for write, _ in queued])
        except Exception as exc:
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:
            for _, future in queued:
                future.cancel()
            raise
        else:
            for (_, future), (ok, outcome) in zip(queued, outcomes, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(outcome)
                    else:
                        future.set_exception(outcome)
        finally:
            self._next()


async def give_back(pooled: Any) -> None:
    """Return a connection to the pool. The pool may talk to the driver then (a reset, or
    closing a connection beyond its size), which SQLAlchemy's asyncio layer only allows inside
    its greenlet."""
    await greenlet_spawn(pooled.close)


async def discard(pooled: Any, exc: BaseException) -> None:
    """Close a pooled connection that failed, so it is never reused in an unknown state."""
    await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)
