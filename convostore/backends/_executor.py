"""Which executor runs the hot paths: the drivers directly (``backends/_fast.py``, the fast path) or
SQLAlchemy's own execution (``backends/_core_path.py``).

Whether the fast path is possible at all is decided once, when a repository starts; whether
something watches SQLAlchemy's statements is asked again for every operation, so that
logging or tracing switched on after the repository started still sees every statement."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.gate import Gate, Turns
from convostore.backends import Backend, backend_for
from convostore.backends._core_path import CoreExecutor
from convostore.backends._fast import Compiled, ConnectionLender, Inserts, Reads

__all__ = ["AppendsInGroups", "Executor", "Executors", "LoadsInParts", "WritesTransactions"]


class Executor(Protocol):
    """Runs compiled statements: a backend's fast path, or SQLAlchemy's (``CoreExecutor``)."""

    appends_in_groups: bool
    """It has ``append`` (``AppendsInGroups``): the one-statement append, grouped."""
    loads_in_parts: bool
    """It has ``read_parts`` (``LoadsInParts``): a load as several reads in one snapshot."""

    async def read(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]: ...

    async def write(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]: ...


class WritesTransactions(Executor, Protocol):
    """A write as a head statement and the inserts it numbers, in one transaction (every
    executor of a backend without ``one_statement_append``)."""

    async def write_transaction(
        self, head: Compiled, params: Mapping[str, Any], then: Inserts | None = None
    ) -> list[tuple[Any, ...]]: ...


class AppendsInGroups(Executor, Protocol):
    async def append(
        self, alone: Compiled, grouped: Compiled, params: Mapping[str, Any]
    ) -> list[Any]: ...


class LoadsInParts(Executor, Protocol):
    async def read_parts(
        self, head: Compiled, params: Mapping[str, Any], then: Reads
    ) -> tuple[list[Any], list[list[Any]]]: ...


logger = logging.getLogger("convostore")


def _watched(sync_engine: Engine) -> str | None:
    """Why statements on ``sync_engine`` must go through SQLAlchemy's execution now, or None.

    The fast path would hide its statements from whatever watches SQLAlchemy's: echo or INFO
    logging of ``sqlalchemy.engine`` (SQLAlchemy logs every statement then, so convostore's
    should be among them), and ``before_cursor_execute``/``after_cursor_execute`` listeners
    (statement counters, OpenTelemetry's SQLAlchemy instrumentation). Asked once per
    database operation."""
    if sync_engine.echo or sync_engine.logger.isEnabledFor(logging.INFO):
        return "the engine logs its statements (echo or the sqlalchemy.engine logger at INFO)"
    dispatch = sync_engine.dispatch
    if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
        return "the engine has before_cursor_execute or after_cursor_execute listeners"
    return None


def _no_fast_path(backend: Backend, *, fast_path: bool) -> str | None:
    """Why the fast path cannot run on this backend at all, or None."""
    if not fast_path:
        return "StoreConfig.fast_path is False"
    return backend.why_no_fast_path()


class Executors:
    """The executor of the hot paths on one engine, asked for per operation (``pick``):
    the driver, unless the fast path is off or something watches SQLAlchemy's statements at
    that moment (a listener or logging added before or after the repository started), then
    SQLAlchemy's execution."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool,
        fast_path: bool,
        gate: Gate | None = None,
    ) -> None:
        self.lender = ConnectionLender(engine, gate=gate)
        """Lends the drivers their connections (and keeps some, on convostore's own engine)."""
        backend = backend_for(engine)
        self.writes = Turns() if backend.one_writer else None
        """A one-writer backend's write transactions of this process, one at a time in the
        order they came."""
        self.core = CoreExecutor(engine, self.lender, self.writes)
        self._sync_engine = engine.sync_engine
        self._driver: Executor | None = None
        never = _no_fast_path(backend, fast_path=fast_path)
        reason = never or _watched(self._sync_engine)
        if reason is not None:
            logger.debug("convostore: statements run through SQLAlchemy's execution: %s", reason)
        if never is None:
            self._driver = backend.fast_executor(self.lender, self.writes, owns_engine=owns_engine)

    def pick(self) -> Executor:
        """The executor for the operation about to run."""
        driver = self._driver
        if driver is None or _watched(self._sync_engine) is not None:
            return self.core
        return driver

    async def close(self) -> None:
        """Give back the connection the driver kept between operations, if any."""
        await self.lender.release()
