"""Caches of several workers kept coherent: another process's write or delete of a session
drops this process's cached copy within a bound, without SQL on a cache hit.

Every write that moves a session's version, and every delete, is announced by a trigger in the
writer's own transaction (migration 0002): on PostgreSQL as ``NOTIFY convostore_changes``
(payload ``<version> <session_id>``, ``*`` for a deletion), on SQLite as a row of the table
``convostore_changes``. A watcher per repository applies them to its cache:

- ``PostgresWatcher`` holds one listening connection (a direct one: ``LISTEN`` does not work
  through a transaction pooler). While it is down, the cache is off (every ``get`` reads the
  database), so the bound holds; it reconnects with backoff.
- ``SqliteWatcher`` polls ``PRAGMA data_version`` every ``SQLITE_POLL_INTERVAL`` seconds on a
  connection of its own, and reads the feed's new rows only when the file changed.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Dialect
from sqlalchemy.engine import URL

from .cache import SessionCache
from .driver import Compiled
from .engine import connect_asyncpg
from .statements import Statements
from .urls import asyncpg_arguments

__all__ = [
    "CHANNEL",
    "SQLITE_POLL_INTERVAL",
    "PostgresWatcher",
    "SqliteWatcher",
    "Watcher",
]

logger = logging.getLogger("convostore")

CHANNEL = "convostore_changes"
SQLITE_POLL_INTERVAL = 0.02
"""Seconds between two looks at a SQLite file's ``data_version``: it bounds how long another
process's write may go unseen (p99 well under 50 ms with the poll's own cost)."""
_DATA_VERSION = "PRAGMA data_version"
_ADAPTER_OPTIONS = ("prepared_statement_cache_size", "prepared_statement_name_func")
_PING_INTERVAL = 5.0
_MAX_BACKOFF = 5.0
_FIRST_CONNECT_WAIT = 5.0


class Watcher(Protocol):
    """Applies other processes' changes to a cache from ``start()`` to ``stop()``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Loop(ABC):
    """A background loop that keeps a change source connected, with the cache off while it is
    not, and reconnects with backoff. Subclasses say how to connect and follow."""

    name = "watcher"

    def __init__(self, cache: SessionCache) -> None:
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self._first_try = asyncio.Event()

    async def start(self) -> None:
        """Start following; return once the first connection attempt has ended (so a
        repository that starts normally has its cache on)."""
        self._cache.enable(False)
        self._task = asyncio.create_task(self._run(), name=f"convostore-{self.name}")
        try:
            await asyncio.wait_for(self._first_try.wait(), _FIRST_CONNECT_WAIT)
        except asyncio.TimeoutError:
            logger.warning("convostore: %s is not connected yet; cache off until it is", self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        self._cache.enable(False)

    async def _run(self) -> None:
        backoff = 0.1
        outage = False
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not outage:
                    logger.warning(
                        "convostore: %s lost (%s); cache off until it is back",
                        self.name,
                        type(exc).__name__,
                    )
                outage = True
            finally:
                self._cache.enable(False)
                self._first_try.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    @abstractmethod
    async def _follow(self) -> None:
        """Connect, call ``_connected()``, and apply changes until the source is lost
        (then raise)."""

    def _connected(self) -> None:
        """The source is followed from now on: whatever was cached before may have missed
        changes, so the cache starts empty."""
        self._cache.enable(True)
        self._first_try.set()
        logger.info("convostore: %s connected; cache on", self.name)


class PostgresWatcher(_Loop):
    """``LISTEN convostore_changes`` on a connection of its own."""

    name = "change listener"

    def __init__(self, cache: SessionCache, url: URL, dialect: Dialect) -> None:
        super().__init__(cache)
        self._connect_args = _asyncpg_connect_args(url, dialect)

    async def _follow(self) -> None:
        # A server that stops answering must not hold the listener: the connect and every
        # command on the connection (LISTEN, the ping) give up after _PING_INTERVAL, unless
        # the URL says how long a connect may take (connect_timeout).
        conn = await connect_asyncpg(
            **{"timeout": _PING_INTERVAL, **self._connect_args, "command_timeout": _PING_INTERVAL}
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._notified)
            self._connected()
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), _PING_INTERVAL)
                except asyncio.TimeoutError:
                    # A connection can die without a word (a dropped network path); a ping
                    # finds out.
                    await conn.fetchval("SELECT 1", timeout=_PING_INTERVAL)
            raise ConnectionError("the listening connection was closed")
        finally:
            conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        version, _, sid = payload.partition(" ")
        self._cache.invalidate(sid, None if version == "*" else int(version))


class SqliteWatcher(_Loop):
    """Polls a SQLite file's ``data_version`` and reads its change feed when it moved."""

    name = "change poller"

    def __init__(self, cache: SessionCache, path: str, dialect: Dialect) -> None:
        super().__init__(cache)
        self._path = path
        sql = Statements("sqlite")
        self._since = Compiled(sql.changes_since, dialect)
        self._oldest = Compiled(sql.oldest_change, dialect)
        self._newest = Compiled(sql.newest_change, dialect)

    async def _follow(self) -> None:
        import aiosqlite

        async with aiosqlite.connect(self._path) as conn:
            await conn.execute("PRAGMA query_only = ON")
            version = await _scalar(conn, _DATA_VERSION)
            last = await _scalar(conn, self._newest.sql, self._newest.args({}))
            self._connected()
            while True:
                await asyncio.sleep(SQLITE_POLL_INTERVAL)
                now = await _scalar(conn, _DATA_VERSION)
                if now == version:
                    continue
                version = now
                last = await self._apply(conn, last)

    async def _apply(self, conn: Any, last: int) -> int:
        """Apply the feed's rows after ``last``; returns the newest row seen."""
        cursor = await conn.execute(self._since.sql, self._since.args({"after": last}))
        rows = await cursor.fetchall()
        if not rows:
            return last
        if rows[0][0] != last + 1:
            oldest = await _scalar(conn, self._oldest.sql, self._oldest.args({}))
            if oldest > last + 1:
                logger.info("convostore: change feed pruned past this process; cache cleared")
                self._cache.clear()
                return int(rows[-1][0])
        for _, sid, version in rows:
            self._cache.invalidate(sid, None if version < 0 else version)
        return int(rows[-1][0])


async def _scalar(conn: Any, sql: str, args: Sequence[Any] = ()) -> int:
    cursor = await conn.execute(sql, args)
    row = await cursor.fetchone()
    return int(row[0])


def _asyncpg_connect_args(url: URL, dialect: Dialect) -> dict[str, Any]:
    """``asyncpg.connect`` keywords for a URL, as SQLAlchemy's asyncpg dialect derives them
    and convostore's engines translate them (``urls.asyncpg_arguments``), less the options
    only its adapter takes."""
    _, options = dialect.create_connect_args(url)
    return asyncpg_arguments(
        {name: value for name, value in options.items() if name not in _ADAPTER_OPTIONS}
    )
