"""Keeping turn content out of the logs of the engines convostore creates.

Two libraries log content at DEBUG: SQLAlchemy logs every result row through the engine's
logger, and aiosqlite logs each call it runs in its thread with the call's arguments (a
statement's parameters). ``hide_parameters`` covers only SQLAlchemy's own statement log. So an
engine of convostore's logs under a name of its own, ``ENGINE_LOGGER``, whose DEBUG records (the
rows, and the column names) a filter drops, and on SQLite hands the driver its parameters in a
sequence whose ``repr`` does not show them. Statements are still logged at INFO, without
parameters, and ``sqlalchemy.engine`` at INFO still makes convostore's statements take
SQLAlchemy's execution (``executor._watched``), so that they are among those logged.

An engine a caller passes in is theirs and is left as it is: the README says which loggers to
keep above DEBUG for it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "ENGINE_LOGGER",
    "ENGINE_LOGGING_NAME",
    "keep_content_out_of_logs",
    "keep_sqlite_content_out_of_logs",
]

ENGINE_LOGGING_NAME = "convostore"
"""``create_async_engine(logging_name=...)`` of convostore's engines."""
ENGINE_LOGGER = f"sqlalchemy.engine.Engine.{ENGINE_LOGGING_NAME}"
"""The logger SQLAlchemy gives an engine with that ``logging_name``."""


class _NoDebug(logging.Filter):
    """Drops DEBUG records: SQLAlchemy's result rows (and column names)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_no_debug = _NoDebug()


class _Unshown(tuple[Any, ...]):
    """A statement's parameters, or a batch of them, with a ``repr`` that does not show them:
    aiosqlite logs the calls it runs at DEBUG, arguments included. sqlite3 binds any
    sequence."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "(parameters not shown)"


def _execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    cursor.execute(statement, _unshown(parameters))
    return True


def _executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    cursor.executemany(statement, _unshown(parameters))
    return True


def _unshown(parameters: Any) -> Any:
    """``parameters`` as ``_Unshown`` if they are positional (convostore's SQLite engines
    bind by position); anything else as it is."""
    return _Unshown(parameters) if isinstance(parameters, (tuple, list)) else parameters


def keep_content_out_of_logs(engine: AsyncEngine) -> AsyncEngine:
    """Set up an engine convostore created with ``logging_name=ENGINE_LOGGING_NAME`` so that
    no log record of it, or of its driver, holds a row or a parameter."""
    logging.getLogger(ENGINE_LOGGER).addFilter(_no_debug)
    return engine


def keep_sqlite_content_out_of_logs(engine: AsyncEngine) -> None:
    """aiosqlite logs each call with its arguments: its engines run statements with the
    parameters hidden from that log (``_Unshown``)."""
    sync_engine = engine.sync_engine
    event.listen(sync_engine, "do_execute", _execute)
    event.listen(sync_engine, "do_executemany", _executemany)
