"""The in-process LRU cache of session states: O(1) hits, misses and evictions.

The cache holds sessions as last committed; callers get copies (``CacheEntry.fork``). It is
changed only after a commit, so a failed write never leaves an uncommitted state behind.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from .models import ConversationState, ConversationTurn, carry_context, make_state, name_ordered

__all__ = ["CacheEntry", "News", "SessionCache", "Switch"]


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


@dataclass(slots=True)
class CacheEntry:
    """A session's content as last committed, and what the database said about it.

    The entry holds plain fields, not a ``ConversationState``: a hit builds the caller's state
    straight from them, with the fewest objects to read and allocate.
    """

    turns: list[ConversationTurn]
    """Only ever appended to, so a state forked from it can point at it to remember which
    turns it was handed (see ``ConversationState._origin``)."""
    current_slots: dict[str, str]
    current_template_id: str | None
    language: str | None
    version: int
    last_accessed: float
    """Epoch seconds of the stored ``last_accessed``; reads refresh it only when it is stale."""
    expires_at: float
    """Epoch seconds of the stored ``expires_at``."""
    unflushed_hits: int = 0
    """Cache hits not yet added to the stored ``access_count``; the next write adds them."""
    user_id: str | None = None
    """The session's owner (None: created without one)."""
    complete: bool = True
    """Whether ``turns`` holds the whole history; False after a windowed read, when it holds
    the newest turns only (and whatever was appended since)."""

    def covers(self, last_turns: int | None) -> bool:
        """Whether the entry holds the turns a read of the ``last_turns`` newest (None: all)
        returns."""
        return self.complete or (last_turns is not None and len(self.turns) >= last_turns)

    def fork(self, session_id: str, last_turns: int | None = None) -> ConversationState:
        """A state its caller may change freely: fresh ``turns`` list and ``current_slots``
        dict, shared (frozen) turns, no validation. With ``last_turns``, only the newest of
        them (the entry must ``cover`` it)."""
        turns = self.turns if last_turns is None else self.turns[-last_turns:]
        return make_state(
            list(turns),
            dict(self.current_slots),
            self.current_template_id,
            self.language,
            session_id,
            turns,
            len(turns),
            self.version,
        )

    def extend(self, new_turns: Iterable[ConversationTurn]) -> None:
        """Append committed turns, carrying their slots and template into the context, whose
        slots stay in name order, as a cold read returns them."""
        template = self.current_template_id
        slots = self.current_slots
        known = len(slots)
        for turn in new_turns:
            self.turns.append(turn)
            template = carry_context(turn, slots, template)
        self.current_template_id = template
        if len(slots) != known:
            self.current_slots = name_ordered(slots)

    def committed(self, version: int, now: float, ttl: float, flushed_hits: int) -> None:
        """Record a write of this process: the new version, the refreshed expiry, and the hits
        the write added to ``access_count``."""
        self.version = version
        self.last_accessed, self.expires_at = now, now + ttl
        self.unflushed_hits = max(0, self.unflushed_hits - flushed_hits)


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
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
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

    def get(self, session_id: str) -> CacheEntry | None:
        """The entry, marked most recently used; None if not cached."""
        if self._posted:
            self.apply_posted()
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def peek(self, session_id: str) -> CacheEntry | None:
        """The entry without changing the LRU order."""
        if self._posted:
            self.apply_posted()
        return self._entries.get(session_id)

    def put(self, session_id: str, entry: CacheEntry) -> None:
        """Insert or replace an entry as most recently used, evicting beyond capacity."""
        if not self.enabled:
            return
        entries = self._entries
        entries[session_id] = entry
        entries.move_to_end(session_id)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
            self.evictions += 1

    def put_loaded(self, session_id: str, entry: CacheEntry, generation: int) -> None:
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
