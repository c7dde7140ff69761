"""Caches of several workers kept coherent: another process's write or delete of a session
drops this process's cached copy within a bound, without SQL on a cache hit.

Every write that moves a session's version, and every delete, appends a row to the table
``convostore_changes`` in the writer's own transaction: the session id and its new version
(-1: deleted). On SQLite triggers write it (migration 0002); on PostgreSQL the write's own
statement does (``Statements``, migration 0007), and a trigger records deletions. A watcher
per repository polls the table and posts what it finds to the cache (``SessionCache.post``),
which applies it before it answers its next read. The watcher runs in a thread of its own,
with an event loop of its own, so a busy application event loop delays neither the poll nor
the news. While the watcher cannot follow the feed, the cache is off (every ``get`` reads the
database), so the bound holds; it reconnects with backoff.

- ``SqliteWatcher`` looks at the file's ``PRAGMA data_version`` every
  ``SQLITE_POLL_INTERVAL`` seconds and reads the feed's new rows only when it moved. SQLite
  has one writer at a time, so rows become visible in id order.
- ``PostgresWatcher`` reads the feed's rows after the newest it has seen every
  ``POSTGRES_POLL_INTERVAL`` seconds. Concurrent writers commit out of id order, so an id not
  seen below one that is (a gap) is kept pending and asked for again until its transaction
  has certainly ended (see ``_Gaps``). A poll is one plain statement, so it runs through a
  transaction pooler too.

Before 0005, PostgreSQL's trigger sent a ``NOTIFY`` instead: each notifying commit holds the
server's one notification lock, which made writers commit one at a time. From 0005 to 0007 a
row trigger inserted the feed's rows, at a cost of 5 to 11 % of the appends a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Dialect
from sqlalchemy.engine import URL

from convostore._core.cache import News, SessionCache, Switch
from convostore._core.engine import connect_asyncpg
from convostore.backends._fast import Compiled
from convostore.backends._statements import Statements
from convostore.backends._urls import asyncpg_arguments

__all__ = [
    "POSTGRES_POLL_INTERVAL",
    "SQLITE_POLL_INTERVAL",
    "PostgresWatcher",
    "SqliteWatcher",
    "Watcher",
]

logger = logging.getLogger("convostore")

SQLITE_POLL_INTERVAL = 0.01
"""Seconds between two looks at a SQLite file's ``data_version`` (a few microseconds each)."""
POSTGRES_POLL_INTERVAL = 0.02
"""Seconds between two polls of PostgreSQL's feed: one indexed read that usually finds
nothing, about 50 a second per worker."""
MAX_PENDING = 10_000
"""Gaps a PostgreSQL watcher keeps asking for; beyond that it starts over (cache off until
it has caught up), as after a lost connection."""
_DATA_VERSION = "PRAGMA data_version"
_ADAPTER_OPTIONS = ("prepared_statement_cache_size", "prepared_statement_name_func")
_POLL_TIMEOUT = 5.0
_SQLITE_BUSY_TIMEOUT = 1.0
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
_FIRST_CONNECT_WAIT = 5.0
_STOP_WAIT = 5.0


class Watcher(Protocol):
    """Applies other processes' changes to a cache from ``start()`` to ``stop()``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class FeedLost(ConnectionError):
    """The feed can no longer be followed exactly (the server restarted, or too many gaps):
    start over, as after a lost connection."""


class _Loop(ABC):
    """A thread with an event loop of its own that keeps a change source connected, posts
    what it learns to the cache, with the cache off while it is not connected, and reconnects
    with backoff. Subclasses say how to connect and follow."""

    name = "watcher"

    def __init__(self, cache: SessionCache) -> None:
        self._cache = cache
        self._app: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_try = asyncio.Event()
        self._ended: asyncio.Future[None] | None = None
        self._stopping = False
        self._backoff = _FIRST_BACKOFF
        self._outage = False

    async def start(self) -> None:
        """Start following; return once the first connection attempt has ended (so a
        repository that starts normally has its cache on)."""
        self._cache.enable(False)
        app = self._app = asyncio.get_running_loop()
        self._ended = app.create_future()
        loop = self._loop = asyncio.new_event_loop()
        task = self._task = loop.create_task(self._run())
        threading.Thread(
            target=self._thread, args=(loop, task), name=f"convostore-{self.name}", daemon=True
        ).start()
        try:
            await asyncio.wait_for(self._first_try.wait(), _FIRST_CONNECT_WAIT)
        except asyncio.TimeoutError:
            logger.warning("convostore: %s is not connected yet; cache off until it is", self.name)

    async def stop(self) -> None:
        """Stop the thread and turn the cache off. Waits at most a few seconds: a thread
        stuck in a call is left to end on its own (its news is ignored from now on)."""
        loop, task, ended = self._loop, self._task, self._ended
        if loop is None or task is None or ended is None:
            return
        self._stopping = True
        self._loop = self._task = None
        with contextlib.suppress(RuntimeError):  # the thread's loop has closed already
            loop.call_soon_threadsafe(task.cancel)
        done, _ = await asyncio.wait([ended], timeout=_STOP_WAIT)
        if not done:
            logger.warning("convostore: %s did not stop within %s s", self.name, _STOP_WAIT)
        self._cache.apply_posted()
        self._cache.enable(False)

    def _thread(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()
            self._in_app(self._set_ended)

    def _set_ended(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def _in_app(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in the application's event loop (if it still runs)."""
        if self._app is None:
            return
        # A closed application loop raises: nobody reads the cache any more.
        with contextlib.suppress(RuntimeError):
            self._app.call_soon_threadsafe(callback)

    def post(self, news: Iterable[News]) -> None:
        """From the watcher's thread: news for the cache, applied before its next read (and
        soon in any case, so it never piles up)."""
        if self._stopping:
            return
        self._cache.post(news)
        self._in_app(self._cache.apply_posted)

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "convostore: %s lost (%s: %s); cache off until it is back",
                        self.name,
                        type(exc).__name__,
                        exc,
                    )
            finally:
                self.post([Switch.OFF])
                self._in_app(self._first_try.set)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    @abstractmethod
    async def _follow(self) -> None:
        """Connect, call ``_connected()`` once every change from then on will be seen, and
        post changes until the source is lost (then raise)."""

    def _connected(self) -> None:
        """The source is followed from now on: whatever was cached before may have missed
        changes, so the cache starts empty."""
        self._outage, self._backoff = False, _FIRST_BACKOFF
        self.post([Switch.ON])
        self._in_app(self._first_try.set)
        logger.info("convostore: %s connected; cache on", self.name)


def _news(rows: Iterable[Sequence[Any]]) -> list[News]:
    """Feed rows ``(id, session_id, version)`` as news (version -1: deleted)."""
    return [(sid, None if version < 0 else int(version)) for _, sid, version in rows]


@dataclass(slots=True)
class _Gap:
    """An id the feed did not show below one it did."""

    polls: int = 0
    """Polls since it was first missed."""
    writers: frozenset[str] | None = None
    """The transactions holding the feed's write lock, read after it was first missed."""
    ended: bool = False
    """Every one of ``writers`` had ended before a later read of the lock holders."""


class _Gaps:
    """The ids a PostgreSQL watcher has not seen below the newest one it has, until each is
    seen or certainly never will be.

    Ids come from a sequence in order, and a transaction takes the feed's write lock before
    its id and keeps it until it ends. So when a snapshot shows id ``q`` but not ``p < q``,
    ``p``'s transaction was running or had aborted when the snapshot was taken. The lock
    holders read at any later time include it, unless it had ended by then. Once every one of
    those holders has ended (seen at a later read), a snapshot taken after that read shows
    ``p`` if it was ever committed. Only a gap that outlives a poll needs the lock holders
    read (usually a commit a moment behind a later one just fills in), so that read is rare.
    """

    def __init__(self) -> None:
        self._gaps: dict[int, _Gap] = {}

    def __len__(self) -> int:
        return len(self._gaps)

    def ids(self) -> list[int]:
        return list(self._gaps)

    def polled(self, seen: Iterable[int], after: int, newest: int) -> None:
        """A poll asked for the ids after ``after`` and the gaps, and saw ``seen`` (up to
        ``newest``): gaps seen are filled, new ones open."""
        seen = set(seen)
        for gap_id in seen & self._gaps.keys():
            del self._gaps[gap_id]
        for gap in self._gaps.values():
            gap.polls += 1
        missing = newest - after - sum(1 for seen_id in seen if seen_id > after)
        if len(self._gaps) + missing > MAX_PENDING:
            raise FeedLost(f"more than {MAX_PENDING} ids of the change feed missing")
        for gap_id in range(after + 1, newest):
            if gap_id not in seen:
                self._gaps[gap_id] = _Gap()

    def need_witness(self) -> bool:
        """Whether a gap waits for the feed's lock holders to be read."""
        return any(gap.polls for gap in self._gaps.values())

    def witnessed(self, writers: frozenset[str], oldest: int | None) -> bool:
        """The lock holders read after the last poll, and the oldest id kept then. Returns
        whether a gap may have been pruned unseen (the cache must then be cleared); gaps
        that will never be filled are dropped."""
        pruned = False
        for gap_id, gap in list(self._gaps.items()):
            if not gap.polls:
                continue
            if gap.ended:
                # Missing from a poll taken after every transaction that could hold it ended.
                del self._gaps[gap_id]
                pruned = pruned or oldest is None or gap_id < oldest
            elif gap.writers is None:
                gap.writers = writers
                gap.ended = not writers
            else:
                gap.ended = not (gap.writers & writers)
        return pruned


class PostgresWatcher(_Loop):
    """Polls ``convostore_changes`` on a connection of its own."""

    name = "change poller"

    def __init__(
        self, cache: SessionCache, url: URL, dialect: Dialect, *, pooled: bool = False
    ) -> None:
        super().__init__(cache)
        self._connect_args = _asyncpg_connect_args(url, dialect)
        if pooled:
            # A transaction pooler may run each statement on another server connection,
            # where a prepared statement of an earlier one does not exist.
            self._connect_args["statement_cache_size"] = 0
        sql = Statements("postgresql")
        self._poll = Compiled(sql.poll_changes, dialect)
        self._witness = Compiled(sql.feed_witness, dialect)

    async def _follow(self) -> None:
        # A server that stops answering must not hold the poller: the connect and every
        # command on the connection give up after _POLL_TIMEOUT, unless the URL says how long
        # a connect may take (connect_timeout).
        conn = await connect_asyncpg(
            **{"timeout": _POLL_TIMEOUT, **self._connect_args, "command_timeout": _POLL_TIMEOUT}
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
        gaps = _Gaps()
        while True:
            await asyncio.sleep(POSTGRES_POLL_INTERVAL)
            rows = await conn.fetch(
                self._poll.sql,
                *self._poll.args({"after": newest, "pending": gaps.ids()}),
                timeout=_POLL_TIMEOUT,
            )
            if rows[0][0] != started:
                raise FeedLost("the server restarted")
            changed = [row[1:] for row in rows if row[1] is not None]
            after, newest = newest, max([newest, *(row[0] for row in changed)])
            if changed:
                self.post(_news(changed))
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
            self._witness.sql, *self._witness.args({}), timeout=_POLL_TIMEOUT
        )
        return int(newest), oldest, frozenset(writers or ()), started


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
        # Plain sqlite3 in this thread: a poll blocks only the watcher's own loop, and costs
        # no hop to another thread.
        conn = sqlite3.connect(self._path, timeout=_SQLITE_BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = ON")
            version = _scalar(conn, _DATA_VERSION)
            last = _scalar(conn, self._newest.sql, self._newest.args({}))
            self._connected()
            while True:
                await asyncio.sleep(SQLITE_POLL_INTERVAL)
                now = _scalar(conn, _DATA_VERSION)
                if now != version:
                    version = now
                    last = self._apply(conn, last)
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, last: int) -> int:
        """Post the feed's rows after ``last``; returns the newest row seen."""
        rows = conn.execute(self._since.sql, self._since.args({"after": last})).fetchall()
        if not rows:
            return last
        if rows[0][0] != last + 1:
            oldest = _scalar(conn, self._oldest.sql, self._oldest.args({}))
            if oldest > last + 1:
                logger.info("convostore: change feed pruned past this process; cache cleared")
                self.post([Switch.CLEAR])
                return int(rows[-1][0])
        self.post(_news(rows))
        return int(rows[-1][0])


def _scalar(conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> int:
    row = conn.execute(sql, args).fetchone()
    return int(row[0])


def _asyncpg_connect_args(url: URL, dialect: Dialect) -> dict[str, Any]:
    """``asyncpg.connect`` keywords for a URL, as SQLAlchemy's asyncpg dialect derives them
    and convostore's engines translate them (``urls.asyncpg_arguments``), less the options
    only its adapter takes."""
    options: Mapping[str, Any]
    _, options = dialect.create_connect_args(url)
    return asyncpg_arguments(
        {name: value for name, value in options.items() if name not in _ADAPTER_OPTIONS}
    )
