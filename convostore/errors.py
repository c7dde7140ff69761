"""The exceptions convostore raises on purpose, and the one place driver errors are translated.

Every exception raised on purpose derives from ``ConvostoreError``::

    ConvostoreError
    ├── InvalidSessionId   (also ValueError)   bad session id, raised before any SQL
    ├── InvalidTurn        (also ValueError)   text or results the store cannot hold, before any SQL
    ├── SchemaNotReady                         the database lacks the newest migration
    ├── NotRunning         (also RuntimeError) the repository is not started, or already stopped
    └── StoreError                             the database or driver failed; cause chained
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "ConvostoreError",
    "InvalidSessionId",
    "InvalidTurn",
    "NotRunning",
    "SchemaNotReady",
    "StoreError",
    "translate_errors",
]


class ConvostoreError(Exception):
    """Base of every error convostore raises on purpose."""


class InvalidSessionId(ConvostoreError, ValueError):
    """A session id is empty, longer than 128 characters, or not printable ASCII."""


class InvalidTurn(ConvostoreError, ValueError):
    """A field holds text or data that the store cannot keep; the message names the field."""


class SchemaNotReady(ConvostoreError):
    """The database has no convostore schema, or an older one; the message says how to migrate."""


class NotRunning(ConvostoreError, RuntimeError):
    """The repository was used before ``start()`` or after ``stop()``."""


class StoreError(ConvostoreError):
    """The database or its driver failed; the original exception is chained as ``__cause__``."""


def _driver_errors() -> tuple[type[Exception], ...]:
    """SQLAlchemy's errors, and the drivers' own (the hot paths call the drivers directly)."""
    errors: list[type[Exception]] = [SQLAlchemyError, OSError, sqlite3.Error]
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        errors += [asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError]
    return tuple(errors)


_DRIVER_ERRORS = _driver_errors()


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise SQLAlchemy and driver errors as ``StoreError``, naming what was being done."""
    try:
        yield
    except ConvostoreError:
        raise
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"{action} failed: {exc}") from exc
