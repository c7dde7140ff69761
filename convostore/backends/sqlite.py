"""SQLite through aiosqlite: the embedded backend.

One file, one writer at a time: this process's write transactions take turns
(``gate.Turns``) and hold the write lock from their start (``BEGIN IMMEDIATE``); a new id may
be the largest stored plus one. Connections wait for locks instead of failing, enforce foreign
keys and use WAL (``sqlite_on_connect``). The fast path runs each operation as one function in
aiosqlite's worker thread (``SqliteDriver``); the change watcher reads the file's
``data_version`` and then the feed the schema's triggers fill (``SqliteWatcher``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Float,
    Insert,
    Integer,
    Select,
    String,
    Subquery,
    Table,
    and_,
    bindparam,
    cast,
    column,
    event,
    func,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.cache import SessionCache, Switch
from convostore._core.coherence import PollingWatcher, Watcher, news_of
from convostore._core.gate import Turns
from convostore._core.quiet import keep_sqlite_content_out_of_logs
from convostore._core.schema import SEARCH_TABLE, turns
from convostore.backends import Backend, SearchMatch, SearchSnippet
from convostore.backends._fast import Compiled, ConnectionLender, Groups, Inserts, Reads, discard
from convostore.backends._private import aiosqlite_thread_api, run_in_sqlite_thread
from convostore.backends._search import MARK, OMITTED, SNIPPET_WORDS
from convostore.backends._statements import Statements
from convostore.config import StoreConfig
from convostore.errors import ConfigError

__all__ = ["BACKEND", "SQLITE_BUSY_TIMEOUT_MS", "SqliteBackend", "SqliteDriver", "SqliteWatcher"]

logger = logging.getLogger("convostore")

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another's lock before failing: long enough that
ordinary contention between tasks or processes on one file never says "database is locked"."""


def sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """The ``connect`` listener ``prepare_engine`` adds to a SQLite engine (and
    ``release_engine`` removes): enforce foreign keys (for ON DELETE CASCADE), wait for locks
    instead of failing, and use WAL so readers never block the writer.

    WAL is a property of the database file, so it is set once, by whichever connection gets
    there first. Switching needs a moment with no other connection busy, which a new file
    under concurrent first use may not offer: a connection that cannot switch leaves it to a
    later one rather than fail.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()
        if mode is None or str(mode[0]).lower() not in ("wal", "memory"):
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
    finally:
        cursor.close()


def sqlite_on_close(dbapi_connection: Any, connection_record: Any) -> None:
    """The ``close`` listener added and removed with ``sqlite_on_connect``: roll back before
    the pool closes a connection.

    SQLAlchemy closes a connection it invalidates, as it does when a caller is cancelled in
    the middle of a statement. The cancellation's traceback still holds that statement's
    cursor, and sqlite3 cannot close a connection with a statement alive: it keeps it as a
    "zombie", with its transaction and SQLite's write lock, until the cursor is collected,
    which may be never while the caller keeps its task. A close outside an awaited call
    (garbage collection) cannot wait for the rollback and leaves it to the close."""
    with suppress(Exception):
        dbapi_connection.rollback()


def begin_immediate(connection: Connection) -> bool:
    """Begin a SQLite transaction holding the write lock (``BEGIN IMMEDIATE``) unless the
    driver connection is in a transaction already, which SQLAlchemy's ``in_transaction`` does
    not tell (sqlite3 begins one only before a write; an engine set up with SQLAlchemy's
    aiosqlite recipe begins its own). Returns whether it began one."""
    driver = connection.connection.driver_connection
    if driver is not None and driver.in_transaction:
        return False
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    return True


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

    appends_in_groups = False
    loads_in_parts = True

    def __init__(self, lender: ConnectionLender, writes: Turns) -> None:
        """``writes``: where each write transaction waits its turn, in the worker thread
        (``Executors.writes``)."""
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
            await discard(pooled, exc)
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


SQLITE_POLL_INTERVAL = 0.01
"""Seconds between two looks at a SQLite file's ``data_version`` (a few microseconds each)."""


_DATA_VERSION = "PRAGMA data_version"


_SQLITE_BUSY_TIMEOUT = 1.0


class SqliteWatcher(PollingWatcher):
    """Polls a SQLite file's ``data_version`` and reads its change feed when it moved."""

    name = "change poller"

    def __init__(self, cache: SessionCache, path: str, dialect: Dialect) -> None:
        super().__init__(cache)
        self._path = path
        sql = Statements(BACKEND)
        self._since = Compiled(sql.changes_since, dialect)
        self._oldest = Compiled(sql.oldest_change, dialect)
        self._newest = Compiled(sql.newest_change, dialect)

    async def _follow(self) -> None:
        # Plain sqlite3 in this thread: a poll blocks only the watcher's own loop, and costs
        # no hop to another thread.
        conn = sqlite3.connect(self._path, timeout=_SQLITE_BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = ON")
            version = _scalar(conn, _DATA_VERSION)
            last = _scalar(conn, self._newest.sql, self._newest.args({}))
            self._connected()
            while True:
                await asyncio.sleep(SQLITE_POLL_INTERVAL)
                now = _scalar(conn, _DATA_VERSION)
                if now != version:
                    version = now
                    last = self._apply(conn, last)
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, last: int) -> int:
        """Post the feed's rows after ``last``; returns the newest row seen."""
        rows = conn.execute(self._since.sql, self._since.args({"after": last})).fetchall()
        if not rows:
            return last
        if rows[0][0] != last + 1:
            oldest = _scalar(conn, self._oldest.sql, self._oldest.args({}))
            if oldest > last + 1:
                logger.info("convostore: change feed pruned past this process; cache cleared")
                self.post([Switch.CLEAR])
                return int(rows[-1][0])
        self.post(news_of(rows))
        return int(rows[-1][0])


def _scalar(conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> int:
    row = conn.execute(sql, args).fetchone()
    return int(row[0])


_LISTENERS = (("connect", sqlite_on_connect), ("close", sqlite_on_close))
"""The pool events ``prepare`` listens to on a SQLite engine, and ``release`` stops."""

_repositories_using: WeakKeyDictionary[Engine, int] = WeakKeyDictionary()
"""How many started repositories use each SQLite engine's listeners."""


def _search_index() -> Any:
    """The FTS5 table over ``turns`` (migration 0010), by rowid, which is the turn's."""
    return table(SEARCH_TABLE, column("rowid", Integer()))


def _matches(terms: BindParameter[str]) -> ColumnElement[bool]:
    """The FTS5 table's rows matching ``terms``."""
    return literal_column(SEARCH_TABLE).op("MATCH", is_comparison=True)(terms)


class SqliteBackend(Backend):
    """SQLite: one writer at a time, in a file (or in memory) the process opens."""

    name = "sqlite"
    driver = "aiosqlite"
    example_url = "sqlite+aiosqlite:///file.db"
    one_writer = True
    embedded = True

    def check_schema_name(self, schema: str) -> None:
        """SQLite keeps convostore apart in a file of its own: a table prefix would have to be
        part of every table and of the migrations' raw SQL (views, triggers)."""
        raise ConfigError(
            f"schema {schema!r}: on SQLite convostore's tables live in a database file of "
            "their own; leave schema unset and give convostore its own database_url "
            "(sqlite+aiosqlite:///convostore.db) beside the host's file"
        )

    def insert_ignoring(
        self, table: Table, keys: Sequence[Column[Any]], returning: Column[Any]
    ) -> Insert:
        return (
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=list(keys))
            .returning(returning)
        )

    def insert_replacing(
        self, table: Table, keys: Sequence[Column[Any]], rows: Select[Any], replaced: Sequence[str]
    ) -> Insert:
        insert = sqlite.insert(table).from_select(rows.selected_columns.keys(), rows)
        return insert.on_conflict_do_update(
            index_elements=list(keys), set_={name: insert.excluded[name] for name in replaced}
        )

    def greatest(self, *values: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.max(*values)

    def merged_json(self, document: ColumnElement[Any], patch: Any) -> ColumnElement[Any]:
        return func.json_patch(document, patch)

    def json_column(self, column: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        return func.json(column)

    def json_holds(self, document: ColumnElement[Any], keys: int) -> ColumnElement[bool]:
        """Per key, a row of ``json_each`` with that key, JSON type and value: keys need no
        quoting in a path, and ``true`` is not taken for 1."""
        held = []
        for index in range(keys):
            entry = func.json_each(document).table_valued("key", "type", "atom")
            held.append(
                select(literal(1))
                .select_from(entry)
                .where(
                    entry.c.key == bindparam(f"wanted_key_{index}", type_=String()),
                    entry.c.type == bindparam(f"wanted_type_{index}", type_=String()),
                    entry.c.atom == bindparam(f"wanted_atom_{index}"),
                )
                .exists()
            )
        return and_(*held)

    def json_wanted(self, wanted: dict[str, str | int | bool]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for index, (key, value) in enumerate(wanted.items()):
            if type(value) is bool:
                kind = "true" if value else "false"
            else:
                kind = "text" if type(value) is str else "integer"
            params[f"wanted_key_{index}"] = key
            params[f"wanted_type_{index}"] = kind
            params[f"wanted_atom_{index}"] = int(value) if type(value) is bool else value
        return params

    def search_terms(self, query: str) -> str | None:
        """Each word of ``query`` as an FTS5 string (in double quotes, its own doubled): a
        phrase of the tokens in it, never an operator; FTS5 ANDs them."""
        return " ".join('"' + word.replace('"', '""') + '"' for word in query.split()) or None

    def search_match(self, terms: BindParameter[str]) -> SearchMatch:
        index = _search_index()
        return SearchMatch(
            source=index.join(turns, literal_column("turns.rowid") == index.c.rowid),
            condition=_matches(terms),
            rank=-func.bm25(literal_column(SEARCH_TABLE), type_=Float()),
            carried=(index.c.rowid.label("turn_rowid"),),
        )

    def search_snippet(self, page: Subquery, terms: BindParameter[str]) -> SearchSnippet:
        """FTS5's ``snippet`` of the column that matches best; it needs the match itself, so
        the page joins the index again by rowid, one row each."""
        index = _search_index()
        return SearchSnippet(
            source=page.join(index, index.c.rowid == page.c.turn_rowid),
            condition=_matches(terms),
            text=func.snippet(literal_column(SEARCH_TABLE), -1, MARK, MARK, OMITTED, SNIPPET_WORDS),
        )

    def utc_day(self, moment: Any) -> ColumnElement[Any]:
        return func.date(moment)

    def utc_hour(self, moment: Any) -> ColumnElement[Any]:
        return cast(func.strftime("%H", moment), Integer)

    def is_local_file(self, url: URL) -> str | None:
        if url.query.get("uri") or self.in_memory(url):
            return None
        return str(url.database)

    def in_memory(self, url: URL) -> bool:
        return url.database in (None, "", ":memory:")

    def engine_options(
        self, url: URL, config: StoreConfig, timeout: float | None
    ) -> dict[str, Any]:
        # Every convostore transaction commits or rolls back itself, so the pool's own
        # rollback on return would only cost aiosqlite a thread hop per operation.
        options: dict[str, Any] = {"pool_reset_on_return": None}
        if not self.in_memory(url):
            options.update(super().engine_options(url, config, timeout))
        return options

    def prepare(self, engine: AsyncEngine) -> None:
        """The ``connect`` and ``close`` listeners (``sqlite_on_connect``,
        ``sqlite_on_close``), counted per engine, so that ``release`` removes them from a
        caller's engine when the last repository using it stops."""
        sync_engine = engine.sync_engine
        for name, listener in _LISTENERS:
            if not event.contains(sync_engine, name, listener):
                event.listen(sync_engine, name, listener)
        _repositories_using[sync_engine] = _repositories_using.get(sync_engine, 0) + 1

    def release(self, engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine
        users = _repositories_using.get(sync_engine, 0) - 1
        if users > 0:
            _repositories_using[sync_engine] = users
            return
        _repositories_using.pop(sync_engine, None)
        for name, listener in _LISTENERS:
            if event.contains(sync_engine, name, listener):
                event.remove(sync_engine, name, listener)

    def keep_content_out_of_logs(self, engine: AsyncEngine) -> None:
        keep_sqlite_content_out_of_logs(engine)

    def why_no_fast_path(self) -> str | None:
        if not aiosqlite_thread_api():
            return "this aiosqlite has no Connection._execute/_conn"
        return None

    def fast_executor(
        self, lender: ConnectionLender, writes: Turns | None, *, owns_engine: bool
    ) -> SqliteDriver | None:
        assert writes is not None
        return SqliteDriver(lender, writes)

    def watcher(
        self, cache: SessionCache, engine: AsyncEngine, config: StoreConfig
    ) -> Watcher | None:
        url = engine.url
        if self.in_memory(url):
            return None  # no other process sees this database
        return SqliteWatcher(cache, str(url.database), engine.dialect)

    def take_migration_lock(self, connection: Connection) -> None:
        begin_immediate(connection)

    def begin_write(self, connection: Connection) -> bool:
        return begin_immediate(connection)

    @asynccontextmanager
    async def snapshot(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """An explicit BEGIN: sqlite3 begins no transaction before a read, and in WAL mode a
        read transaction is a snapshot."""
        async with engine.connect() as conn, conn.begin():
            await conn.run_sync(_begin_read)
            yield conn

    async def database_bytes(self, conn: AsyncConnection) -> int | None:
        page_count = (await conn.exec_driver_sql("PRAGMA page_count")).scalar()
        page_size = (await conn.exec_driver_sql("PRAGMA page_size")).scalar()
        if page_count is None or page_size is None:
            return None
        return int(page_count) * int(page_size)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def is_disconnect(self, error: BaseException) -> bool:
        return _closed_aiosqlite(error)


def _begin_read(connection: Connection) -> None:
    """Begin a read transaction unless the driver connection is in one already."""
    driver = connection.connection.driver_connection
    if driver is not None and not driver.in_transaction:
        connection.exec_driver_sql("BEGIN")


def _closed_aiosqlite(exc: BaseException) -> bool:
    """aiosqlite's error for a connection whose worker thread has ended."""
    return type(exc) is ValueError and str(exc) == "Connection closed"


BACKEND = SqliteBackend()
