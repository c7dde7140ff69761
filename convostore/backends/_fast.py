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
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy import ClauseElement, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from convostore._core.gate import Gate, Turns, stepping_aside
from convostore.backends._private import run_in_sqlite_thread
from convostore.errors import is_disconnect

__all__ = [
    "Compiled",
    "Inserts",
    "Lender",
    "PostgresDriver",
    "Processor",
    "Reads",
    "SqliteDriver",
    "write_transaction",
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

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
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
        selected = list(getattr(statement, "selected_columns", ()))
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


class Lender:
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
            await _give_back(kept[0])
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
            await _give_back(pooled)

    @property
    def kept(self) -> int:
        """How many connections are kept now."""
        return len(self._kept)

    async def release(self, keep: int = 0) -> None:
        """Return the kept connections to their pool, all but ``keep`` of them."""
        while len(self._kept) > keep:
            await _give_back(self._kept.pop(0)[0])


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


class PostgresDriver:
    """Lends asyncpg connections from the engine's pool, in autocommit: each statement run on
    them is atomic by itself. Statements run through ``Connection.fetch``, so asyncpg's own
    statement cache prepares them (none behind PgBouncer, where the engine turns it off) and
    its query loggers see them."""

    def __init__(self, lender: Lender, *, owns_engine: bool) -> None:
        self.lender = lender
        self.engine = lender.engine
        self._owns_engine = owns_engine
        self._appends: Groups[_Append, list[Any]] = Groups(
            self._append_alone, self._append_group, limit=_APPENDS_AT_ONCE
        )

    async def read(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one statement, on a lent ``asyncpg.Connection``."""
        return await self._fetch(compiled.sql, compiled.args(params))

    async def _fetch(self, sql: str, args: list[Any], *, many: bool = False) -> list[Any]:
        """The rows of ``sql`` with ``args``, or, ``many``, of ``sql`` run once for each list
        of arguments in ``args``, all in one round trip and one transaction (asyncpg's
        ``fetchmany``): every run is stored or none is."""
        pooled, pool = await self.lender.take()
        driver = pooled.driver_connection
        assert driver is not None
        try:
            rows: list[Any] = await (
                driver.fetchmany(sql, args) if many else driver.fetch(sql, *args)
            )
        except BaseException as exc:
            await self._failed(pooled, driver, exc)
            raise
        await self.lender.give_back(pooled, pool)
        return rows

    async def append(
        self, alone: Compiled, grouped: Compiled, params: Mapping[str, Any]
    ) -> list[Any]:
        """The rows of the one-statement append ``alone`` (none: nothing was written).

        While two appends of this process run, more queue and then go as a group: one
        round trip and one commit for all (``Groups``), ``grouped`` (``alone`` returning one
        row each, NULLs for nothing written) run once per append, in the order of their
        session ids, so that groups of two processes lock sessions in one order and never
        deadlock. At 50 concurrent callers this cut the server's work per append (its commits
        above all) and the client's round trips. If the server refuses one of them (an
        idempotency key stored already), the group stores nothing and each is sent alone."""
        return await self._appends.run(_Append(alone, grouped, params))

    async def _append_alone(self, append: _Append) -> list[Any]:
        return await self.read(append.alone, append.params)

    async def _append_group(self, appends: list[_Append]) -> list[tuple[bool, Any]]:
        order = sorted(range(len(appends)), key=lambda i: str(appends[i].params["sid"]))
        grouped = appends[0].grouped
        try:
            rows = await self._fetch(
                grouped.sql, [grouped.args(appends[i].params) for i in order], many=True
            )
        except Exception as exc:
            if not _server_refused(exc):
                raise
            outcomes: list[tuple[bool, Any]] = []
            for append in appends:
                try:
                    outcomes.append((True, await self._append_alone(append)))
                except Exception as alone:
                    outcomes.append((False, alone))
            return outcomes
        outcomes = [(False, None)] * len(appends)
        for row, index in zip(rows, order, strict=True):
            outcomes[index] = (True, [] if row[0] is None else [row])
        return outcomes

    async def _failed(self, pooled: Any, driver: Any, exc: BaseException) -> None:
        """Give back or discard the connection a statement failed on."""
        if not driver.is_closed() and (
            _server_refused(exc) or isinstance(exc, asyncio.CancelledError)
        ):
            # The server answered with an error (a constraint, a trigger): the statement ended
            # and, in autocommit, no transaction is left open, so the connection is as good as
            # before and goes back to the pool. So does one whose caller was cancelled:
            # asyncpg has asked the server to cancel the statement, and the connection's next
            # command waits until the server confirms (up to its command_timeout; asyncpg
            # closes a connection whose cancel is not confirmed by then).
            await _give_back(pooled)
            return
        # A statement that ran out of time (command_timeout) says this connection did not
        # answer, not that the server went away: its siblings stay in the pool.
        gone = not isinstance(exc, asyncio.TimeoutError) and (
            driver.is_closed() or is_disconnect(exc)
        )
        # Closed at once: a graceful close would wait for a server that may not answer.
        driver.terminate()
        await _discard(pooled, exc)
        if self._owns_engine and gone:
            # The server went away, so its siblings in the pool are dead too. An engine passed
            # in is the caller's: its pool is left alone (the retry takes each dead connection
            # out as it meets it).
            await self.engine.dispose()

    write = read
    """A data-modifying statement ... RETURNING is atomic by itself in autocommit."""


_APPENDS_AT_ONCE = 2
"""How many appends (or groups of them) of one process run at once on PostgreSQL: two, so
that the server works on one group while the client reads the last one's rows and sends the
next (one at a time left either side idle half the time)."""


async def _give_back(pooled: Any) -> None:
    """Return a connection to the pool. The pool may talk to the driver then (a reset, or
    closing a connection beyond its size), which SQLAlchemy's asyncio layer only allows inside
    its greenlet."""
    await greenlet_spawn(pooled.close)


def _server_refused(exc: BaseException) -> bool:
    """An error PostgreSQL sent for a statement (it has a SQLSTATE), other than one that
    means the connection or the server is going away."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and not is_disconnect(exc)


async def _discard(pooled: Any, exc: BaseException) -> None:
    """Close a pooled connection that failed, so it is never reused in an unknown state."""
    await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)


class SqliteDriver:
    """Runs a function on the ``sqlite3`` connection inside aiosqlite's worker thread
    (through aiosqlite's private API: see ``_private.run_in_sqlite_thread``).

    Write transactions of this process that arrive while one is running wait in a queue and
    then run together, back to back in one thread hop, each in a savepoint of one transaction
    that commits them all (``write_group``): SQLite admits one writer at a time anyway, and
    its commit (the WAL's flush to disk) is paid once for the group. Each caller still gets
    its own outcome: a write that fails is rolled back to its savepoint alone; only a failure
    of the group's transaction itself (its BEGIN or COMMIT) fails every write in it, and then
    none of them is stored."""

    def __init__(self, lender: Lender, writes: Turns) -> None:
        """``writes``: where each write transaction waits its turn, in the worker thread
        (``HotPath.writes``)."""
        self.lender = lender
        self._writes = writes
        self.engine = lender.engine
        self._writes_in_turn: Groups[_Write, list[tuple[Any, ...]]] = Groups(
            self._write_alone, self._write_group
        )

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` in one thread hop. ``work`` owns its transaction: it
        commits, or rolls back before raising."""
        pooled, pool = await self.lender.take()
        try:
            aio = pooled.driver_connection
            assert aio is not None
            result = await run_in_sqlite_thread(aio, work)
        except BaseException as exc:
            await _discard(pooled, exc)
            raise
        await self.lender.give_back(pooled, pool)
        return result

    async def read(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one statement, in one thread hop."""
        return await self.run(
            lambda conn: conn.execute(compiled.sql, compiled.args(params)).fetchall()
        )

    async def read_parts(
        self, head: Compiled, params: Mapping[str, Any], then: Reads
    ) -> tuple[list[Any], list[list[Any]]]:
        """The rows of ``head``, then of each statement ``then(first row of head)`` asks for
        (none if head has no rows), in one read transaction (one snapshot) and one hop."""
        args = head.args(params)

        def read(connection: sqlite3.Connection) -> tuple[list[Any], list[list[Any]]]:
            began = not connection.in_transaction
            if began:
                connection.execute("BEGIN")
            try:
                rows = connection.execute(head.sql, args).fetchall()
                return rows, [
                    connection.execute(compiled.sql, compiled.args(more)).fetchall()
                    for compiled, more in (then(rows[0]) if rows else ())
                ]
            finally:
                if began:
                    connection.rollback()  # it only read: this ends its snapshot

        return await self.run(read)

    async def write(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one data-modifying statement ... RETURNING, committed, in one hop."""
        return await self.write_transaction(compiled, params)

    async def write_transaction(
        self, head: Compiled, params: Mapping[str, Any], then: Inserts | None = None
    ) -> list[tuple[Any, ...]]:
        """``write_transaction``, in one thread hop, or in a group with the writes queued
        behind a running one. Arguments are bound here, before the hop: Python run in the
        worker thread competes with the event loop for the GIL."""
        return await self._writes_in_turn.run(_Write(head.sql, head.args(params), then))

    async def _write_alone(self, write: _Write) -> list[tuple[Any, ...]]:
        return await self._in_turn(lambda connection: write_transaction(connection, *write))

    async def _write_group(self, writes: list[_Write]) -> list[tuple[bool, Any]]:
        return await self._in_turn(lambda connection: write_group(connection, writes))

    async def _in_turn(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``run(work)``, holding this process's turn to write while ``work`` runs."""
        turns = self._writes

        def held(connection: sqlite3.Connection) -> T:
            turns.hold_in_thread()
            try:
                return work(connection)
            finally:
                turns.release()

        return await self.run(held)


class _Append(NamedTuple):
    """An append for ``PostgresDriver.append``: its statements and parameters."""

    alone: Compiled
    grouped: Compiled
    params: Mapping[str, Any]


class _Write(NamedTuple):
    """A write transaction's statements, bound: ``write_transaction``'s arguments."""

    sql: str
    args: Sequence[Any]
    then: Inserts | None


def write_transaction(
    connection: sqlite3.Connection,
    sql: str,
    args: Sequence[Any],
    then: Inserts | None = None,
) -> list[tuple[Any, ...]]:
    """One SQLite write transaction: the head statement ``sql`` (an UPDATE or DELETE ...
    RETURNING), then the inserts ``then(first row)`` asks for. Returns head's rows; if there
    are none, nothing is written.

    The transaction is begun here, explicitly and with the write lock (``BEGIN IMMEDIATE``),
    whatever the connection's own transaction settings: a connection in autocommit (as
    SQLAlchemy's aiosqlite recipe sets it up) would otherwise commit statement by statement
    and could store a user turn without its answer."""
    if not connection.in_transaction:
        connection.execute("BEGIN IMMEDIATE")
    try:
        rows = _write(connection, sql, args, then)
        if rows:
            connection.commit()
        else:
            connection.rollback()
        return rows
    except BaseException:
        connection.rollback()
        raise


def write_group(connection: sqlite3.Connection, writes: Sequence[_Write]) -> list[tuple[bool, Any]]:
    """Several write transactions as one: each in a savepoint, rolled back to it alone if it
    fails, then one commit. Returns each write's outcome: (True, head's rows) or (False, the
    exception it raised). An error of the transaction itself is raised, nothing committed."""
    if not connection.in_transaction:
        connection.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[bool, Any]] = []
    try:
        for write in writes:
            connection.execute("SAVEPOINT convostore_write")
            try:
                outcomes.append((True, _write(connection, *write)))
            except Exception as exc:
                connection.execute("ROLLBACK TO convostore_write")
                outcomes.append((False, exc))
            connection.execute("RELEASE convostore_write")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    return outcomes


def _write(
    connection: sqlite3.Connection, sql: str, args: Sequence[Any], then: Inserts | None
) -> list[tuple[Any, ...]]:
    """The statements of a write transaction, inside one."""
    rows = [tuple(row) for row in connection.execute(sql, args)]
    if rows:
        for compiled, many in then(rows[0]) if then else ():
            if many:
                connection.executemany(compiled.sql, many)
    return rows
