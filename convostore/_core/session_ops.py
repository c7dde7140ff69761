"""Each repository operation as one database operation (``store.SqlStore``) followed by the
cache update that keeps the cache equal to what was committed.

``repository.py`` checks input, admits the call and picks the operation; this module knows how
a load, a refresh, a create, an append, an update, a delete and a sweep change the cache. A
failed write discards the session's entry, so nothing uncommitted is ever served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from time import perf_counter
from typing import Any

from convostore._core.cache import SessionCache
from convostore._core.expiry import DeferredRefreshes
from convostore._core.store import SqlStore, WriteOutcome
from convostore.errors import NotSessionOwner, StaleStateError
from convostore.models import (
    ConversationState,
    ConversationTurn,
    SessionFields,
    StoredSession,
    carry_context,
    name_ordered,
)

__all__ = ["SessionOperations", "Stats", "TimingHook", "owned", "utc"]

logger = logging.getLogger("convostore")

TimingHook = Callable[[str, float], None]
"""Told what took how long: ``"append"`` (an ``add_turn``), ``"load"`` (a session read from
the database), ``"sweep.sessions"`` or ``"sweep.transcripts"`` (one sweep batch), and the
seconds it took (see ``SessionRepository.add_timing_hook``)."""


def utc(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, timezone.utc)


@dataclass(slots=True)
class Stats:
    """Counters since start (see ``SessionRepository.get_stats``)."""

    created: int = 0
    expired: int = 0
    hits: int = 0
    misses: int = 0
    transcripts_deleted: int = 0
    hooks: list[TimingHook] | None = None
    """Who is told each timing; None, the default, costs a timed path one attribute check
    and the cache-hit path nothing."""

    def timed(self, what: str, started: float) -> None:
        """Tell every hook that ``what``, begun at ``perf_counter()`` ``started``, ended now.
        A hook that raises is logged and does not fail the call it timed."""
        seconds = perf_counter() - started
        for hook in self.hooks or ():
            try:
                hook(what, seconds)
            except Exception:
                logger.exception("convostore: a timing hook failed on %s", what)


class SessionOperations:
    """A ``SqlStore`` and the ``SessionCache`` in front of it, for one repository."""

    def __init__(
        self,
        store: SqlStore,
        cache: SessionCache,
        stats: Stats,
        *,
        ttl: float,
        clock: Callable[[], float],
        behind: DeferredRefreshes | None = None,
        trusted: bool = False,
    ) -> None:
        self.store = store
        """The SQL side (tests and the benchmark reach the statements through it)."""
        self._cache = cache
        self.stats = stats
        self._ttl = ttl
        self._refresh_after = ttl / 10
        self._clock = clock
        self.behind = behind
        """Where reads leave their expiry refreshes (None: reads write them themselves)."""
        self._trusted = trusted
        """Whether cached copies are kept current by a watcher (``"bounded"`` coherence), so
        a refresh need not check the stored version."""

    def _new_entry(self, version: int, now: float, owner: str | None) -> StoredSession:
        """The entry of a session this process just created: empty, written at ``now``."""
        return StoredSession(
            turns=[],
            language=self.store.default_language,
            version=version,
            user_id=owner,
            last_accessed=now,
            expires_at=now + self._ttl,
        )

    async def refresh(
        self,
        sid: str,
        entry: StoredSession,
        now: float,
        owner: str | None,
        window: int | None = None,
    ) -> ConversationState | None:
        """A cached session whose stored expiry is due for a refresh, or (strict coherence)
        whose cached copy must be checked: served from the cache if the stored version is
        the cached one, else reloaded. ``owner`` and ``window`` as for ``load``."""
        due = now - entry.last_accessed > self._refresh_after
        behind = self.behind
        if due and behind is None:
            version = await self.store.slide_expiry(
                sid, utc(now), self._ttl, entry.unflushed_hits + 1
            )
        elif due and self._trusted:
            version = entry.version
        else:
            stored = await self.store.version_of(sid)
            live = stored is not None and stored[1].timestamp() > now
            version = stored[0] if live and stored is not None else None
        if version is None or version != entry.version:
            self._cache.discard(sid)
            return await self.load(sid, now, owner, window)
        if due:
            if behind is not None:
                behind.note(sid, utc(now), entry.unflushed_hits + 1)
            entry.last_accessed, entry.expires_at = now, now + self._ttl
            entry.unflushed_hits = 0
        else:
            entry.unflushed_hits += 1
        self.stats.hits += 1
        return owned(sid, entry, owner).fork(sid, window)

    async def load(
        self, sid: str, now: float, owner: str | None, window: int | None = None
    ) -> ConversationState | None:
        """Read the session (None if unknown or expired, which it then removes), or only its
        ``window`` newest turns, refresh its expiry if due, and cache it unless it changed
        meanwhile. With an ``owner``, a session of another owner raises ``NotSessionOwner``
        (it is cached all the same)."""
        with self._cache.holding(sid):
            generation = self._cache.generation
            hooks = self.stats.hooks
            started = perf_counter() if hooks is not None else 0.0
            entry = await self.store.load(sid, window)
            if hooks is not None:
                self.stats.timed("load", started)
            if entry is None:
                return None
            now_utc = utc(now)
            if entry.expires_at <= now_utc.timestamp():
                if await self.store.drop_expired(sid, now_utc):
                    self.stats.expired += 1
                self._cache.discard(sid)
                return None
            if now - entry.last_accessed > self._refresh_after:
                if self.behind is not None:
                    self.behind.note(sid, now_utc, 1)
                elif await self.store.slide_expiry(sid, now_utc, self._ttl, 1) is None:
                    self._cache.discard(sid)
                    return None
                entry.last_accessed, entry.expires_at = now, now + self._ttl
            else:
                entry.unflushed_hits = 1
            self._cache.put_loaded(sid, entry, generation)
            return owned(sid, entry, owner).fork(sid, window)

    async def create(self, sid: str, now: float, owner: str | None) -> ConversationState:
        """Create the session (owned by ``owner``) unless a live one exists; its state either
        way, or ``NotSessionOwner`` if the live one has another owner."""
        with self._cache.holding(sid):
            generation = self._cache.generation
            created, expired = await self.store.create(sid, utc(now), self._ttl, owner)
            self.stats.expired += expired
            if not created:
                state = await self.load(sid, now, owner)
                if state is not None:
                    return state
            self.stats.created += created
            entry = self._new_entry(0, now, owner)
            if created:
                self._cache.put_loaded(sid, entry, generation)
            return entry.fork(sid)

    def _count_write(self, written: WriteOutcome) -> None:
        self.stats.created += written.created
        self.stats.expired += written.expired_removed

    async def append(
        self,
        sid: str,
        exchange: Sequence[ConversationTurn],
        template_id: str | None,
        key: str,
        *,
        create: bool,
        owner: str | None,
    ) -> ConversationState | None:
        now = self._clock()
        generation = self._cache.generation
        before = self._cache.peek(sid)
        hits = before.unflushed_hits if before is not None else 0
        self._cache.hold(sid)
        try:
            written = await self.store.append(
                sid,
                exchange,
                merge_slots=_slots_of(exchange),
                template_id=template_id,
                now=utc(now),
                ttl=self._ttl,
                hits=hits,
                key=key,
                create=create,
                uid=owner,
            )
            if written is None:
                return None
            if written.duplicate:
                return await self._reloaded(sid, now, exchange)
            self._count_write(written)
            entry = self._cache.get(sid)
            if written.created:
                entry = self._new_entry(written.version, now, owner)
                entry.extend(written.turns)
                entry.title = self.store.title_for(exchange)
                self._cache.put_loaded(sid, entry, generation)
                return entry.fork(sid)
            trimmed = written.trimmed
            if (
                entry is not None
                and entry.version == written.version - 1
                and (not trimmed or entry.complete)  # a windowed copy cannot follow the cap
            ):
                if trimmed:
                    entry.turns = entry.turns[trimmed:]
                entry.extend(written.turns)
                entry.committed(written.version, now, self._ttl, hits)
                if entry.title is None and self.store.auto_title:
                    entry.title = self.store.title_for(exchange)
                return entry.fork(sid)
            return await self._reloaded(sid, now, written.turns)
        except BaseException:
            self._cache.discard(sid)
            raise
        finally:
            self._cache.release(sid)

    async def _reloaded(
        self, sid: str, now: float, written: Sequence[ConversationTurn]
    ) -> ConversationState:
        """The state after a write that the cache could not follow. If the session is gone
        already (another worker deleted it, or it expired, between the write and this read),
        the state holds just the turns written, with the context they carry, handed out for
        ``sid`` like any other."""
        reloaded = await self.load(sid, now, None)
        if reloaded is not None:
            return reloaded
        state = ConversationState()
        for turn in written:
            state.current_template_id = carry_context(
                turn, state.current_slots, state.current_template_id
            )
        state.current_slots = name_ordered(state.current_slots)
        state.turns = list(written)
        state._session_id, state._origin, state._stored = sid, tuple(written), len(written)
        return state

    async def update(
        self,
        sid: str,
        state: ConversationState,
        fields: SessionFields,
        all_turns: list[ConversationTurn],
        new_at: list[int],
        key: str | None,
        expected: int | None,
        owner: str | None = None,
    ) -> None:
        """``update``: write the session fields and the new turns (to a session ``owner`` may
        write), then bring ``state`` and the cache in line with what was stored."""
        with self._cache.holding(sid):
            now = self._clock()
            generation = self._cache.generation
            before = self._cache.peek(sid)
            hits = before.unflushed_hits if before is not None else 0
            try:
                written = await self.store.update(
                    sid,
                    fields,
                    [all_turns[index] for index in new_at],
                    all_turns,
                    now=utc(now),
                    ttl=self._ttl,
                    hits=hits,
                    key=key,
                    expected=expected,
                    uid=owner,
                )
            except BaseException:
                self._cache.discard(sid)
                raise
            if written.duplicate:
                # Sent again after a lost connection, and the first attempt had been stored.
                self._cache.discard(sid)
                return
            if written.stale:
                self._cache.discard(sid)
                raise StaleStateError(
                    f"session {sid!r} was written or deleted after this state was read; "
                    "get it again, apply the change, and update again"
                )
            self._count_write(written)
            if written.created:
                all_turns = written.turns
            else:
                for index, turn in zip(new_at, written.turns, strict=True):
                    all_turns[index] = turn
            state.turns[:] = all_turns
            state._session_id = sid
            state._origin = tuple(all_turns)
            state._stored = len(all_turns)
            state._version = written.version
            if state.current_slots != fields.current_slots:  # redacted as stored
                state.current_slots = dict(fields.current_slots)
            entry = self._cache.peek(sid)
            if written.created:
                entry = self._new_entry(written.version, now, owner)
                entry.turns = list(written.turns)[written.trimmed :]
                entry.turn_count = len(written.turns)
            elif (
                entry is not None
                and entry.version == written.version - 1
                and (not written.trimmed or entry.complete)
            ):
                entry.turns = (entry.turns + written.turns)[written.trimmed :]
                entry.turn_count += len(written.turns)
                entry.committed(written.version, now, self._ttl, hits)
            else:
                self._cache.discard(sid)
                return
            for name, value in fields.state_values().items():
                setattr(entry, name, value)
            entry.current_slots = dict(fields.current_slots)
            if written.created:
                self._cache.put_loaded(sid, entry, generation)

    async def set_fields(self, sid: str, values: dict[str, Any], owner: str | None) -> bool:
        """Set one group of ``models.FIELD_WRITES`` of the live session (one ``owner`` may
        write); the cached copy follows if it was current, else it goes. Returns whether the
        session was live."""
        with self._cache.holding(sid):
            now = self._clock()
            before = self._cache.peek(sid)
            hits = before.unflushed_hits if before is not None else 0
            try:
                version = await self.store.set_fields(
                    sid, values, now=utc(now), ttl=self._ttl, hits=hits, uid=owner
                )
            except BaseException:
                self._cache.discard(sid)
                raise
            entry = self._cache.peek(sid)
            if version is None or entry is None or entry.version != version - 1:
                self._cache.discard(sid)
                return version is not None
            for name, value in values.items():
                setattr(entry, name, value)
            entry.committed(version, now, self._ttl, hits)
            return True

    async def rewind(
        self,
        sid: str,
        to_seq: int,
        last_seq: int,
        fields: SessionFields,
        expected: int,
        owner: str | None,
    ) -> bool:
        """``SqlStore.rewind`` of the session read at version ``expected``; the cached copy
        goes either way (the next read loads what the rewind left). Returns whether it was
        written: False if the session moved on or ended meanwhile."""
        with self._cache.holding(sid):
            before = self._cache.peek(sid)
            hits = before.unflushed_hits if before is not None else 0
            try:
                version = await self.store.rewind(
                    sid,
                    to_seq,
                    last_seq,
                    fields,
                    expected=expected,
                    now=utc(self._clock()),
                    ttl=self._ttl,
                    hits=hits,
                    uid=owner,
                )
            finally:
                self._cache.discard(sid)
            return version is not None

    async def fork(
        self,
        sid: str,
        fields: SessionFields,
        turns: Sequence[ConversationTurn],
        source: str,
        upto: int,
        key: str,
        owner: str | None,
    ) -> None:
        """``SqlStore.fork`` into the new session ``sid`` (cached on its first read)."""
        written = await self.store.fork(
            sid,
            fields,
            turns,
            source=source,
            upto=upto,
            now=utc(self._clock()),
            ttl=self._ttl,
            key=key,
            uid=owner,
        )
        self._count_write(written)

    async def add_feedback(
        self, sid: str, seq: int, score: int, comment: str | None, owner: str | None
    ) -> bool:
        """Feedback on an answer of the live session: nothing cached changes (a state holds
        no feedback)."""
        return await self.store.add_feedback(
            sid, seq, score, comment, now=utc(self._clock()), uid=owner
        )

    async def delete(self, sid: str, owner: str | None = None) -> bool:
        try:
            return await self.store.delete(sid, utc(self._clock()), owner)
        finally:
            self._cache.discard(sid)

    async def sweep(self, batch_size: int) -> int:
        """End every expired session, then delete the transcripts past retention, in batches
        of ``batch_size``. Returns how many sessions ended."""
        if self.behind is not None:
            await self.behind.flush()  # a session read just now must not go
        now = utc(self._clock())
        stats = self.stats
        total = 0
        while True:
            started = perf_counter()
            deleted = await self.store.sweep_batch(now, batch_size)
            if stats.hooks is not None:
                stats.timed("sweep.sessions", started)
            for sid in deleted:
                self._cache.discard(sid)
            total += len(deleted)
            stats.expired += len(deleted)
            if len(deleted) < batch_size:
                break
        while True:
            started = perf_counter()
            gone = await self.store.sweep_transcripts_batch(now, batch_size)
            if stats.hooks is not None:
                stats.timed("sweep.transcripts", started)
            stats.transcripts_deleted += gone
            if gone < batch_size:
                return total


def owned(sid: str, entry: StoredSession, owner: str | None) -> StoredSession:
    """``entry``, if a caller acting for ``owner`` (None: anyone) may use the session."""
    if owner is not None and entry.user_id != owner:
        raise NotSessionOwner(f"session {sid!r} belongs to another user")
    return entry


def _slots_of(new_turns: Sequence[ConversationTurn]) -> dict[str, str]:
    """The slots an append merges into the session's: its user turns', the later winning."""
    merged: dict[str, str] = {}
    for turn in new_turns:
        if turn.role == "user":
            merged.update(turn.slots)
    return merged
