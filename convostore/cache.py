"""The in-process LRU cache of session states: O(1) hits, misses and evictions.

The cache holds the states as last committed; callers get copies (see ``fork_state``). It is
changed only after a commit, so a failed write never leaves an uncommitted state behind.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .models import ConversationState, make_state

__all__ = ["CacheEntry", "SessionCache", "fork_state"]


@dataclass(slots=True)
class CacheEntry:
    """A committed state with what the database said about it when it was read or written."""

    state: ConversationState
    version: int
    last_accessed: float
    """Epoch seconds of the stored ``last_accessed``; reads refresh it only when it is stale."""
    expires_at: float
    """Epoch seconds of the stored ``expires_at``."""
    unflushed_hits: int = 0
    """Cache hits not yet added to the stored ``access_count``; the next write adds them."""


def fork_state(state: ConversationState, session_id: str) -> ConversationState:
    """A copy of ``state`` that its caller may change freely: fresh ``turns`` list and
    ``current_slots`` dict, shared (frozen) turns, no validation. Cached turn lists only grow,
    so the fork can point at the cached list to remember which turns it was handed."""
    fields = state.__dict__
    turns = fields["turns"]
    return make_state(
        list(turns),
        dict(fields["current_slots"]),
        fields["current_template_id"],
        fields["language"],
        session_id,
        turns,
        len(turns),
    )


class SessionCache:
    """At most ``capacity`` entries, least recently used evicted first.

    ``generation`` counts removals; a reader that loaded a state from the database caches it
    only if no removal happened meanwhile (see ``put_loaded``), so a session deleted or expired
    while it was being read is not brought back into the cache.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.generation = 0
        self.evictions = 0
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def get(self, session_id: str) -> CacheEntry | None:
        """The entry, marked most recently used; None if not cached."""
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def peek(self, session_id: str) -> CacheEntry | None:
        """The entry without changing the LRU order."""
        return self._entries.get(session_id)

    def put(self, session_id: str, entry: CacheEntry) -> None:
        """Insert or replace an entry as most recently used, evicting beyond capacity."""
        entries = self._entries
        entries[session_id] = entry
        entries.move_to_end(session_id)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
            self.evictions += 1

    def put_loaded(self, session_id: str, entry: CacheEntry, generation: int) -> None:
        """Cache a state read from the database at ``generation``, unless a removal happened
        since or the cache already holds a newer version."""
        if generation != self.generation:
            return
        current = self._entries.get(session_id)
        if current is not None and current.version >= entry.version:
            return
        self.put(session_id, entry)

    def discard(self, session_id: str) -> None:
        """Forget a session (deleted, expired, or of unknown state after a failed write)."""
        self.generation += 1
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self.generation += 1
        self._entries.clear()
