"""The hot paths' executor: statements SQLAlchemy compiled once, run on the pooled driver
connection.

SQLAlchemy stays the source of truth: its Core statements define the SQL, its dialect compiles
them and supplies the type processors, its engine owns the pool. What this module skips is the
per-statement work of SQLAlchemy's execution layer (about 0.1 ms a statement, more than the
statement itself costs the server), on the three paths a web request takes every time:
appending an exchange, loading a session, sliding its expiry.

- PostgreSQL (asyncpg): each operation is a single statement, so it runs in autocommit as one
  round trip (the append is one data-modifying CTE; see ``store.py``).
- SQLite (aiosqlite): each operation runs as one function in the connection's worker thread,
  a whole transaction in one thread hop instead of one hop per statement.

A connection that failed in an unknown state (lost, timed out) is invalidated, never reused;
one on which PostgreSQL merely refused a statement, or whose statement asyncpg is cancelling
for a cancelled caller, goes back to the pool. An error that means the server went away also
empties the pool of an engine convostore created, so that after a database restart the retry
(``lifecycle.py``) finds fresh connections at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ARRAY, ClauseElement, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import greenlet_spawn

from ._private import asyncpg_query_logged, run_in_sqlite_thread
from .errors import is_disconnect
from .gate import Turns

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

try:
    from asyncpg.exceptions import InvalidCachedStatementError, OutdatedSchemaCacheError

    _STALE: tuple[type[Exception], ...] = (InvalidCachedStatementError, OutdatedSchemaCacheError)
    """A prepared statement that a schema change made stale."""
except ImportError:  # without the postgres extra no PostgresDriver runs
    _STALE = ()
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
            processor = _bind_processor(bind.type, dialect)
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


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor | None:
    """The dialect's bind processor of ``type_``, except for a one-dimensional ARRAY of items
    that need none: its processor only copies the list (and checks each level's type) before
    the driver sees it (about 8 us of an append on PostgreSQL). The hot paths pass
    such arrays as lists, which asyncpg takes as they are."""
    if (
        isinstance(type_, ARRAY)
        and type_.dimensions in (None, 1)
        and type_.item_type.dialect_impl(dialect).bind_processor(dialect) is None
    ):
        return None
    return type_.dialect_impl(dialect).bind_processor(dialect)


class Lender:
    """Lends the hot path pooled connections of an engine.

    With an engine convostore created, the connection an operation gives back is kept for the
    next one instead of going back to the pool: a checkout and return through SQLAlchemy's
    pool and greenlet cost about 40 us, a tenth of an append. One connection at most is kept,
    and only while the pool could still lend another (``capacity``: its size plus overflow),
    so that no caller ever waits on the pool for the kept one, and none while something
    listens to the pool's checkouts (it sees one per operation then). A connection from a pool
    disposed since is closed, not reused; ``release`` (at ``stop()``) gives the kept one back.
    An engine passed in is the caller's: its connections always go back to its pool."""

    def __init__(self, engine: AsyncEngine, *, capacity: int | None) -> None:
        self.engine = engine
        self._capacity = capacity
        self._kept: tuple[Any, Any] | None = None

    async def take(self) -> tuple[Any, Any]:
        """A pooled connection and the pool it came from."""
        kept, self._kept = self._kept, None
        pool = self.engine.sync_engine.pool
        if kept is not None:
            if kept[1] is pool and not pool.dispatch.checkout:
                return kept
            await _give_back(kept[0])
        return await self.engine.raw_connection(), pool

    async def give_back(self, pooled: Any, pool: Any, *, reset: bool) -> None:
        """Keep ``pooled`` for the next operation, or return it to ``pool``. ``reset``: the
        pool may need to roll it back (a connection that never opened a transaction, on an
        engine without reset on return, needs nothing)."""
        if (
            self._kept is None
            and self._capacity is not None
            and pool is self.engine.sync_engine.pool
            and isinstance(pool, QueuePool)
            and pool.checkedout() < self._capacity
            and not pool.dispatch.checkout
        ):
            self._kept = (pooled, pool)
        elif not reset and _kept_without_io(self.engine, pool):
            pooled.close()  # nothing to roll back and nothing to close: no greenlet
        else:
            await _give_back(pooled)

    @property
    def kept_prepared(self) -> int:
        """Statements prepared on the kept connection (0 if none is kept)."""
        return 0 if self._kept is None else len(self._kept[0].info.get(_PREPARED, ()))

    @property
    def kept(self) -> int:
        """How many connections are kept now (0 or 1)."""
        return 0 if self._kept is None else 1

    async def release(self) -> None:
        """Return the kept connection to its pool."""
        kept, self._kept = self._kept, None
        if kept is not None:
            await _give_back(kept[0])


class PostgresDriver:
    """Lends asyncpg connections from the engine's pool, in autocommit: each statement run on
    them is atomic by itself.

    ``prepare``: run each statement as a ``PreparedStatement`` of the connection, made on its
    first use there, as the true floor does (``Connection.fetch`` looks the statement up in
    asyncpg's cache first: 18 us more for ``SELECT 1``). Only on convostore's own engine and
    not behind a transaction pooler, whose server connections change under a client; never
    while the connection has query loggers (they would not see it). A statement a migration
    made stale is prepared again. The statements live in the pooled connection's ``info``, so
    they go with the connection when the pool closes or invalidates it."""

    def __init__(self, lender: Lender, *, owns_engine: bool, prepare: bool = False) -> None:
        self.lender = lender
        self.engine = lender.engine
        self._owns_engine = owns_engine
        self._prepare = prepare

    async def read(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one statement, on a lent ``asyncpg.Connection``."""
        pooled, pool = await self.lender.take()
        driver = pooled.driver_connection
        assert driver is not None
        args = compiled.args(params)
        try:
            if self._prepare and not asyncpg_query_logged(driver):
                rows = await _fetch_prepared(pooled, driver, compiled.sql, args)
            else:
                rows = await driver.fetch(compiled.sql, *args)
        except BaseException as exc:
            await self._failed(pooled, driver, exc)
            raise
        # Its reset on return is a rollback that SQLAlchemy's asyncpg adapter skips when it
        # opened no transaction (it opened none here).
        await self.lender.give_back(pooled, pool, reset=False)
        return rows

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


_PREPARED = "convostore_prepared"
"""The key, in a pooled connection's ``info``, of its prepared statements by SQL. ``info``
lives as long as the driver connection: a connection closed or invalidated takes them along."""


async def _fetch_prepared(pooled: Any, driver: Any, sql: str, args: list[Any]) -> list[Any]:
    statements: dict[str, Any] = pooled.info.setdefault(_PREPARED, {})
    statement = statements.get(sql)
    if statement is None:
        statement = statements[sql] = await driver.prepare(sql)
    try:
        rows: list[Any] = await statement.fetch(*args)
    except _STALE:
        # A migration changed a table the statement reads; the server ran nothing. ``fetch``
        # prepares it anew; the next call prepares our own again.
        del statements[sql]
        rows = await driver.fetch(sql, *args)
    return rows


def _kept_without_io(engine: AsyncEngine, pool: Any) -> bool:
    """Whether the pool keeps a connection given back now (a pool with room, still the
    engine's), so that returning it closes nothing. After a dispose a connection goes back to
    the old pool, which closes it: that needs the greenlet."""
    return (
        isinstance(pool, QueuePool)
        and engine.sync_engine.pool is pool
        and pool.checkedin() < pool.size()
    )


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
    (through aiosqlite's private API: see ``_private.run_in_sqlite_thread``)."""

    def __init__(self, lender: Lender, writes: Turns, *, owns_engine: bool = False) -> None:
        """``writes``: where each write transaction waits its turn, in the worker thread
        (``HotPath.writes``)."""
        self.lender = lender
        self._writes = writes
        self.engine = lender.engine
        self._no_reset = owns_engine
        """The engine is convostore's own, made with ``pool_reset_on_return=None``: a
        connection given back is not rolled back (every ``work`` ends its transaction)."""

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
        await self.lender.give_back(pooled, pool, reset=not self._no_reset)
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
        """``write_transaction`` in one thread hop. Arguments are bound here, before the hop:
        Python run in the worker thread competes with the event loop for the GIL, and took
        twice as long there."""
        args = head.args(params)
        turns = self._writes

        def work(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            turns.hold_in_thread()
            try:
                return write_transaction(connection, head.sql, args, then)
            finally:
                turns.release()

        return await self.run(work)


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
        rows = [tuple(row) for row in connection.execute(sql, args)]
        if not rows:
            connection.rollback()
            return rows
        for compiled, many in then(rows[0]) if then else ():
            if many:
                connection.executemany(compiled.sql, many)
        connection.commit()
        return rows
    except BaseException:
        connection.rollback()
        raise
