"""PostgreSQL through asyncpg: the production backend.

Many writers at once: conversation ids come from a sequence, a migration waits for an
advisory lock, and each write records its change-feed row in its own statement (a
data-modifying CTE; migration 0007). Engines convostore creates bound every connect and
statement (half of ``StoreConfig.reconnect_timeout``), ask the server to cancel a statement
that ran past its bound, and take libpq's URL options as asyncpg does.
The fast path runs each operation as one statement, one round trip, on the pooled asyncpg
connection (``PostgresDriver``); the change watcher polls the feed on a connection of its own
(``PostgresWatcher``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Float,
    Insert,
    Integer,
    Select,
    Subquery,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    event,
    extract,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import ScalarSelect

from convostore._core.cache import SessionCache, Switch
from convostore._core.coherence import POLL_TIMEOUT, FeedLost, Gaps, PollingWatcher, news_of
from convostore._core.schema import SEARCH_VECTOR, changes, conversation_ids, turns
from convostore.backends import Backend, SearchMatch, SearchSnippet
from convostore.backends._executor import Executor
from convostore.backends._fast import Compiled, ConnectionLender, Groups, discard, give_back
from convostore.backends._private import asyncpg_cancel_request, sqlalchemy_asyncpg_connector
from convostore.backends._search import MARK, OMITTED, SNIPPET_WORDS
from convostore.backends._urls import asyncpg_arguments, check_asyncpg_url
from convostore.config import StoreConfig
from convostore.errors import ConfigError, is_disconnect

logger = logging.getLogger("convostore")

__all__ = ["BACKEND", "PostgresBackend", "PostgresDriver", "PostgresWatcher", "connect_asyncpg"]

_NEXT_IDS = text("SELECT nextval('conversation_ids') FROM generate_series(1, :n)")
_ADVANCE_IDS = text(
    "SELECT setval('conversation_ids', GREATEST(:top, nextval('conversation_ids')))"
)
_SEARCH_PATH = text("SELECT current_setting('search_path')")
_SET_SEARCH_PATH = text("SELECT set_config('search_path', :path, true)")
_QUERY_CANCELED = "57014"
"""SQLSTATE of a statement the server cancelled (a timeout, a cancel request)."""
_ADVISORY_LOCK_KEY = 0x636F6E766F  # "convo": one migration at a time per PostgreSQL database


async def connect_asyncpg(*args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect(*args, **kwargs)``, run to its end even if the caller is cancelled.

    asyncpg's connect, cancelled while it asks the server for TLS (as the default
    ``sslmode=prefer`` does), leaves behind a future with an exception nobody retrieves, and
    asyncio logs "Future exception was never retrieved ... unexpected connection_lost() call"
    (asyncpg issue 1211). So the connect runs in a task of its own: a cancelled caller
    raises at once, and the connection the task still brings is closed."""
    import asyncpg

    connecting = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        connecting.add_done_callback(_terminate_connected)
        raise


def _terminate_connected(connecting: asyncio.Future[Any]) -> None:
    """Close the connection a connect nobody waits for any more brought (and retrieve its
    error, if it failed)."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()


_CANCEL_BOUND = 5.0
"""Seconds a cancel request may take (a server that stopped answering never takes it)."""
_cancelling: set[asyncio.Task[None]] = set()
"""Cancel requests under way: tasks of their own, kept here until they end."""


def _terminate_timed_out(driver: Any) -> None:
    """Close the asyncpg connection ``driver`` whose statement ran past its
    ``command_timeout`` at once, without waiting for the server to confirm a cancel (which a
    server that stopped answering never does), and ask the server to cancel that statement
    over a connection of its own, in the background, as asyncpg would have: a statement that
    was merely slow must not run on after convostore gave up on it (and a write in it must not
    commit when the lock it waits for is freed)."""
    send = asyncpg_cancel_request(driver)
    driver.terminate()
    if send is not None:
        task = asyncio.get_running_loop().create_task(_cancel(send))
        _cancelling.add(task)
        task.add_done_callback(_cancelling.discard)


async def _cancel(send: Callable[[], Awaitable[None]]) -> None:
    """Send a cancel request; one that fails is logged at debug level only (nobody waits for
    it, and its statement then runs on as it would have without it)."""
    try:
        await asyncio.wait_for(send(), _CANCEL_BOUND)
    except Exception as exc:
        logger.debug("convostore: a cancel request was not delivered: %r", exc)


def _close_timed_out(context: ExceptionContext) -> None:
    """A statement that ran past asyncpg's ``command_timeout``: its connection is closed and
    the statement cancelled (``_terminate_timed_out``), and SQLAlchemy discards the connection
    rather than roll back on it (another timeout). Only it: its pool siblings may be fine, and
    a graceful close of each would wait on a silent server too."""
    connection = context.connection
    if not isinstance(context.original_exception, asyncio.TimeoutError) or connection is None:
        return
    if not connection.invalidated:
        driver = connection.connection.driver_connection
        if driver is not None:
            _terminate_timed_out(driver)
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = False


def _libpq_options(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    """SQLAlchemy's ``do_connect`` event: the connect keywords, translated in place."""
    translated = asyncpg_arguments(cparams)
    cparams.clear()
    cparams.update(translated)


def _unnamed_statement() -> str:
    """SQLAlchemy's asyncpg adapter prepares named statements; an empty name makes them
    PostgreSQL's unnamed statement, which lives only until the next one on the connection."""
    return ""


class _Append(NamedTuple):
    """An append for ``PostgresDriver.append``: its statements and parameters."""

    alone: Compiled
    grouped: Compiled
    params: Mapping[str, Any]


class PostgresDriver:
    """Lends asyncpg connections from the engine's pool, in autocommit: each statement run on
    them is atomic by itself. Statements run through ``Connection.fetch``, so asyncpg's own
    statement cache prepares them (none behind PgBouncer, where the engine turns it off) and
    its query loggers see them."""

    appends_in_groups = True
    loads_in_parts = False

    def __init__(self, lender: ConnectionLender, *, owns_engine: bool) -> None:
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
            await give_back(pooled)
            return
        # A statement that ran out of time (command_timeout) says this connection did not
        # answer, not that the server went away: its siblings stay in the pool.
        timed_out = isinstance(exc, asyncio.TimeoutError)
        gone = not timed_out and (driver.is_closed() or is_disconnect(exc))
        # Closed at once: a graceful close would wait for a server that may not answer.
        if timed_out:
            _terminate_timed_out(driver)
        else:
            driver.terminate()
        await discard(pooled, exc)
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


def _server_refused(exc: BaseException) -> bool:
    """An error PostgreSQL sent for a statement (it has a SQLSTATE), other than one that
    means the connection or the server is going away."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and not is_disconnect(exc)


POSTGRES_POLL_INTERVAL = 0.02
"""Seconds between two polls of PostgreSQL's feed: one indexed read that usually finds
nothing, about 50 a second per worker."""


_ADAPTER_OPTIONS = ("prepared_statement_cache_size", "prepared_statement_name_func")


def feed_statements() -> tuple[Select[Any], Select[Any]]:
    """What a watcher polls the change feed with (``poll_changes``) and what tells it which of
    the feed's ids may still appear (``feed_witness``)."""
    server = select(func.pg_postmaster_start_time().label("started")).subquery("server")
    pending = bindparam("pending", type_=postgresql.ARRAY(BigInteger()))
    poll_changes = (
        select(server.c.started, changes.c.id, changes.c.session_id, changes.c.version)
        .select_from(
            server.outerjoin(
                changes,
                or_(
                    changes.c.id > bindparam("after", type_=BigInteger()),
                    changes.c.id == any_(pending),
                ),
            )
        )
        .order_by(changes.c.id)
    )
    """The server's start time, and the feed's rows after ``after`` or among ``pending``
    (at least one row: the feed's columns are NULL when none is new)."""
    locks = table(
        "pg_locks",
        column("virtualtransaction"),
        column("locktype"),
        column("database"),
        column("relation"),
        column("mode"),
    )
    databases = table("pg_database", column("oid"), column("datname"))
    writers = select(func.array_agg(locks.c.virtualtransaction)).where(
        locks.c.locktype == literal("relation"),
        locks.c.mode == literal("RowExclusiveLock"),
        locks.c.relation == cast(literal(changes.name), postgresql.REGCLASS),
        locks.c.database
        == select(databases.c.oid)
        .where(databases.c.datname == func.current_database())
        .scalar_subquery(),
    )
    feed_witness = select(
        select(func.coalesce(func.max(changes.c.id), 0)).scalar_subquery().label("newest"),
        select(func.min(changes.c.id)).scalar_subquery().label("oldest"),
        writers.scalar_subquery().label("writers"),
        func.pg_postmaster_start_time().label("started"),
    )
    """The feed's newest and oldest ids in this statement's snapshot, and the (virtual)
    transactions holding the feed's write lock, read after that snapshot was taken: every
    transaction that took an id the snapshot does not show is among them, or ended
    before they were read (it holds the lock from before it takes its id until it
    ends). NULL ``writers``: none."""
    return poll_changes, feed_witness


class PostgresWatcher(PollingWatcher):
    """Polls ``convostore_changes`` on a connection of its own."""

    name = "change poller"

    def __init__(
        self,
        cache: SessionCache,
        url: URL,
        dialect: Dialect,
        *,
        pooled: bool = False,
        schema: str | None = None,
    ) -> None:
        super().__init__(cache)
        self._connect_args = _asyncpg_connect_args(url, dialect)
        if schema is not None:
            self._connect_args = _in_search_path(self._connect_args, schema)
        if pooled:
            # A transaction pooler may run each statement on another server connection,
            # where a prepared statement of an earlier one does not exist.
            self._connect_args["statement_cache_size"] = 0
        poll_changes, feed_witness = feed_statements()
        self._poll = Compiled(poll_changes, dialect)
        self._witness = Compiled(feed_witness, dialect)

    async def _follow(self) -> None:
        # A server that stops answering must not hold the poller: the connect and every
        # command on the connection give up after POLL_TIMEOUT, unless the URL says how long
        # a connect may take (connect_timeout).
        conn = await connect_asyncpg(
            **{"timeout": POLL_TIMEOUT, **self._connect_args, "command_timeout": POLL_TIMEOUT}
        )
        conn.add_termination_listener(lambda _conn: self.post([Switch.OFF]))
        try:
            await self._poll_feed(conn)
        finally:
            conn.terminate()

    async def _poll_feed(self, conn: Any) -> None:
        newest, _, writers, started = await self._read_witness(conn)
        # Transactions that took an id at or below ``newest`` and are not in this snapshot
        # are among ``writers``: the cache comes on once they have all ended.
        catching_up = writers
        if catching_up:
            self._in_app(self._first_try.set)
        else:
            self._connected()
        gaps = Gaps()
        while True:
            await asyncio.sleep(POSTGRES_POLL_INTERVAL)
            rows = await conn.fetch(
                self._poll.sql,
                *self._poll.args({"after": newest, "pending": gaps.ids()}),
                timeout=POLL_TIMEOUT,
            )
            if rows[0][0] != started:
                raise FeedLost("the server restarted")
            changed = [row[1:] for row in rows if row[1] is not None]
            after, newest = newest, max([newest, *(row[0] for row in changed)])
            if changed:
                self.post(news_of(changed))
            gaps.polled((row[0] for row in changed), after, newest)
            if catching_up or gaps.need_witness():
                _, oldest, writers, _ = await self._read_witness(conn)
                if catching_up and not (catching_up & writers):
                    catching_up = frozenset()
                    self._connected()
                if gaps.witnessed(writers, oldest):
                    logger.info("convostore: change feed pruned past this process; cache cleared")
                    self.post([Switch.CLEAR])

    async def _read_witness(self, conn: Any) -> tuple[int, int | None, frozenset[str], datetime]:
        newest, oldest, writers, started = await conn.fetchrow(
            self._witness.sql, *self._witness.args({}), timeout=POLL_TIMEOUT
        )
        return int(newest), oldest, frozenset(writers or ()), started


def _asyncpg_connect_args(url: URL, dialect: Dialect) -> dict[str, Any]:
    """``asyncpg.connect`` keywords for a URL, as SQLAlchemy's asyncpg dialect derives them
    and convostore's engines translate them (``urls.asyncpg_arguments``), less the options
    only its adapter takes."""
    options: Mapping[str, Any]
    _, options = dialect.create_connect_args(url)
    return asyncpg_arguments(
        {name: value for name, value in options.items() if name not in _ADAPTER_OPTIONS}
    )


def _in_search_path(connect_args: Mapping[str, Any], schema: str) -> dict[str, Any]:
    """``connect_args`` with ``search_path`` set to ``schema`` as the connection starts
    (asyncpg's ``server_settings``): every unqualified name, the migrations' raw SQL and the
    sequence's ``nextval('conversation_ids')`` among them, resolves there."""
    settings = {**connect_args.get("server_settings", {}), "search_path": schema}
    return {**connect_args, "server_settings": settings}


def _first_in_path(search_path: str) -> str:
    """The schema a ``search_path`` names first, unquoted (where new tables go)."""
    return search_path.split(",")[0].strip().strip('"')


_HEADLINE = (
    f'StartSel="{MARK}", StopSel="{MARK}", MaxWords={SNIPPET_WORDS}, '
    f'MinWords={SNIPPET_WORDS // 2}, MaxFragments=1, FragmentDelimiter="{OMITTED}"'
)
"""``ts_headline``'s options: one fragment around the matches, about as long as FTS5's."""


def _search_query(terms: BindParameter[str]) -> ScalarSelect[Any]:
    """``terms`` as plain words (``plainto_tsquery``: every word, no operators), parsed with
    the configuration the index was built with (migration 0010's function).

    A subquery, which PostgreSQL runs once per statement (an InitPlan). Written inline, the
    call would be folded to a constant only in a plan made for the given words: the generic
    plan a prepared statement switches to after five runs would parse the words again for
    every matching turn it ranks."""
    return select(func.plainto_tsquery(func.convostore_search_config(), terms)).scalar_subquery()


class PostgresBackend(Backend):
    """PostgreSQL: many writers at once, on a server."""

    name = "postgresql"
    driver = "asyncpg"
    example_url = "postgresql+asyncpg://user:password@host/database"
    statement_timeouts = True
    feed_in_statement = True
    one_statement_append = True

    def insert_ignoring(
        self, table: Table, keys: Sequence[Column[Any]], returning: Column[Any]
    ) -> Insert:
        return (
            postgresql.insert(table)
            .on_conflict_do_nothing(index_elements=list(keys))
            .returning(returning)
        )

    def insert_replacing(
        self, table: Table, keys: Sequence[Column[Any]], rows: Select[Any], replaced: Sequence[str]
    ) -> Insert:
        insert = postgresql.insert(table).from_select(rows.selected_columns.keys(), rows)
        return insert.on_conflict_do_update(
            index_elements=list(keys), set_={name: insert.excluded[name] for name in replaced}
        )

    def merged_json(self, document: ColumnElement[Any], patch: Any) -> ColumnElement[Any]:
        return document.op("||")(patch)

    def json_object(self, pairs: Any, type_: Any) -> ColumnElement[Any]:
        return func.json_build_object(*pairs, type_=type_)

    def json_holds(self, document: ColumnElement[Any], keys: int) -> ColumnElement[bool]:
        return document.op("@>", return_type=Boolean())(
            bindparam("wanted", type_=postgresql.JSONB())
        )

    def json_wanted(self, wanted: dict[str, str | int | bool]) -> dict[str, Any]:
        return {"wanted": wanted}

    def one_of(self, key: Column[Any], batch: ScalarSelect[Any]) -> ColumnElement[bool]:
        """``key = ANY(ARRAY(batch))``. The array is computed once (an InitPlan) and the rows
        are found by primary key, whatever the table's size and statistics. ``key IN
        (batch)`` left the join to the planner, which chose by the table's size: on 100,000
        conversations it hashed the batch and scanned the whole table."""
        return key == any_(func.array(batch, type_=postgresql.ARRAY(key.type)))

    def in_code_point_order(self, column: Column[Any]) -> ColumnElement[Any]:
        """The "C" collation, whatever the database's."""
        return column.collate("C")

    def next_conversation_id(self, largest: ColumnElement[Any]) -> ColumnElement[Any]:
        return conversation_ids.next_value()

    def search_terms(self, query: str) -> str | None:
        return query

    def search_match(self, terms: BindParameter[str]) -> SearchMatch:
        """The GIN index on the stored ``tsvector``; the rank is ``ts_rank`` of it."""
        vector = literal_column(f"turns.{SEARCH_VECTOR}", type_=postgresql.TSVECTOR())
        query = _search_query(terms)
        return SearchMatch(
            source=turns,
            condition=vector.op("@@", is_comparison=True)(query),
            rank=func.ts_rank(vector, query, type_=Float()),
            carried=(turns.c.content, turns.c.resolved_question),
        )

    def search_snippet(self, page: Subquery, terms: BindParameter[str]) -> SearchSnippet:
        """``ts_headline`` of the page's texts, so only the page's rows are parsed again."""
        text = page.c.content + "\n" + func.coalesce(page.c.resolved_question, "")
        headline = func.ts_headline(
            func.convostore_search_config(), text, _search_query(terms), _HEADLINE, type_=Text()
        )
        return SearchSnippet(source=page, condition=None, text=headline)

    def utc_day(self, moment: Any) -> ColumnElement[Any]:
        return func.to_char(func.timezone("UTC", moment), "YYYY-MM-DD")

    def utc_hour(self, moment: Any) -> ColumnElement[Any]:
        return cast(extract("hour", func.timezone("UTC", moment)), Integer)

    def check_url(self, url: URL, what: str) -> None:
        check_asyncpg_url(url, what)

    def engine_options(
        self, url: URL, config: StoreConfig, timeout: float | None
    ) -> dict[str, Any]:
        """Connections are opened by ``connect_asyncpg``. ``timeout`` bounds each connect
        (asyncpg's ``timeout``), each statement (asyncpg's ``command_timeout``, on SQLAlchemy's
        execution and the driver alike) and each wait for a pooled connection
        (``pool_timeout``), so that a server that stops answering fails a call instead of
        holding it. None: the libraries' defaults (a connect may take 60 s, a statement
        forever), for what may rightly run long (a migration, an export)."""
        options = super().engine_options(url, config, timeout)
        connect_args: dict[str, Any] = sqlalchemy_asyncpg_connector(connect_asyncpg)
        if config.pooler == "pgbouncer":
            # A transaction pooler hands each transaction to any server connection, where a
            # named prepared statement of another may not exist: name none, cache none.
            connect_args.update(
                statement_cache_size=0,
                prepared_statement_cache_size=0,
                prepared_statement_name_func=_unnamed_statement,
            )
        if timeout is not None:
            connect_args.update(timeout=timeout, command_timeout=timeout)
            options.update(pool_timeout=timeout)
        options.update(connect_args=connect_args)
        return options

    def into_schema(
        self, url: URL, connect_args: dict[str, Any], schema: str
    ) -> tuple[URL, dict[str, Any]]:
        """Connections start with ``search_path`` = ``schema`` (a startup setting: PgBouncer
        passes it on only when its ``track_extra_parameters`` lists ``search_path``, and
        ``check_in_schema`` refuses a connection that did not get it)."""
        return url, _in_search_path(connect_args, schema)

    def create_schema(self, connection: Connection, schema: str) -> None:
        quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))

    def check_in_schema(self, connection: Connection, schema: str) -> None:
        """The first schema of the connection's ``search_path`` (it need not exist yet: the
        first migration creates it) must be ``schema``."""
        search_path = str(connection.scalar(_SEARCH_PATH))
        if _first_in_path(search_path) != schema:
            raise ConfigError(
                f"StoreConfig.schema is {schema!r}, but the engine's connections have "
                f"search_path {search_path!r}: create the engine with connect_args="
                f'{{"server_settings": {{"search_path": "{schema}"}}}} (behind PgBouncer, list '
                "search_path in its track_extra_parameters)"
            )

    @contextmanager
    def in_schema(self, connection: Connection, schema: str) -> Iterator[None]:
        """``search_path`` set for the transaction (``SET LOCAL``), and the host's put back
        after the block; a failure leaves it to the rollback, which restores it too."""
        previous = str(connection.scalar(_SEARCH_PATH))
        connection.execute(_SET_SEARCH_PATH, {"path": schema})
        yield
        connection.execute(_SET_SEARCH_PATH, {"path": previous})

    def on_new_engine(self, engine: AsyncEngine, timeout: float | None) -> None:
        """The URL's libpq options (``?sslmode=require``, ``connect_timeout``, ...) reach
        asyncpg as it takes them (``_urls.asyncpg_arguments``; SQLAlchemy would pass them on
        as keywords asyncpg refuses); with ``timeout``, a connection whose statement ran over
        is closed (``_close_timed_out``)."""
        event.listen(engine.sync_engine, "do_connect", _libpq_options)
        if timeout is not None:
            event.listen(engine.sync_engine, "handle_error", _close_timed_out)

    def why_no_fast_path(self) -> str | None:
        return None

    def fast_executor(
        self, lender: ConnectionLender, writes: Any, *, owns_engine: bool
    ) -> Executor | None:
        return PostgresDriver(lender, owns_engine=owns_engine)

    def watcher(
        self, cache: SessionCache, engine: AsyncEngine, config: StoreConfig
    ) -> PostgresWatcher:
        """Polls on ``StoreConfig.listen_url`` if given (a direct address beside a pooler),
        else on the engine's URL."""
        url = make_url(config.listen_url) if config.listen_url else engine.url
        pooled = config.pooler == "pgbouncer"
        return PostgresWatcher(cache, url, engine.dialect, pooled=pooled, schema=config.schema)

    def take_migration_lock(self, connection: Connection) -> None:
        """An advisory lock, held to the end of the transaction."""
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})

    async def database_bytes(self, conn: AsyncConnection) -> int | None:
        size = await conn.scalar(select(func.pg_database_size(func.current_database())))
        return None if size is None else int(size)

    async def next_conversation_ids(self, conn: AsyncConnection, n: int) -> list[int]:
        rows = await conn.execute(_NEXT_IDS, {"n": n})
        return list(rows.scalars())

    async def advance_conversation_ids(self, conn: AsyncConnection, top: int) -> None:
        await conn.execute(_ADVANCE_IDS, {"top": top})

    @asynccontextmanager
    async def snapshot(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """REPEATABLE READ, read only."""
        async with engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                yield conn

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import asyncpg

        return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

    def is_statement_timeout(self, error: BaseException) -> bool:
        """A ``statement_timeout`` of the caller's own (convostore sets none: PgBouncer's
        transaction pooling would carry it to other clients' statements)."""
        return getattr(error, "sqlstate", None) == _QUERY_CANCELED and "statement timeout" in str(
            error
        )

    def is_disconnect(self, error: BaseException) -> bool:
        sqlstate = getattr(error, "sqlstate", None) or ""
        if sqlstate[:2] == "08" or sqlstate[:3] == "57P":  # connection lost; server shut down
            return True
        return type(error).__name__ in (
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "InternalClientError",
            "ConnectionFailureError",
        ) and type(error).__module__.startswith("asyncpg")


BACKEND = PostgresBackend()
