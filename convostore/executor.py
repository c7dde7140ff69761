"""Which executor runs the hot paths: the drivers directly (``driver.py``, the fast path) or
SQLAlchemy's own execution (``core_executor.py``). Decided once, when a repository starts."""

from __future__ import annotations

import logging
from typing import TypeAlias

from sqlalchemy.ext.asyncio import AsyncEngine

from ._private import aiosqlite_thread_api
from .core_executor import CoreExecutor
from .driver import PostgresDriver, SqliteDriver

__all__ = ["Executor", "choose_executor", "core_path_reason"]

Executor: TypeAlias = PostgresDriver | SqliteDriver | CoreExecutor

logger = logging.getLogger("convostore")


def core_path_reason(engine: AsyncEngine, *, fast_path: bool) -> str | None:
    """Why the hot paths must go through SQLAlchemy's execution on ``engine``, or None.

    The fast path would hide its statements from whatever watches SQLAlchemy's: echo or INFO
    logging of ``sqlalchemy.engine`` (SQLAlchemy logs every statement then, so convostore's
    should be among them), and ``before_cursor_execute``/``after_cursor_execute`` listeners
    (statement counters, OpenTelemetry's instrumentation). Listeners added or logging
    enabled after the repository started are not noticed."""
    sync_engine = engine.sync_engine
    if not fast_path:
        return "StoreConfig.fast_path is False"
    if engine.echo or sync_engine.logger.isEnabledFor(logging.INFO):
        return "the engine logs its statements (echo or the sqlalchemy.engine logger at INFO)"
    dispatch = sync_engine.dispatch
    if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
        return "the engine has before_cursor_execute or after_cursor_execute listeners"
    if engine.dialect.name == "sqlite" and not aiosqlite_thread_api():
        return "this aiosqlite has no Connection._execute/_conn"
    return None


def choose_executor(engine: AsyncEngine, *, owns_engine: bool, fast_path: bool) -> Executor:
    """The executor for ``engine``: a driver, unless ``core_path_reason`` names a reason."""
    reason = core_path_reason(engine, fast_path=fast_path)
    if reason is not None:
        logger.debug("convostore: statements run through SQLAlchemy's execution: %s", reason)
        return CoreExecutor(engine)
    if engine.dialect.name == "postgresql":
        return PostgresDriver(engine, owns_engine=owns_engine)
    return SqliteDriver(engine)
