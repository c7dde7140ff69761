"""``SessionRepository``: the public API, an LRU cache in front of the SQL in ``store.py``.

A call goes: check the input (``validation``), try the cache (``cache``), else run one
transaction (``store.SqlStore``) through ``lifecycle.Calls`` (admission, retries, draining at
``stop()``), then bring the cache in line with what was committed. ``coherence`` drops cached
copies of sessions other processes wrote.

Consistency, in short:

- Writes are always correct: the database, not the cache, assigns turn order, so concurrent
  writers in any number of processes never lose, duplicate or split an exchange. Every append
  carries an idempotency key, so one sent again after a lost connection is stored once.
- With the default ``cache_coherence="bounded"``, another worker's write or delete is seen by
  this repository's next ``get`` within about 50 ms; ``"strict"`` checks every hit; ``"local"``
  trusts the cache until this process writes the session, refreshes it or evicts it.
- For the session fields, ``update`` is last-writer-wins unless ``if_unchanged=True``.
- Sliding expiry: every read keeps a session alive, but to avoid a database write per read the
  stored ``last_accessed``/``expires_at`` are refreshed only when ``last_accessed`` is more than
  a tenth of the TTL old. ``access_count`` counts cache hits too: they are added with the next
  write or refresh.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from .cache import CacheEntry, SessionCache
from .coherence import PostgresWatcher, SqliteWatcher, Watcher
from .config import StoreConfig
from .engine import check_database, create_engine, prepare_engine, release_engine
from .errors import InvalidTurn, NotRunning, StaleStateError
from .expiry import run_periodically
from .lifecycle import Calls
from .migrate import check_schema, upgrade
from .models import ConversationState, ConversationTurn, carry_context, make_turn
from .store import SessionFields, SqlStore, Written
from .urls import hide_password
from .validation import (
    Limits,
    check_idempotency_key,
    check_language,
    check_optional_text,
    check_session_id,
    check_text,
    check_turn,
    copy_results,
    copy_slots,
)

__all__ = ["SessionRepository"]

T = TypeVar("T")

Clock = Callable[[], float]
"""Returns the current time as epoch seconds, like ``time.time`` (the default)."""


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _new_key() -> str:
    """The idempotency key of an append whose caller gave none."""
    return secrets.token_urlsafe(12)


class SessionRepository:
    """Conversation sessions in SQL with an in-process LRU cache.

    Create it with a ``StoreConfig``, a database URL, or a config and an existing
    ``AsyncEngine`` (which the caller keeps owning), then ``async with repo:`` or
    ``await repo.start()`` ... ``await repo.stop()``.

    ``clock`` replaces ``time.time`` as the source of "now" (tests move it instead of sleeping).
    """

    def __init__(
        self,
        config: StoreConfig | str | None = None,
        *,
        engine: AsyncEngine | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(config, str):
            config = StoreConfig(database_url=config)
        self.config: StoreConfig = config if config is not None else StoreConfig()
        check_database(self.config, engine)
        self._limits = Limits(self.config.max_text_chars, self.config.max_results_bytes)
        self._engine = engine
        self._owns_engine = engine is None
        self._clock: Clock = clock or time.time
        self._ttl = float(self.config.session_ttl)
        self._refresh_after = self._ttl / 10
        self._strict = self.config.cache_coherence == "strict"
        self._cache = SessionCache(self.config.max_sessions)
        self._calls = Calls(float(self.config.reconnect_timeout))
        self._store: SqlStore | None = None
        self._watcher: Watcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._created = 0
        self._expired = 0
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        url = self._engine.url if self._engine is not None else self.config.database_url
        return f"SessionRepository({hide_password(url)!r}, {self._calls.phase})"

    async def __aenter__(self) -> SessionRepository:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def engine(self) -> AsyncEngine:
        """The engine in use (created by ``start()`` unless one was passed in)."""
        if self._engine is None:
            raise NotRunning("the repository has no engine until start()")
        return self._engine

    async def start(self) -> None:
        """Open the engine, check (or with ``auto_migrate``, upgrade) the schema, start
        following other processes' writes (``cache_coherence="bounded"``) and start the expiry
        task. Starting a running repository does nothing.

        Raises:
            SchemaNotReady: the database lacks the newest migration and ``auto_migrate`` is off.
            StoreError: the database cannot be reached.
            NotRunning: the repository was stopped; create a new one instead.
        """
        if self._calls.phase == "running":
            return
        if self._calls.phase != "new":
            raise NotRunning(
                "a stopped SessionRepository cannot be started again; create a new one"
            )
        engine = prepare_engine(self._engine or create_engine(self.config))
        try:
            if self.config.auto_migrate:
                await upgrade(engine)
            else:
                await check_schema(engine)
            store = SqlStore(engine, owns_engine=self._owns_engine, fast_path=self.config.fast_path)
            self._watcher = self._make_watcher(engine)
            if self._watcher is not None:
                await self._watcher.start()
        except BaseException:
            await release_engine(engine, owned=self._owns_engine)
            raise
        self._engine, self._store = engine, store
        self._calls.phase = "running"
        if self.config.cleanup_interval > 0:
            self._sweeper = asyncio.create_task(
                run_periodically(self.config.cleanup_interval, self.sweep_expired),
                name="convostore-expiry-sweep",
            )

    def _make_watcher(self, engine: AsyncEngine) -> Watcher | None:
        """What follows other processes' writes, if the coherence mode needs one."""
        if self.config.cache_coherence != "bounded":
            return None
        url = engine.url
        if url.get_backend_name() == "postgresql":
            listen = make_url(self.config.listen_url) if self.config.listen_url else url
            return PostgresWatcher(self._cache, listen)
        if url.database in (None, "", ":memory:"):
            return None  # an in-memory database has no other process
        return SqliteWatcher(self._cache, url.database)

    async def stop(self) -> None:
        """Stop the expiry task, refuse new calls, wait for every call in flight to end, and
        close what the repository opened (an engine passed in stays open, with convostore's
        connection listener removed). Stopping twice does nothing."""
        if self._calls.phase == "new":
            self._calls.phase = "stopped"
            return
        if self._calls.phase != "running":
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        try:
            if self._sweeper is not None:
                self._sweeper.cancel()
                await asyncio.wait([self._sweeper])
                self._sweeper = None
            await self._calls.drain()
            if self._watcher is not None:
                await self._watcher.stop()
            self._cache.clear()
            if self._engine is not None:
                await release_engine(self._engine, owned=self._owns_engine)
        finally:
            self._calls.phase = "stopped"
            self._stopped.set()

    @staticmethod
    def generate_session_id() -> str:
        """A new unguessable, URL-safe session id (192 random bits)."""
        return secrets.token_urlsafe(24)

    async def get(self, session_id: str) -> ConversationState | None:
        """The session's state, or None if it is unknown or expired.

        Served from the cache without SQL when possible. The state is the caller's to change;
        changes reach the store only through ``update``.

        Raises:
            InvalidSessionId: before any SQL.
            StoreError: the database failed (``StoreUnavailable``: it stayed unreachable).
        """
        now = self._clock()
        # Only checked ids are ever cached, so a hit needs no check: the hit path is the one
        # every request takes, and it runs no SQL.
        entry = self._cache.get(session_id) if type(session_id) is str else None
        if (
            entry is not None
            and now < entry.expires_at
            and now - entry.last_accessed <= self._refresh_after
            and not self._strict
        ):
            entry.unflushed_hits += 1
            self._hits += 1
            return entry.fork(session_id)
        sid = check_session_id(session_id)
        store = self._enter()
        try:
            if entry is not None:
                if now < entry.expires_at:
                    return await self._calls.run(
                        "refreshing a session", lambda: self._refresh(store, sid, entry, now)
                    )
                self._cache.discard(sid)
            self._misses += 1
            return await self._calls.run("loading a session", lambda: self._load(store, sid, now))
        finally:
            self._calls.leave()

    async def get_or_create(self, session_id: str | None = None) -> tuple[str, ConversationState]:
        """The session's id and state; a session that is unknown or expired is created under
        that id, and ``None`` creates one under a fresh id from ``generate_session_id()``.

        Raises:
            InvalidSessionId: before any SQL.
            StoreError: the database failed.
        """
        sid = self.generate_session_id() if session_id is None else check_session_id(session_id)
        store = self._enter()
        try:
            if session_id is not None:
                state = await self.get(sid)
                if state is not None:
                    return sid, state
            now = self._clock()
            state = await self._calls.run(
                "creating a session",
                lambda: self._holding(sid, self._create(store, sid, now)),
                shield=True,
            )
            return sid, state
        finally:
            self._calls.leave()

    async def add_turn(
        self,
        session_id: str,
        question: str,
        answer: str,
        *,
        resolved_question: str | None = None,
        template_id: str | None = None,
        slots: Mapping[str, str] | None = None,
        results: Sequence[Mapping[str, Any]] | None = None,
        idempotency_key: str | None = None,
    ) -> ConversationState:
        """Append one exchange (a user turn with ``question`` and the other fields, then an
        assistant turn with ``answer``) and return the session's new state.

        Creates the session if it is unknown or expired. The append never reads or rewrites
        the history: both turns and the session row are written in one transaction, so they are
        stored together or not at all. The user turn's slots merge into ``current_slots`` and
        its template becomes ``current_template_id``.

        ``idempotency_key`` (session-id rules): a second call with the same key on the same
        session stores nothing and returns the session's state. Without one, convostore makes
        its own, so its own retries after a lost connection never store an exchange twice.

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL (the message names the field).
            StoreError: the database failed; nothing of the exchange was stored.
            StoreUnavailable: the database stayed unreachable for ``reconnect_timeout``.
        """
        sid = check_session_id(session_id)
        key = _new_key() if idempotency_key is None else check_idempotency_key(idempotency_key)
        limits = self._limits
        template = check_optional_text("template_id", template_id, limits)
        user = make_turn(
            "user",
            check_text("question", question, limits),
            check_optional_text("resolved_question", resolved_question, limits),
            template,
            copy_slots("slots", slots, limits),
            copy_results("results", results, limits),
            None,
        )
        answer = check_text("answer", answer, limits)
        assistant = make_turn("assistant", answer, None, None, {}, [], None)
        exchange = (user, assistant)
        template = template or None
        store = self._enter()
        try:
            state = await self._calls.run(
                "adding a turn",
                lambda: self._append(store, sid, exchange, template, key, create=False),
            )
            if state is None:
                state = await self._calls.run(
                    "adding a turn",
                    lambda: self._append(store, sid, exchange, template, key, create=True),
                    shield=True,
                )
        finally:
            self._calls.leave()
        assert state is not None
        return state

    async def add_turn_to_session(
        self,
        session_id: str,
        question: str,
        answer: str,
        resolved_question: str | None = None,
        template_id: str | None = None,
        slots: Mapping[str, str] | None = None,
        results: Sequence[Mapping[str, Any]] | None = None,
    ) -> ConversationState:
        """``add_turn`` with the original SessionManager's positional argument order."""
        return await self.add_turn(
            session_id,
            question,
            answer,
            resolved_question=resolved_question,
            template_id=template_id,
            slots=slots,
            results=results,
        )

    async def update(
        self, session_id: str, state: ConversationState, *, if_unchanged: bool = False
    ) -> None:
        """Persist a state the caller changed: its session fields (current slots, template,
        language) and the turns added to it since the store handed it out, appended after
        whatever is stored now, in their order. Stored turns are never rewritten or deleted:
        removing or replacing a handed-out turn in ``state.turns`` (to keep a window, say)
        stores nothing, while every turn object the store did not hand out counts as new. An
        unknown or expired session is created with all the state's turns.

        The session fields are last-writer-wins, unless ``if_unchanged``: then the update is
        refused with ``StaleStateError`` if the stored session was written or deleted since
        the state was read (a state the store never handed out for this session expects no
        live session).

        On success the state's new turns are replaced by the stored ones (with ``created_at``).

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL.
            StaleStateError: ``if_unchanged`` and the session moved on; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        sid = check_session_id(session_id)
        if not isinstance(state, ConversationState):
            raise InvalidTurn(f"state must be a ConversationState, not {type(state).__name__}")
        read_here = state._session_id == sid
        handed = {id(turn) for turn in state._origin[: state._stored]} if read_here else set()
        all_turns = list(state.turns)
        new_at = [index for index, turn in enumerate(all_turns) if id(turn) not in handed]
        limits = self._limits
        for index in new_at:
            all_turns[index] = check_turn(f"turns[{index}]", all_turns[index], limits)
        fields = SessionFields(
            copy_slots("current_slots", state.current_slots, limits),
            check_optional_text("current_template_id", state.current_template_id, limits),
            check_language(state.language),
        )
        expected: int | None = None
        if if_unchanged:
            expected = state._version if read_here and state._version is not None else -1
        key = _new_key() if new_at else None
        store = self._enter()
        try:
            await self._calls.run(
                "updating a session",
                lambda: self._holding(
                    sid,
                    self._replace(store, sid, state, fields, all_turns, new_at, key, expected),
                ),
                shield=True,
            )
        finally:
            self._calls.leave()

    async def delete(self, session_id: str) -> bool:
        """Delete the session and its turns. Returns False if it was unknown or already
        expired (its rows are removed all the same).

        Raises:
            InvalidSessionId: before any SQL.
            StoreError: the database failed.
        """
        sid = check_session_id(session_id)
        store = self._enter()
        try:
            return await self._calls.run(
                "deleting a session", lambda: self._delete(store, sid), shield=True
            )
        finally:
            self._calls.leave()

    async def sweep_expired(self) -> int:
        """Delete every expired session now, in batches of ``sweep_batch_size``, one short
        transaction each. Returns how many sessions were deleted."""
        store = self._enter()
        try:
            return await self._calls.run(
                "sweeping expired sessions", lambda: self._sweep(store), shield=True
            )
        finally:
            self._calls.leave()

    async def get_stats(self) -> dict[str, int]:
        """Counters since start: ``sessions_created``, ``sessions_expired`` (removed by expiry,
        on read or by the sweep), ``sessions_evicted``, ``cache_hits``, ``cache_misses``, and
        ``cached_sessions`` (also under its old name ``active_sessions``)."""
        cached = len(self._cache)
        return {
            "sessions_created": self._created,
            "sessions_expired": self._expired,
            "sessions_evicted": self._cache.evictions,
            "cache_hits": self._hits,
            "cache_misses": self._misses,
            "cached_sessions": cached,
            "active_sessions": cached,
        }

    def _enter(self) -> SqlStore:
        """Admit a call (``NotRunning`` if the repository is not running); the caller must
        ``self._calls.leave()`` when it ends."""
        self._calls.enter()
        assert self._store is not None
        return self._store

    def _new_entry(self, version: int, now: float) -> CacheEntry:
        """The entry of a session this process just created: empty, written at ``now``."""
        return CacheEntry([], {}, None, "nl", version, now, now + self._ttl)

    async def _refresh(
        self, store: SqlStore, sid: str, entry: CacheEntry, now: float
    ) -> ConversationState | None:
        """A cached session whose stored expiry is due for a refresh, or (strict coherence)
        whose cached copy must be checked: served from the cache if the stored version is
        the cached one, else reloaded."""
        if now - entry.last_accessed > self._refresh_after:
            version = await store.touch(sid, _utc(now), self._ttl, entry.unflushed_hits + 1)
            refreshed = True
        else:
            stored = await store.version_of(sid)
            live = stored is not None and stored[1].timestamp() > now
            version = stored[0] if live and stored is not None else None
            refreshed = False
        if version is None or version != entry.version:
            self._cache.discard(sid)
            return await self._load(store, sid, now)
        if refreshed:
            entry.last_accessed, entry.expires_at = now, now + self._ttl
            entry.unflushed_hits = 0
        else:
            entry.unflushed_hits += 1
        self._hits += 1
        return entry.fork(sid)

    async def _load(self, store: SqlStore, sid: str, now: float) -> ConversationState | None:
        return await self._holding(sid, self._load_held(store, sid, now))

    async def _load_held(self, store: SqlStore, sid: str, now: float) -> ConversationState | None:
        generation = self._cache.generation
        loaded = await store.load(sid)
        if loaded is None:
            return None
        now_utc = _utc(now)
        if loaded.expires_at <= now_utc:
            if await store.drop_expired(sid, now_utc):
                self._expired += 1
            self._cache.discard(sid)
            return None
        entry = CacheEntry(
            loaded.turns,
            loaded.current_slots,
            loaded.current_template_id,
            loaded.language,
            loaded.version,
            loaded.last_accessed.timestamp(),
            loaded.expires_at.timestamp(),
        )
        if now - entry.last_accessed > self._refresh_after:
            if await store.touch(sid, now_utc, self._ttl, 1) is None:
                self._cache.discard(sid)
                return None
            entry.last_accessed, entry.expires_at = now, now + self._ttl
        else:
            entry.unflushed_hits = 1
        self._cache.put_loaded(sid, entry, generation)
        return entry.fork(sid)

    async def _holding(self, sid: str, operation: Awaitable[T]) -> T:
        """Run a read or write of ``sid`` with change announcements for it held back until
        the cache has the operation's result (see ``SessionCache.hold``)."""
        self._cache.hold(sid)
        try:
            return await operation
        finally:
            self._cache.release(sid)

    async def _create(self, store: SqlStore, sid: str, now: float) -> ConversationState:
        generation = self._cache.generation
        created, expired = await store.create(sid, _utc(now), self._ttl)
        self._expired += expired
        if not created:
            state = await self._load(store, sid, now)
            if state is not None:
                return state
        self._created += created
        entry = self._new_entry(0, now)
        if created:
            self._cache.put_loaded(sid, entry, generation)
        return entry.fork(sid)

    def _count_write(self, written: Written) -> None:
        self._created += written.created
        self._expired += written.expired_removed

    async def _append(
        self,
        store: SqlStore,
        sid: str,
        exchange: tuple[ConversationTurn, ConversationTurn],
        template_id: str | None,
        key: str,
        *,
        create: bool,
    ) -> ConversationState | None:
        now = self._clock()
        generation = self._cache.generation
        before = self._cache.peek(sid)
        hits = before.unflushed_hits if before is not None else 0
        self._cache.hold(sid)
        try:
            written = await store.append(
                sid,
                exchange,
                merge_slots=exchange[0].slots,
                template_id=template_id,
                now=_utc(now),
                ttl=self._ttl,
                hits=hits,
                key=key,
                create=create,
            )
            if written is None:
                return None
            if written.duplicate:
                return await self._reloaded(store, sid, now, exchange)
            self._count_write(written)
            entry = self._cache.get(sid)
            if written.created:
                entry = self._new_entry(written.version, now)
                entry.extend(written.turns)
                self._cache.put_loaded(sid, entry, generation)
                return entry.fork(sid)
            if entry is not None and entry.version == written.version - 1:
                entry.extend(written.turns)
                entry.committed(written.version, now, self._ttl, hits)
                return entry.fork(sid)
            return await self._reloaded(store, sid, now, written.turns)
        except BaseException:
            self._cache.discard(sid)
            raise
        finally:
            self._cache.release(sid)

    async def _reloaded(
        self, store: SqlStore, sid: str, now: float, written: Sequence[ConversationTurn]
    ) -> ConversationState:
        """The state after a write that the cache could not follow. If the session is gone
        already (another worker deleted it, or it expired, between the write and this read),
        the state holds just the turns written, with the context they carry."""
        reloaded = await self._load(store, sid, now)
        if reloaded is not None:
            return reloaded
        state = ConversationState()
        for turn in written:
            state.current_template_id = carry_context(
                turn, state.current_slots, state.current_template_id
            )
        state.turns = list(written)
        return state

    async def _replace(
        self,
        store: SqlStore,
        sid: str,
        state: ConversationState,
        fields: SessionFields,
        all_turns: list[ConversationTurn],
        new_at: list[int],
        key: str | None,
        expected: int | None,
    ) -> None:
        now = self._clock()
        generation = self._cache.generation
        before = self._cache.peek(sid)
        hits = before.unflushed_hits if before is not None else 0
        try:
            written = await store.replace(
                sid,
                fields,
                [all_turns[index] for index in new_at],
                all_turns,
                now=_utc(now),
                ttl=self._ttl,
                hits=hits,
                key=key,
                expected=expected,
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
        entry = self._cache.peek(sid)
        if written.created:
            entry = self._new_entry(written.version, now)
            entry.turns = list(written.turns)
        elif entry is not None and entry.version == written.version - 1:
            entry.turns = entry.turns + written.turns
            entry.committed(written.version, now, self._ttl, hits)
        else:
            self._cache.discard(sid)
            return
        entry.current_slots = dict(fields.current_slots)
        entry.current_template_id = fields.current_template_id
        entry.language = fields.language
        if written.created:
            self._cache.put_loaded(sid, entry, generation)

    async def _delete(self, store: SqlStore, sid: str) -> bool:
        try:
            return await store.delete(sid, _utc(self._clock()))
        finally:
            self._cache.discard(sid)

    async def _sweep(self, store: SqlStore) -> int:
        now = _utc(self._clock())
        batch_size = self.config.sweep_batch_size
        total = 0
        while True:
            deleted = await store.sweep_batch(now, batch_size)
            for sid in deleted:
                self._cache.discard(sid)
            total += len(deleted)
            self._expired += len(deleted)
            if len(deleted) < batch_size:
                return total
