"""The private APIs of other libraries that convostore uses, one helper each.

Each helper says whether its API is there, so that the caller can fall back to a public
route when a new release moved it; pyproject.toml pins the versions known to work.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import aiosqlite
from pydantic import BaseModel

__all__ = [
    "SlotSetters",
    "aiosqlite_thread_api",
    "alembic_proxies_kept",
    "asyncpg_cancel_request",
    "pydantic_slot_setters",
    "run_in_sqlite_thread",
    "sqlalchemy_asyncpg_connector",
]

T = TypeVar("T")


class SlotSetters(NamedTuple):
    """The ``__set__`` of pydantic ``BaseModel``'s slot descriptors."""

    fields_set: Callable[[Any, set[str]], None]
    extra: Callable[[Any, dict[str, Any] | None], None]
    private: Callable[[Any, dict[str, Any] | None], None]


def pydantic_slot_setters(model: type = BaseModel) -> SlotSetters | None:
    """The setters of ``model``'s slots ``__pydantic_fields_set__``, ``__pydantic_extra__`` and
    ``__pydantic_private__``, or None if any of them is not a slot descriptor there.

    Relies on pydantic v2 keeping these three as ``__slots__`` of ``BaseModel`` (true from 2.0;
    known to work with pydantic 2.6 to 2.14, pydantic_core up to 2.50), so a model can be built
    without validation by setting ``__dict__`` and these slots, as ``model_construct`` does."""
    setters = []
    for name in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
        setter = getattr(model.__dict__.get(name), "__set__", None)
        if setter is None:
            return None
        setters.append(setter)
    return SlotSetters(*setters)


def aiosqlite_thread_api(connection_class: type = aiosqlite.Connection) -> bool:
    """Whether aiosqlite's ``Connection`` has the private ``_execute(fn)`` (run ``fn`` in the
    connection's worker thread) and ``_conn`` (its ``sqlite3.Connection``).

    Both date from aiosqlite's first releases; known to work with aiosqlite 0.20 to 0.22."""
    return callable(getattr(connection_class, "_execute", None)) and hasattr(
        connection_class, "_conn"
    )


def run_in_sqlite_thread(
    connection: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]
) -> Awaitable[T]:
    """``work(sqlite3 connection)`` in the aiosqlite connection's worker thread, one thread hop
    for any number of statements (aiosqlite's public API takes one hop per call). Only call
    when ``aiosqlite_thread_api()``."""
    execute: Callable[[Callable[[], T]], Awaitable[T]] = connection._execute
    return execute(lambda: work(connection._conn))


def asyncpg_cancel_request(connection: Any) -> Callable[[], Awaitable[None]] | None:
    """A coroutine function that asks the server to cancel the statement the asyncpg
    ``connection`` is running, over a connection of its own (PostgreSQL's CancelRequest, which
    PgBouncer passes on), or None where asyncpg's pieces for it are missing. Take it before
    the connection is terminated, which drops them.

    Relies on asyncpg's private ``connect_utils._cancel`` and the connection's ``_addr``,
    ``_params`` and ``_protocol.backend_pid``/``backend_secret``: what asyncpg's own cancel
    after a ``command_timeout`` uses (known to work with asyncpg 0.30 to 0.32). Where they are
    missing, the statement of a terminated connection runs on to its end on the server."""
    try:
        from asyncpg import connect_utils

        cancel: Callable[..., Awaitable[None]] = connect_utils._cancel
        addr, params = connection._addr, connection._params
        pid, secret = connection._protocol.backend_pid, connection._protocol.backend_secret
    except (ImportError, AttributeError):
        return None
    loop = asyncio.get_running_loop()

    def send() -> Awaitable[None]:
        return cancel(loop=loop, addr=addr, params=params, backend_pid=pid, backend_secret=secret)

    return send


def sqlalchemy_asyncpg_connector(
    connect: Callable[..., Awaitable[Any]], dbapi_class: type | None = None
) -> dict[str, Any]:
    """``connect_args`` that make SQLAlchemy's asyncpg dialect open its connections with
    ``connect`` (called with ``asyncpg.connect``'s arguments) instead of ``asyncpg.connect``,
    keeping everything else the dialect does with the URL and the other ``connect_args``.

    Relies on the private ``async_creator_fn`` keyword of the dialect's DBAPI adapter
    (``AsyncAdapt_asyncpg_dbapi.connect``), through which SQLAlchemy's own public
    ``async_creator`` works (since 2.0.16; known to work with SQLAlchemy 2.0.30 to 2.1.9). The
    public ``async_creator`` cannot serve: it drops the URL's arguments and the adapter's
    options (``prepared_statement_cache_size``, which PgBouncer needs). Where the keyword is
    missing this answers ``{}``: connections are then opened by ``asyncpg.connect`` itself."""
    if dbapi_class is None:
        from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

        dbapi_class = AsyncAdapt_asyncpg_dbapi
    code = getattr(getattr(dbapi_class, "connect", None), "__code__", None)
    if code is None or "async_creator_fn" not in code.co_consts:
        return {}
    return {"async_creator_fn": connect}


@contextmanager
def alembic_proxies_kept() -> Iterator[None]:
    """Run a nested alembic migration without losing the caller's ``alembic.context`` and
    ``alembic.op``: alembic installs one proxy target per process for each, and a nested run
    replaces, then removes them, which breaks the host's own run in progress.

    Relies on alembic's private ``_proxy`` attribute and ``_install_proxy()`` method of the
    objects behind those proxies (known to work with alembic 1.13 to 1.20). Where they are
    missing the block still runs, and the host's run may then fail: its docs say to run
    ``convostore migrate`` as its own deploy step instead."""
    from alembic import context, op

    saved = [getattr(module, "_proxy", None) for module in (context, op)]
    try:
        yield
    finally:
        for proxy in saved:
            install = getattr(proxy, "_install_proxy", None)
            if callable(install):
                install()
