"""The backend seam: what one database does differently, behind one object per backend.

The shared code (``convostore._core``, the operators' tools) asks a ``Backend`` for a
capability or for its part of a statement; it never compares dialect names. A backend
module (``sqlite``, ``postgresql``, ``mariadb``) subclasses ``Backend`` and is found by its
SQLAlchemy dialect name (``backend_for``); a new backend is a new module here that passes the
conformance suite (``tests/conftest.py``: ``CONFORMANCE``). What a backend holds:

- its capabilities, as class attributes (``one_writer``, ``feed_in_statement``, ...);
- its parts of the shared statements (``insert_ignoring``, ``greatest``, ``merged_json``, ...),
  and of the full-text search (``search_terms``, ``search_match``, ``search_snippet``);
- its engine options and connection settings, and the URL rules for its driver;
- its executors: the fast path on the raw driver, where it has one;
- its change watcher, its migration lock, its snapshot and write transactions;
- where its tables live beside a host's (``StoreConfig.schema``): how a connection is put
  there, how the place is created and checked;
- its error classifier: which driver errors are disconnects, deadlock victims and
  statements the server stopped at their time bound.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    FromClause,
    Index,
    Insert,
    Select,
    String,
    Subquery,
    Table,
    bindparam,
    cast,
    func,
    null,
    tuple_,
)
from sqlalchemy.engine import URL

from convostore.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.selectable import ScalarSelect

    from convostore._core.cache import SessionCache
    from convostore._core.coherence import Watcher
    from convostore._core.gate import Turns
    from convostore.backends._executor import Executor
    from convostore.backends._fast import ConnectionLender
    from convostore.config import StoreConfig

__all__ = ["BACKEND_MODULES", "Backend", "SearchMatch", "SearchSnippet", "backend_for"]

BACKEND_MODULES = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mariadb"}
"""SQLAlchemy dialect name -> the module of ``convostore.backends`` that serves it."""


class SearchMatch(NamedTuple):
    """A full-text search for the plain words of a query, as the parts of the statement that
    pages through the matching turns (``backends._search``)."""

    source: FromClause
    """``turns``, with what ``condition`` and ``rank`` read joined to it."""
    condition: ColumnElement[bool]
    """A turn matches every word."""
    rank: ColumnElement[float]
    """How well a matching turn matches: higher is better, the same value every time the same
    turn is ranked on an unchanged database (pages compare it)."""
    carried: tuple[ColumnElement[Any], ...]
    """Labelled columns the page carries for ``Backend.search_snippet``."""


class SearchSnippet(NamedTuple):
    """How a page of matching turns gets its snippets: the page with what the snippet reads
    joined, a condition (or None), and the snippet's text (or, where ``snippet_in_python``,
    the turn's whole text, which the shared code cuts)."""

    source: FromClause
    condition: ColumnElement[bool] | None
    text: ColumnElement[str]


class Backend:
    """One database as convostore uses it. Subclasses set the capabilities and override the
    methods where their database differs from the defaults here (plain SQL that SQLite,
    PostgreSQL and MariaDB all run)."""

    name: ClassVar[str]
    """SQLAlchemy's dialect name."""
    driver: ClassVar[str]
    """The async driver convostore runs this backend on (``dialect+driver://`` URLs)."""
    example_url: ClassVar[str]

    one_writer: ClassVar[bool] = False
    """One write transaction at a time per database: writes in this process wait their turn
    (``gate.Turns``) before they begin, and a new id may be the largest stored plus one."""
    embedded: ClassVar[bool] = False
    """The database is a file the process opens: a schema behind is upgraded on start
    unless ``StoreConfig.auto_migrate`` says otherwise."""
    statement_timeouts: ClassVar[bool] = False
    """Engines convostore creates bound each statement (``StoreConfig.statement_timeout``), so
    a migration, which may rightly run long, runs on an engine of its own."""
    feed_in_statement: ClassVar[bool] = False
    """A write records its change-feed row in its own statement (else the schema's triggers
    do)."""
    one_statement_append: ClassVar[bool] = False
    """An append can be one statement (data-modifying CTEs over parallel arrays)."""
    returning_on_update: ClassVar[bool] = True
    """``UPDATE ... RETURNING``."""
    concurrent_cursors: ClassVar[bool] = True
    """Several results can be streamed at once on one connection (an export merges three)."""
    snippet_in_python: ClassVar[bool] = False
    """The database cannot cut a search hit's snippet around its matches: ``search_snippet``
    gives the whole text and the shared code cuts it."""

    def insert_ignoring(
        self, table: Table, keys: Sequence[Column[Any]], returning: Column[Any]
    ) -> Insert:
        """An INSERT of ``table`` that changes nothing where a row with the same ``keys``
        exists, returning ``returning`` of the inserted row: no row, or the existing row's,
        if one existed (so the caller compares it with the value it inserted)."""
        raise NotImplementedError

    def insert_replacing(
        self, table: Table, keys: Sequence[Column[Any]], rows: Select[Any], replaced: Sequence[str]
    ) -> Insert:
        """An INSERT of ``rows`` (a SELECT of ``table``'s columns, by name) into ``table``
        that, where a row with the same ``keys`` exists, sets its columns ``replaced`` to the
        new row's instead: an upsert, in one statement."""
        raise NotImplementedError

    def greatest(self, *values: ColumnElement[Any]) -> ColumnElement[Any]:
        """The largest of ``values`` (SQL's ``GREATEST``)."""
        return func.greatest(*values)

    def merged_json(self, document: ColumnElement[Any], patch: Any) -> ColumnElement[Any]:
        """The JSON object ``document`` with the keys of the object ``patch`` set."""
        return func.json_merge_patch(document, patch)

    def before(
        self, columns: Sequence[ColumnElement[Any]], bounds: Sequence[Any]
    ) -> ColumnElement[bool]:
        """``columns`` come before ``bounds`` in ascending order (a keyset page's condition),
        as a row comparison, which SQLite and PostgreSQL read as one index range."""
        return tuple_(*columns) < tuple_(*bounds)

    def keyset_read(self, query: Select[Any], index: Index) -> Select[Any]:
        """``query``, a keyset page, made to read its table through ``index``, the index
        whose order it pages in. SQLite and PostgreSQL choose that index and read it from the
        cursor on by themselves, so the default leaves ``query`` as it is."""
        return query

    def json_holds(self, document: ColumnElement[Any], keys: int) -> ColumnElement[bool]:
        """The JSON object ``document`` holds every key of the wanted object (``keys`` of
        them, each a string, an int or a bool, compared with its JSON type), which
        ``json_wanted`` binds: containment, as ``list_sessions(metadata=...)`` filters. The
        clause depends only on ``keys``, so a statement built with it can be kept and reused.
        MariaDB's ``JSON_CONTAINS`` is the default."""
        return func.json_contains(document, bindparam("wanted", type_=String())) == 1

    def json_wanted(self, wanted: dict[str, str | int | bool]) -> dict[str, Any]:
        """The parameters of ``json_holds`` for ``wanted``."""
        return {"wanted": json.dumps(wanted)}

    def json_object(self, pairs: Iterable[ColumnElement[Any]], type_: Any) -> ColumnElement[Any]:
        """A JSON object from alternating keys and values."""
        return func.json_object(*pairs, type_=type_)

    def json_column(self, column: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        """A JSON column as a value of ``json_object`` (nested, not as text)."""
        return column

    def typed_null(self, type_: Any) -> ColumnElement[Any]:
        """A NULL of ``type_`` in a UNION's first branch, where later branches hold values."""
        return cast(null(), type_)

    def nulls_first(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """``column`` ascending with NULLs first, for ORDER BY."""
        return column.nulls_first()

    def is_key_conflict(self, error: BaseException, index: str) -> bool:
        """Whether one exception of a chain is a unique violation of ``index``."""
        return index in str(getattr(error, "constraint_name", ""))

    def one_of(self, key: Column[Any], batch: ScalarSelect[Any]) -> ColumnElement[bool]:
        """``key`` is one of the keys ``batch`` selects: a batch delete's condition."""
        return key.in_(batch)

    def in_code_point_order(self, column: Column[Any]) -> ColumnElement[Any]:
        """``column`` for ORDER BY, sorted by code point as Python's ``sorted`` does."""
        return column

    def next_conversation_id(self, largest: ColumnElement[Any]) -> ColumnElement[Any]:
        """A new conversation's id, given the largest stored (``one_writer`` backends)."""
        return largest + 1

    def search_terms(self, query: str) -> str | None:
        """``query``'s words as this backend's full-text query of plain words (every word
        must match; quotes, ``*``, ``-``, ``AND``, parentheses are words or separators, never
        operators), or None where none of them is a word the index can hold."""
        raise NotImplementedError

    def search_match(self, terms: BindParameter[str]) -> SearchMatch:
        """The turns matching ``terms`` (made by ``search_terms``), with their rank."""
        raise NotImplementedError

    def search_snippet(self, page: Subquery, terms: BindParameter[str]) -> SearchSnippet:
        """The snippet of each turn of ``page`` (a subquery of ``turns``' key columns and
        ``SearchMatch.carried``) for ``terms``."""
        raise NotImplementedError

    def utc_day(self, moment: Any) -> ColumnElement[Any]:
        """The UTC day of a timestamp as YYYY-MM-DD text."""
        raise NotImplementedError

    def utc_hour(self, moment: Any) -> ColumnElement[Any]:
        """The UTC hour of a timestamp, 0 to 23."""
        raise NotImplementedError

    def check_url(self, url: URL, what: str) -> None:
        """Raise ``ConfigError`` for options of a URL this backend's driver cannot use."""

    def is_local_file(self, url: URL) -> str | None:
        """The path of the file the URL names, for a backend whose database is one."""
        return None

    def in_memory(self, url: URL) -> bool:
        """Whether the URL names a database that lives only in this process."""
        return False

    def engine_options(
        self, url: URL, config: StoreConfig, timeout: float | None
    ) -> dict[str, Any]:
        """Keywords for ``create_async_engine`` beyond the shared ones, for an engine convostore
        creates (``timeout``: seconds each connect and statement may take, None: no bound)."""
        return {"pool_size": config.pool_size, "max_overflow": config.max_overflow}

    def check_schema_name(self, schema: str) -> None:
        """Raise ``ConfigError`` where this backend cannot keep convostore's tables in a place
        of their own named ``schema`` (``StoreConfig.schema``, already a valid name)."""

    def into_schema(
        self, url: URL, connect_args: dict[str, Any], schema: str
    ) -> tuple[URL, dict[str, Any]]:
        """The URL and ``connect_args`` of an engine of convostore's whose connections work in
        ``schema``: the unqualified names of every statement and migration resolve there."""
        raise NotImplementedError

    def create_schema(self, connection: Connection, schema: str) -> None:
        """Create ``schema`` unless it exists, through ``connection``."""
        raise NotImplementedError

    def check_in_schema(self, connection: Connection, schema: str) -> None:
        """Raise ``ConfigError`` unless ``connection`` works in ``schema``, saying what to set
        on an engine passed in (whose settings convostore never changes)."""
        raise NotImplementedError

    def in_schema(self, connection: Connection, schema: str) -> AbstractContextManager[None]:
        """Work in ``schema`` on a host's ``connection`` (in a transaction) for the block, and
        where the host worked afterwards."""
        raise NotImplementedError

    def is_missing_schema(self, error: BaseException) -> bool:
        """Whether one exception of a chain says a connection could not enter its schema
        because it does not exist yet (where the schema is what a connection opens)."""
        return False

    def on_new_engine(self, engine: AsyncEngine, timeout: float | None) -> None:
        """Listeners every engine convostore creates on this backend needs."""

    def prepare(self, engine: AsyncEngine) -> None:
        """Apply convostore's connection settings to an engine, its own or a caller's."""

    def release(self, engine: AsyncEngine) -> None:
        """Undo ``prepare`` on a caller's engine once no repository of ours uses it."""

    def keep_content_out_of_logs(self, engine: AsyncEngine) -> None:
        """Keep turn content out of this backend's driver logs (beyond SQLAlchemy's)."""

    def why_no_fast_path(self) -> str | None:
        """Why this backend runs every statement through SQLAlchemy's execution, or None."""
        return "it has no fast path"

    def fast_executor(
        self, lender: ConnectionLender, writes: Turns | None, *, owns_engine: bool
    ) -> Executor | None:
        """The executor on the raw driver, where this backend has one."""
        return None

    def watcher(
        self, cache: SessionCache, engine: AsyncEngine, config: StoreConfig
    ) -> Watcher | None:
        """What follows other processes' writes through the change feed, or None where no
        other process can write (an in-memory database)."""
        raise NotImplementedError

    def take_migration_lock(self, connection: Connection) -> None:
        """Hold, until the transaction ends, a lock a second migrator waits for."""
        raise NotImplementedError

    def release_migration_lock(self, connection: Connection) -> None:
        """Free the migration lock once the migration has committed, where it outlives the
        transaction."""

    def begin_write(self, connection: Connection) -> bool:
        """Make a write transaction hold its write lock from its start, where the database
        takes one (before the reads that plan the write). Returns whether it began one."""
        return False

    @asynccontextmanager
    async def snapshot(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """A transaction whose reads all see one snapshot of the database."""
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    async def database_bytes(self, conn: AsyncConnection) -> int | None:
        """The size of the database, or None where it cannot be read."""
        return None

    def new_ids_from_sequence(self) -> bool:
        """Whether new conversation ids come from a sequence (else: the largest plus one,
        safe only with ``one_writer``)."""
        return not self.one_writer

    async def next_conversation_ids(self, conn: AsyncConnection, n: int) -> list[int]:
        """``n`` new conversation ids from the sequence (``new_ids_from_sequence``)."""
        raise NotImplementedError

    async def advance_conversation_ids(self, conn: AsyncConnection, top: int) -> None:
        """Move the sequence past ``top``, so no conversation started from now on takes an
        id at or below it."""
        raise NotImplementedError

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's own exception classes, raised where SQLAlchemy does not wrap them."""
        return ()

    def is_disconnect(self, error: BaseException) -> bool:
        """Whether one exception of a chain says the connection is lost (this driver's
        words for it; the shared ones are checked by ``errors.is_disconnect``)."""
        return False

    def is_transient(self, error: BaseException) -> bool:
        """Whether one exception of a chain says the database undid the transaction and the
        same operation may succeed if run again (a deadlock victim)."""
        return False

    def is_statement_timeout(self, error: BaseException) -> bool:
        """Whether one exception of a chain says the server stopped a statement that ran past
        its time bound (``StatementTimeout``: not sent again, it would take as long)."""
        return False


_loaded: dict[str, Backend] = {}


def backend_for(what: str | URL | Any) -> Backend:
    """The backend for a dialect name, a URL, an engine or a connection.

    Raises ConfigError for a database convostore has no backend for."""
    if isinstance(what, str):
        name = what
    elif isinstance(what, URL):
        name = what.get_backend_name()
    else:
        name = what.dialect.name
    backend = _loaded.get(name)
    if backend is not None:
        return backend
    module_name = BACKEND_MODULES.get(name)
    if module_name is None:
        supported = ", ".join(sorted(BACKEND_MODULES))
        raise ConfigError(f"convostore has no backend for {name!r} (it supports {supported})")
    module = importlib.import_module(f"convostore.backends.{module_name}")
    backend = module.BACKEND
    assert isinstance(backend, Backend)
    _loaded[name] = backend
    return backend
