"""Counting the statements an engine's connections run, as the database driver sees them, so
that the count covers both executors: the fast path (on the driver directly) and SQLAlchemy's
execution."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

CHECKOUT = "<connection checkout>"


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Collect every SQL statement run on ``engine``'s connections, and every connection taken
    from its pool (recorded as ``CHECKOUT``).

    SQLite: the ``sqlite3`` connection's trace callback, which sees every statement (including
    BEGIN and COMMIT). PostgreSQL: asyncpg's query logger, which sees the fast path's calls,
    plus SQLAlchemy's ``before_cursor_execute`` for the prepared statements its asyncpg adapter
    runs, which the query logger does not see (so a statement may be listed twice). Both are
    installed on each connection as it is checked out. MariaDB (SQLAlchemy's execution only):
    ``before_cursor_execute``, which does not see BEGIN and COMMIT."""
    statements: list[str] = []
    active = [True]

    def trace(statement: str) -> None:
        if active:
            statements.append(statement)

    def log_query(record: Any) -> None:
        trace(record.query)

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        statements.append(CHECKOUT)
        driver = dbapi_connection.driver_connection
        if engine.dialect.name == "sqlite":
            await_only(driver.set_trace_callback(trace))
        elif engine.dialect.name == "postgresql":
            driver.add_query_logger(log_query)
            loggers.append(driver)

    def cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        trace(statement)

    loggers: list[Any] = []
    target = engine.sync_engine
    event.listen(target, "checkout", checkout)
    watched = engine.dialect.name != "sqlite"
    if watched:
        event.listen(target, "before_cursor_execute", cursor_execute)
    try:
        yield statements
    finally:
        active.clear()
        event.remove(target, "checkout", checkout)
        if watched:
            event.remove(target, "before_cursor_execute", cursor_execute)
        for driver in loggers:
            driver.remove_query_logger(log_query)
