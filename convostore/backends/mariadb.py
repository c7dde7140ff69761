"""MariaDB (10.6 or later; 10.11 tested) through asyncmy: the third backend.

It runs on SQLAlchemy's execution (no fast path). Many writers at once, as on PostgreSQL:
conversation ids come from the sequence ``conversation_ids``, engines convostore creates read
committed data (MariaDB's default REPEATABLE READ made concurrent creators of one session
deadlock on gap locks), and snapshots ask for REPEATABLE READ themselves. Where MariaDB lacks
what the shared statements use: no ``UPDATE ... RETURNING`` (the update, then a read in the
same transaction: ``Statements.UpdateThenRead``); no ``LIMIT`` in an ``IN`` subquery (a
derived table); no ``CAST(... AS JSON)`` or ``NULLS FIRST`` (ascending order puts NULLs
first). The schema's triggers fill the change feed; its AUTO_INCREMENT ids commit out of order,
so the watcher keeps asking for an id it has not seen below one it has, for ``GAP_WAIT``
seconds. A migration holds a named lock (``GET_LOCK``) until it has committed.

MySQL 8 is not supported: it has no sequences and no ``RETURNING`` at all, and its JSON type
normalises what it stores (docs/mariadb.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Float,
    Index,
    Insert,
    Select,
    Subquery,
    Table,
    and_,
    func,
    null,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import ScalarSelect

from convostore._core.cache import SessionCache
from convostore._core.coherence import MAX_PENDING, POLL_TIMEOUT, FeedLost, PollingWatcher, news_of
from convostore._core.schema import conversation_ids, turns
from convostore.backends import Backend, SearchMatch, SearchSnippet
from convostore.backends._urls import hide_password
from convostore.config import StoreConfig
from convostore.errors import ConfigError

__all__ = ["BACKEND", "GAP_WAIT", "MariaDBBackend", "MariaDBWatcher"]

POLL_INTERVAL = 0.02
"""Seconds between two polls of the feed (one indexed read that usually finds nothing)."""
GAP_WAIT = 30.0
"""Seconds the watcher keeps asking for a feed id it has not seen below one it has. An id is
taken when its write runs and shows when that transaction commits; convostore's own write
transactions last milliseconds. A write whose transaction stays open longer than this after
its feed row was inserted is not seen by other workers' caches (an aborted one never is)."""
_LONGEST_CONNECT_TIMEOUT = 31_536_000
"""asyncmy refuses a ``connect_timeout`` above a year."""
_LOCK_NAME = "convostore_migration"
_LOCK_WAIT = 3600
_NEXT_IDS = text(
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
    "SELECT NEXTVAL(conversation_ids) FROM n"
)
_ADVANCE_IDS = text("SELECT SETVAL(conversation_ids, :top)")
_DATABASE_BYTES = text(
    "SELECT SUM(data_length + index_length) FROM information_schema.tables "
    "WHERE table_schema = DATABASE()"
)
_CURRENT_DATABASE = text("SELECT DATABASE()")
_DATABASE_EXISTS = text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :name")
_UNKNOWN_DATABASE = 1049
_DISCONNECTS = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055})
"""Server shutdown, connection killed, cannot connect, server gone away, lost connection."""
_DUPLICATE_KEY = 1062
_DEADLOCK = 1213
"""InnoDB rolled the transaction back to break a deadlock: run it again."""
_STATEMENT_TIMEOUT = 1969
"""The server stopped a statement at its ``max_statement_time``."""
_SERVER_BOUND = 0.8
"""The server's bound of each statement (``max_statement_time``), as a share of the client's
(``read_timeout``): it stops the statement itself and says so a little before the client would
give up on an answer, so a slow statement is neither left running nor sent again."""
_AUTOINC_READ_FAILED = 1467
"""InnoDB could not take a table's AUTO-INC lock, as when a deadlock or lock wait on it undid
the transaction: what an append's change-feed trigger meets beside a sweep whose DELETE fires
the feed trigger for every row (its inserts hold the lock to the statement's end). Run it
again, as after a deadlock."""
_POLL = "SELECT id, session_id, version FROM convostore_changes WHERE id > %s{pending} ORDER BY id"
_NEWEST = "SELECT COALESCE(MAX(id), 0) FROM convostore_changes"


MIN_WORD = 3
"""InnoDB's ``innodb_ft_min_token_size`` by default: shorter words are not in a FULLTEXT index,
so a search leaves them out instead of requiring them (which would match nothing)."""


class MariaDBBackend(Backend):
    """MariaDB: many writers at once, on a server, through SQLAlchemy's execution."""

    name = "mariadb"
    driver = "asyncmy"
    example_url = "mariadb+asyncmy://user:password@host/database"
    returning_on_update = False
    concurrent_cursors = False
    statement_timeouts = True
    snippet_in_python = True

    def search_terms(self, query: str) -> str | None:
        """Boolean mode with each word required (``+"word"``); words are runs of letters,
        digits and ``_``, so no operator survives. Case and accents are the columns'
        collation's to ignore (migration 0010)."""
        words = [word for word in re.findall(r"\w+", query) if len(word) >= MIN_WORD]
        return " ".join(f'+"{word}"' for word in words) or None

    def search_match(self, terms: BindParameter[str]) -> SearchMatch:
        """``MATCH ... AGAINST`` on the FULLTEXT index; the rank is its score."""
        score = mysql.match(turns.c.content, turns.c.resolved_question, against=terms)
        score = score.in_boolean_mode()
        return SearchMatch(
            source=turns,
            condition=score.bool_op(">")(0),
            rank=type_coerce(score, Float()),
            carried=(turns.c.content, turns.c.resolved_question),
        )

    def search_snippet(self, page: Subquery, terms: BindParameter[str]) -> SearchSnippet:
        """The whole text (question, then resolved question), which the shared code cuts."""
        text = func.concat_ws("\n", page.c.content, page.c.resolved_question)
        return SearchSnippet(source=page, condition=None, text=text)

    def insert_ignoring(
        self, table: Table, keys: Sequence[Column[Any]], returning: Column[Any]
    ) -> Insert:
        """``ON DUPLICATE KEY UPDATE`` of nothing (the first key set to itself), returning the
        existing row's column. ``INSERT IGNORE`` would turn every error into a warning, and
        asyncmy logs each warning it reads, with the duplicate key's value."""
        first = keys[0]
        return mysql.insert(table).on_duplicate_key_update({first.name: first}).returning(returning)

    def insert_replacing(
        self, table: Table, keys: Sequence[Column[Any]], rows: Select[Any], replaced: Sequence[str]
    ) -> Insert:
        """``ON DUPLICATE KEY UPDATE``, which follows the table's keys (``keys`` is its
        primary key)."""
        insert = mysql.insert(table).from_select(rows.selected_columns.keys(), rows)
        return insert.on_duplicate_key_update({name: insert.inserted[name] for name in replaced})

    def before(
        self, columns: Sequence[ColumnElement[Any]], bounds: Sequence[Any]
    ) -> ColumnElement[bool]:
        """Spelled out, column by column: MariaDB reads a row comparison as a filter over the
        index prefix it scans, so a keyset page cost more the further it was; these ORs it
        reads as index ranges."""
        first, *rest = columns
        bound, *more = bounds
        if not rest:
            earlier: ColumnElement[bool] = first < bound
            return earlier
        return or_(first < bound, and_(first == bound, self.before(rest, more)))

    def keyset_read(self, query: Select[Any], index: Index) -> Select[Any]:
        """``FORCE INDEX``: left to itself, MariaDB reads a page ordered newest first through
        the right index but by the user id alone (a ``ref`` read), from the user's newest row
        down, discarding every row before the cursor, so a page in the middle of a long list
        cost more the further it was. Forced, it reads the index range from the cursor on and
        stops at the limit."""
        table = index.table
        assert table is not None, "an index of the schema belongs to its table"
        return query.with_hint(table, f"FORCE INDEX ({index.name})", dialect_name=self.name)

    def json_column(self, column: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        return func.json_extract(column, "$")

    def typed_null(self, type_: Any) -> ColumnElement[Any]:
        return type_coerce(null(), type_)

    def nulls_first(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return column  # ascending order puts NULLs first

    def one_of(self, key: Column[Any], batch: ScalarSelect[Any]) -> ColumnElement[bool]:
        """``key IN (SELECT ... FROM (batch))``: MariaDB refuses LIMIT in an IN subquery, but
        not in a derived table. Its rows are locked by the DELETE itself, which waits for a
        row another transaction holds instead of skipping it."""
        found = batch.element.subquery("batch")
        return key.in_(select(found.c[0]))

    def next_conversation_id(self, largest: ColumnElement[Any]) -> ColumnElement[Any]:
        return conversation_ids.next_value()

    def utc_day(self, moment: Any) -> ColumnElement[Any]:
        return func.date(moment)  # DATETIME holds UTC

    def utc_hour(self, moment: Any) -> ColumnElement[Any]:
        return func.hour(moment)

    def check_url(self, url: URL, what: str) -> None:
        if importlib.util.find_spec("asyncmy") is None:
            raise ConfigError(
                f"{what} {hide_password(url)!r} needs the asyncmy driver, which is not "
                'installed: pip install "convostore[mariadb]"'
            )

    def engine_options(
        self, url: URL, config: StoreConfig, timeout: float | None
    ) -> dict[str, Any]:
        """READ COMMITTED, and connections renewed before the server's ``wait_timeout``
        (8 hours by default) drops them. ``timeout`` bounds each connect (asyncmy's
        ``connect_timeout``), each wait for the server's answer (``read_timeout``: a server that
        stops answering loses its connection) and each wait for a pooled connection; the server
        stops each statement a little earlier (``max_statement_time``, ``_SERVER_BOUND``), so a
        statement that is merely slow ends on the server with ``StatementTimeout`` instead of
        running on after the client gave up."""
        options: dict[str, Any] = {
            **super().engine_options(url, config, timeout),
            "isolation_level": "READ COMMITTED",
            "pool_recycle": 3600,
        }
        if timeout is not None:
            options.update(
                connect_args={
                    "connect_timeout": min(timeout, _LONGEST_CONNECT_TIMEOUT),
                    "read_timeout": timeout,
                    "init_command": (
                        f"SET SESSION max_statement_time = {timeout * _SERVER_BOUND:.3f}"
                    ),
                },
                pool_timeout=timeout,
            )
        return options

    def into_schema(
        self, url: URL, connect_args: dict[str, Any], schema: str
    ) -> tuple[URL, dict[str, Any]]:
        """The schema is a database on the URL's server: connections open that one instead."""
        return url.set(database=schema), connect_args

    def create_schema(self, connection: Connection, schema: str) -> None:
        """A database in the tables' character set and collation (migration 0001's), created
        only where it is missing: ``CREATE DATABASE`` commits the transaction it runs in."""
        if connection.scalar(_DATABASE_EXISTS, {"name": schema}) is None:
            quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
            connection.execute(
                text(
                    f"CREATE DATABASE IF NOT EXISTS {quoted} "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
                )
            )

    def check_in_schema(self, connection: Connection, schema: str) -> None:
        current = connection.scalar(_CURRENT_DATABASE)
        if current != schema:
            raise ConfigError(
                f"StoreConfig.schema is {schema!r}, but the engine's connections use the "
                f"database {current!r}: create the engine on a URL naming the database "
                f"{schema!r} (mariadb+asyncmy://user:password@host/{schema})"
            )

    @contextmanager
    def in_schema(self, connection: Connection, schema: str) -> Iterator[None]:
        """``USE`` the schema's database, and the host's again afterwards (a connection that
        had none stays in the schema's: MariaDB cannot leave a database). SQLAlchemy's MySQL
        reflection (``has_table``, which alembic asks about its version table) looks in the
        dialect's ``default_schema_name``, read once when the engine first connected, not in
        the database ``USE`` chose: the host's dialect says the schema for the block too."""
        dialect = connection.dialect
        previous = connection.scalar(_CURRENT_DATABASE)
        default = dialect.default_schema_name
        connection.execute(text(f"USE {dialect.identifier_preparer.quote_identifier(schema)}"))
        dialect.default_schema_name = schema
        try:
            yield
        finally:
            dialect.default_schema_name = default
            if previous is not None:
                quoted = dialect.identifier_preparer.quote_identifier(previous)
                connection.execute(text(f"USE {quoted}"))

    def is_missing_schema(self, error: BaseException) -> bool:
        return _code(error) == _UNKNOWN_DATABASE

    def watcher(
        self, cache: SessionCache, engine: AsyncEngine, config: StoreConfig
    ) -> MariaDBWatcher:
        """Polls on the engine's server, in the schema's database if ``config.schema``."""
        url = engine.url
        if config.schema is not None:
            url, _ = self.into_schema(url, {}, config.schema)
        return MariaDBWatcher(cache, url, engine.dialect)

    def take_migration_lock(self, connection: Connection) -> None:
        """A named lock, which belongs to the connection: ``release_migration_lock`` frees it
        once the migration has committed."""
        got = connection.execute(
            text("SELECT GET_LOCK(:name, :wait)"), {"name": _LOCK_NAME, "wait": _LOCK_WAIT}
        ).scalar()
        if got != 1:
            raise TimeoutError(f"another migration held {_LOCK_NAME} for {_LOCK_WAIT} s")

    def release_migration_lock(self, connection: Connection) -> None:
        connection.execute(text("DO RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})

    async def database_bytes(self, conn: AsyncConnection) -> int | None:
        size = await conn.scalar(_DATABASE_BYTES)
        return None if size is None else int(size)

    async def next_conversation_ids(self, conn: AsyncConnection, n: int) -> list[int]:
        return [int(value) for value in (await conn.execute(_NEXT_IDS, {"n": n})).scalars()]

    async def advance_conversation_ids(self, conn: AsyncConnection, top: int) -> None:
        """``SETVAL`` never moves a sequence backwards (it answers NULL then)."""
        await conn.execute(_ADVANCE_IDS, {"top": top})

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        from asyncmy import errors

        return (errors.Error,)

    def is_disconnect(self, error: BaseException) -> bool:
        return type(error).__module__.startswith("asyncmy") and _code(error) in _DISCONNECTS

    def is_transient(self, error: BaseException) -> bool:
        return type(error).__module__.startswith("asyncmy") and _code(error) in (
            _DEADLOCK,
            _AUTOINC_READ_FAILED,
        )

    def is_statement_timeout(self, error: BaseException) -> bool:
        return type(error).__module__.startswith("asyncmy") and _code(error) == _STATEMENT_TIMEOUT

    def is_key_conflict(self, error: BaseException, index: str) -> bool:
        return _code(error) == _DUPLICATE_KEY and index in str(error)


def _code(error: BaseException) -> int | None:
    """MariaDB's error number, the first argument of asyncmy's errors."""
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class MariaDBWatcher(PollingWatcher):
    """Polls ``convostore_changes`` on an asyncmy connection of its own, in autocommit (each
    poll a fresh snapshot), asking again for ids it has not seen below the newest one it has
    (pending gaps) for ``GAP_WAIT`` seconds."""

    name = "change poller"

    def __init__(self, cache: SessionCache, url: URL, dialect: Dialect) -> None:
        super().__init__(cache)
        _, options = dialect.create_connect_args(url)
        self._connect_args: Mapping[str, Any] = options

    async def _follow(self) -> None:
        import asyncmy

        conn = await asyncio.wait_for(
            asyncmy.connect(**{**self._connect_args, "autocommit": True}), POLL_TIMEOUT
        )
        try:
            await self._poll_feed(conn)
        finally:
            conn.close()

    async def _poll_feed(self, conn: Any) -> None:
        (newest,) = (await _fetch(conn, _NEWEST, ()))[0]
        self._connected()
        pending: dict[int, float] = {}
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            asked = sorted(pending)
            among = f" OR id IN ({', '.join(['%s'] * len(asked))})" if asked else ""
            sql = _POLL.format(pending=among)
            rows = await _fetch(conn, sql, (newest, *asked))
            if rows:
                self.post(news_of(rows))
            seen = {int(row[0]) for row in rows}
            now = time.monotonic()
            for found in seen & pending.keys():
                del pending[found]
            top = max([newest, *seen])
            for missing in range(newest + 1, top):
                if missing not in seen:
                    pending[missing] = now
            newest = top
            for gap, since in list(pending.items()):
                if now - since > GAP_WAIT:
                    del pending[gap]
            if len(pending) > MAX_PENDING:
                raise FeedLost(f"more than {MAX_PENDING} feed ids pending")


async def _fetch(conn: Any, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cursor:
        await asyncio.wait_for(cursor.execute(sql, args), POLL_TIMEOUT)
        return list(await cursor.fetchall())


BACKEND = MariaDBBackend()
