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

This module holds what every backend's watcher shares: the thread and its loop
(``PollingWatcher``) and, for databases whose writers commit out of id order, the
bookkeeping of ids not seen yet (``Gaps``). Each backend module holds its own watcher:
``backends.sqlite.SqliteWatcher`` looks at the file's ``PRAGMA data_version`` and reads the
feed's new rows only when it moved (one writer at a time, so rows become visible in id order);
``backends.postgresql.PostgresWatcher`` reads the feed's rows after the newest it has seen,
keeping an id not seen below one that is pending until its transaction has certainly ended.

Before 0005, PostgreSQL's trigger sent a ``NOTIFY`` instead: each notifying commit holds the
server's one notification lock, which made writers commit one at a time. From 0005 to 0007 a
row trigger inserted the feed's rows, at a cost of 5 to 11 % of the appends a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from convostore._core.cache import News, SessionCache, Switch

__all__ = [
    "MAX_PENDING",
    "POLL_TIMEOUT",
    "FeedLost",
    "Gaps",
    "PollingWatcher",
    "Watcher",
    "news_of",
]

logger = logging.getLogger("convostore")

MAX_PENDING = 10_000
"""Gaps a PostgreSQL watcher keeps asking for; beyond that it starts over (cache off until
it has caught up), as after a lost connection."""
POLL_TIMEOUT = 5.0
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


class PollingWatcher(ABC):
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


def news_of(rows: Iterable[Sequence[Any]]) -> list[News]:
    """Feed rows ``(id, session_id, version)`` as news (version -1: deleted)."""
    return [(sid, None if version < 0 else int(version)) for _, sid, version in rows]


@dataclass(slots=True)
class Gap:
    """An id the feed did not show below one it did."""

    polls: int = 0
    """Polls since it was first missed."""
    writers: frozenset[str] | None = None
    """The transactions holding the feed's write lock, read after it was first missed."""
    ended: bool = False
    """Every one of ``writers`` had ended before a later read of the lock holders."""


class Gaps:
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
        self._gaps: dict[int, Gap] = {}

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
                self._gaps[gap_id] = Gap()

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
