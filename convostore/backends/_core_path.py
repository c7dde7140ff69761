"""The hot paths' statements through SQLAlchemy's own execution, for when every statement must
be seen by SQLAlchemy: echo logging, cursor-execute listeners, tracing instrumentation.

``CoreExecutor`` has the fast paths' interface (``_executor.Executor``) and runs the same
compiled SQL with the same arguments through ``AsyncConnection.exec_driver_sql``, so rows
come back as the driver's raw values, to which the store applies ``Compiled.processors`` on
either path.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext, suppress
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.gate import Turns
from convostore.backends import backend_for
from convostore.backends._fast import Compiled, ConnectionLender, Inserts

__all__ = ["CoreExecutor"]


class CoreExecutor:
    """Runs compiled statements in SQLAlchemy transactions on the engine.

    A connection the fast path kept between operations (``lender``) goes back to the pool
    before each: the repository lets in only as many operations at once as the pool can lend
    connections, counting the kept one, which no operation here would use."""

    appends_in_groups = False
    loads_in_parts = False

    def __init__(
        self, engine: AsyncEngine, lender: ConnectionLender, writes: Turns | None = None
    ) -> None:
        """``writes``: where a write transaction waits its turn first (SQLite's, see
        ``Executors.writes``)."""
        self.engine = engine
        self._lender = lender
        self._writes = writes
        self._backend = backend_for(engine)

    async def read(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one statement."""
        await self._lender.release()
        async with self.engine.connect() as conn:
            return await _rows(conn, compiled, params)

    async def write(self, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
        """The rows of one data-modifying statement ... RETURNING, committed."""
        return await self.write_transaction(compiled, params)

    async def write_transaction(
        self, head: Compiled, params: Mapping[str, Any], then: Inserts | None = None
    ) -> list[tuple[Any, ...]]:
        """``head`` (an UPDATE or DELETE ... RETURNING), then the inserts ``then(first row)``
        asks for, in one transaction; returns head's rows. As ``driver.write_transaction``, the
        SQLite transaction is begun with the write lock unless the engine began one already (a
        connection in autocommit, as SQLAlchemy's aiosqlite recipe sets it up, may not have)."""
        await self._lender.release()
        writes = self._writes
        async with writes.turn() if writes else nullcontext(), self.engine.begin() as conn:
            began = await conn.run_sync(self._backend.begin_write)
            try:
                rows = [tuple(row) for row in await _rows(conn, head, params)]
                if rows and then is not None:
                    for compiled, many in then(rows[0]):
                        if many:
                            await conn.exec_driver_sql(compiled.sql, [tuple(a) for a in many])
            except BaseException:
                if began:
                    # In autocommit SQLAlchemy may skip its own rollback
                    # (skip_autocommit_rollback); the transaction begun here ends here.
                    with suppress(Exception):
                        await conn.exec_driver_sql("ROLLBACK")
                raise
        return rows


async def _rows(conn: AsyncConnection, compiled: Compiled, params: Mapping[str, Any]) -> list[Any]:
    result = await conn.exec_driver_sql(compiled.sql, tuple(compiled.args(params)))
    then = compiled.then
    if then is None:
        return list(result.all())
    if not result.rowcount:
        return []
    return await _rows(conn, then, params)
