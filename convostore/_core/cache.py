"""The in-process LRU cache of session states: O(1) hits, misses and evictions.

The cache holds sessions as last committed; callers get copies (``StoredSession.fork``). It is
changed only after a commit, so a failed write never leaves an uncommitted state behind.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from convostore.models import StoredSession

__all__ = ["News", "SessionCache", "Switch"]


class Switch(Enum):
    """News from a watcher that is not about one session."""

    ON = "on"
    """The watcher follows every change from now on: cache again, starting empty."""
    OFF = "off"
    """The watcher cannot follow changes: cache nothing."""
    CLEAR = "clear"
    """The watcher may have missed changes: forget everything cached so far."""


News = tuple[str, int | None] | Switch
"""What a watcher posts: (session id, version committed; None: deleted), or a ``Switch``."""


@dataclass(slots=True)
class _Held:
    """Writes of this process to one session in flight, and the newest version another
    process announced meanwhile (``version`` None: deleted)."""

    writes: int = 1
    announced: bool = False
    version: int | None = None

    def announce(self, version: int | None) -> None:
        if not self.announced:
            self.announced, self.version = True, version
        elif self.version is not None:
            self.version = None if version is None else max(self.version, version)


class SessionCache:
    """At most ``capacity`` entries, least recently used evicted first.

    ``generation`` counts removals and invalidations; a reader that loaded a state from the
    database caches it only if none happened meanwhile (see ``put_loaded``), so a session
    deleted, expired or changed by another process while it was being read is not brought
    back into the cache as it was.

    A disabled cache holds nothing and accepts nothing: it is what a repository uses while it
    cannot learn of other processes' writes (its change watcher is down).

    A watcher runs in a thread of its own and ``post``s what it learns; the cache applies the
    news in its own thread before it answers any read, so a change the watcher has seen is
    never served stale, however busy the event loop is. Everything else runs in the event
    loop's thread (``len`` and ``enabled`` may be read from any: metric callbacks do).
    """

    def __init__(self, capacity: int, *, enabled: bool = True) -> None:
        self.capacity = capacity
        self.generation = 0
        self.evictions = 0
        self.enabled = enabled
        self._entries: OrderedDict[str, StoredSession] = OrderedDict()
        self._held: dict[str, _Held] = {}
        """Sessions this process is writing, and what was announced of them meanwhile."""
        self._posted: deque[News] = deque()
        """News from a watcher's thread not applied yet (a deque's appends and pops are
        atomic, so the two threads need no lock)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def post(self, news: Iterable[News]) -> None:
        """From any thread: news to apply before the cache next answers a read."""
        self._posted.extend(news)

    def apply_posted(self) -> None:
        """Apply the news posted so far, in order."""
        posted = self._posted
        while posted:
            news = posted.popleft()
            if news is Switch.ON or news is Switch.OFF:
                self.enable(news is Switch.ON)
            elif news is Switch.CLEAR:
                self.clear()
            else:
                assert isinstance(news, tuple)
                self.invalidate(*news)

    def get(self, session_id: str) -> StoredSession | None:
        """The entry, marked most recently used; None if not cached."""
        if self._posted:
            self.apply_posted()
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def peek(self, session_id: str) -> StoredSession | None:
        """The entry without changing the LRU order."""
        if self._posted:
            self.apply_posted()
        return self._entries.get(session_id)

    def put(self, session_id: str, entry: StoredSession) -> None:
        """Insert or replace an entry as most recently used, evicting beyond capacity."""
        if not self.enabled:
            return
        entries = self._entries
        entries[session_id] = entry
        entries.move_to_end(session_id)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
            self.evictions += 1

    def put_loaded(self, session_id: str, entry: StoredSession, generation: int) -> None:
        """Cache a state read from the database at ``generation``, unless a removal happened
        since or the cache already holds a newer version, or as much of the same version."""
        if generation != self.generation:
            return
        current = self._entries.get(session_id)
        if current is not None and (
            current.version > entry.version
            or (
                current.version == entry.version
                and (current.complete or not entry.complete)
                and len(current.turns) >= len(entry.turns)
            )
        ):
            return
        self.put(session_id, entry)

    def discard(self, session_id: str) -> None:
        """Forget a session (deleted, expired, or of unknown state after a failed write)."""
        self.generation += 1
        self._entries.pop(session_id, None)

    def invalidate(self, session_id: str, version: int | None) -> None:
        """A process (maybe this one) committed ``version`` of the session (None: deleted
        it): an older cached copy is dropped. While this process reads or writes the session
        (``hold``), the news waits for ``release``: a load may have read the session before
        that write, and the announcement of our own write may overtake the write's reply."""
        held = self._held.get(session_id)
        if held is not None:
            held.announce(version)
            return
        entry = self._entries.get(session_id)
        if entry is not None and (version is None or entry.version < version):
            del self._entries[session_id]

    def hold(self, session_id: str) -> None:
        """This process starts reading or writing the session (see ``invalidate``)."""
        held = self._held.get(session_id)
        if held is None:
            self._held[session_id] = _Held()
        else:
            held.writes += 1

    @contextmanager
    def holding(self, session_id: str) -> Iterator[None]:
        """``hold`` ... ``release`` around a block."""
        self.hold(session_id)
        try:
            yield
        finally:
            self.release(session_id)

    def release(self, session_id: str) -> None:
        """A read or write started with ``hold`` ended and its result is in the cache: apply
        what was announced meanwhile."""
        held = self._held[session_id]
        held.writes -= 1
        if held.writes:
            return
        del self._held[session_id]
        if held.announced:
            self.invalidate(session_id, held.version)

    def clear(self) -> None:
        """Forget everything."""
        self.generation += 1
        self._entries.clear()

    def enable(self, enabled: bool) -> None:
        """Start or stop caching; either way, forget everything cached so far."""
        self.clear()
        self.enabled = enabled
