"""Checking and building the SQLAlchemy ``AsyncEngine``, and the SQLite connection settings
convostore needs."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.quiet import ENGINE_LOGGING_NAME, keep_content_out_of_logs
from convostore.backends._private import sqlalchemy_asyncpg_connector
from convostore.backends._urls import asyncpg_arguments, check_database_url, hide_password
from convostore.config import StoreConfig
from convostore.errors import ConfigError, hide_in_messages

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "begin_immediate",
    "check_database",
    "connect_asyncpg",
    "create_engine",
    "engine_for_url",
    "prepare_engine",
    "release_engine",
    "sqlite_on_connect",
]

logger = logging.getLogger("convostore")

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another's lock before failing: long enough that
ordinary contention between tasks or processes on one file never says "database is locked"."""


def check_database(config: StoreConfig, engine: object | None) -> None:
    """Raise ``ConfigError`` unless a repository can run on ``engine`` or, without one, on
    ``config.database_url``, and listen on ``config.listen_url`` if it is given; from then on
    those URLs' passwords are masked in error messages."""
    if engine is None:
        url = check_database_url(config.database_url)
    elif isinstance(engine, AsyncEngine):
        url = check_database_url(engine.url, "the engine's URL")
    else:
        raise ConfigError(
            "engine must be an AsyncEngine from sqlalchemy.ext.asyncio.create_async_engine "
            f"(on sqlite+aiosqlite or postgresql+asyncpg), not {type(engine).__name__}"
        )
    hide_in_messages(url.password)
    if config.listen_url is not None:
        hide_in_messages(check_database_url(config.listen_url, "listen_url").password)


_decode = json.JSONDecoder().raw_decode


def load_json(text: str) -> Any:
    """``json.loads`` for the documents the database hands back: the empty ones (most turns'
    results) without parsing, the others through the decoder's scanner directly, skipping
    ``json.loads``'s own checks. A cold load decodes one per turn (see docs/architecture.md,
    "What speed costs in upkeep")."""
    if text == "[]":
        return []
    if text == "{}":
        return {}
    if text[:1].isspace():
        return json.loads(text)
    value, end = _decode(text)
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises json's own error for trailing data
    return value


def create_engine(config: StoreConfig, *, timeout: float | None = None) -> AsyncEngine:
    """The repository's own engine for ``config.database_url``, pooled as configured.

    Its errors and logs leave out SQL parameters (``hide_parameters``) and result rows
    (``quiet``): they are turn content, which does not belong in a ``StoreError`` message or a
    log line. ``create_async_engine`` is looked up when called, so an instrumentation that
    wraps it (OpenTelemetry's ``SQLAlchemyInstrumentor().instrument()``) before ``start()``
    sees this engine too.

    PostgreSQL: connections are opened by ``connect_asyncpg``. ``timeout`` bounds, in seconds,
    each connect (asyncpg's ``timeout``), each statement (asyncpg's ``command_timeout``, on
    SQLAlchemy's execution and the driver alike) and each wait for a pooled connection
    (``pool_timeout``), so that a server that stops answering fails a call instead of holding
    it; a connection whose statement ran over is closed (``_close_timed_out``). None: the
    libraries' defaults (a connect may take 60 s, a statement forever), for what may rightly
    run long (a migration, an export)."""
    url = make_url(config.database_url)
    logger.debug("convostore: creating an engine for %s", hide_password(url))
    options: dict[str, Any] = {
        "hide_parameters": True,
        "logging_name": ENGINE_LOGGING_NAME,
        "json_deserializer": load_json,
    }
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if not in_memory:
        options.update(pool_size=config.pool_size, max_overflow=config.max_overflow)
    if url.get_backend_name() == "sqlite":
        # Every convostore transaction commits or rolls back itself, so the pool's own
        # rollback on return would only cost aiosqlite a thread hop per operation.
        options.update(pool_reset_on_return=None)
    bounded = timeout is not None and url.get_backend_name() == "postgresql"
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = sqlalchemy_asyncpg_connector(connect_asyncpg)
        if config.pooler == "pgbouncer":
            # A transaction pooler hands each transaction to any server connection, where a
            # named prepared statement of another may not exist: name none, cache none.
            connect_args.update(
                statement_cache_size=0,
                prepared_statement_cache_size=0,
                prepared_statement_name_func=_unnamed_statement,
            )
        if bounded:
            connect_args.update(timeout=timeout, command_timeout=timeout)
            options.update(pool_timeout=timeout)
        options.update(connect_args=connect_args)
    engine = engine_for_url(url, **options)
    if bounded:
        event.listen(engine.sync_engine, "handle_error", _close_timed_out)
    return prepare_engine(keep_content_out_of_logs(engine))


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


def _close_timed_out(context: ExceptionContext) -> None:
    """A statement that ran past asyncpg's ``command_timeout`` leaves its connection waiting
    for the server to confirm the cancel, which a server that stopped answering never does:
    close that connection at once, and have SQLAlchemy discard it rather than roll back on it
    (another timeout). Only it: its pool siblings may be fine, and a graceful close of each
    would wait on a silent server too."""
    connection = context.connection
    if not isinstance(context.original_exception, asyncio.TimeoutError) or connection is None:
        return
    if not connection.invalidated:
        driver = connection.connection.driver_connection
        if driver is not None:
            driver.terminate()
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = False


def engine_for_url(url: str | URL, **options: Any) -> AsyncEngine:
    """``create_async_engine(url, **options)`` (looked up when called, for instrumentations
    that wrap it), whose PostgreSQL connections take the URL's libpq options
    (``?sslmode=require``, ``connect_timeout``, ``application_name``, ...) as asyncpg does
    (``urls.asyncpg_arguments``); SQLAlchemy would pass them on as keywords asyncpg refuses."""
    engine = sqlalchemy_asyncio.create_async_engine(url, **options)
    if engine.dialect.name == "postgresql":
        event.listen(engine.sync_engine, "do_connect", _libpq_options)
    return engine


def _libpq_options(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    """SQLAlchemy's ``do_connect`` event: the connect keywords, translated in place."""
    translated = asyncpg_arguments(cparams)
    cparams.clear()
    cparams.update(translated)


_users: WeakKeyDictionary[Engine, int] = WeakKeyDictionary()
"""How many started repositories use each SQLite engine's connect listener."""


def prepare_engine(engine: AsyncEngine) -> AsyncEngine:
    """Apply convostore's connection settings to an engine (its own, or one a caller passed
    in; for the latter, connections it opens from now on). SQLite only: a ``connect`` event
    listener, removed again by ``release_engine`` when the last repository using it stops."""
    sync_engine = engine.sync_engine
    if engine.dialect.name == "sqlite":
        if not event.contains(sync_engine, "connect", sqlite_on_connect):
            event.listen(sync_engine, "connect", sqlite_on_connect)
        _users[sync_engine] = _users.get(sync_engine, 0) + 1
    return engine


async def release_engine(engine: AsyncEngine, *, owned: bool) -> None:
    """Undo ``prepare_engine``: dispose an engine convostore created; leave a caller's open,
    without convostore's listener once no repository of ours uses it."""
    if owned:
        await engine.dispose()
        return
    sync_engine = engine.sync_engine
    users = _users.get(sync_engine, 0) - 1
    if users > 0:
        _users[sync_engine] = users
        return
    _users.pop(sync_engine, None)
    if event.contains(sync_engine, "connect", sqlite_on_connect):
        event.remove(sync_engine, "connect", sqlite_on_connect)


def _unnamed_statement() -> str:
    """SQLAlchemy's asyncpg adapter prepares named statements; an empty name makes them
    PostgreSQL's unnamed statement, which lives only until the next one on the connection."""
    return ""


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
