"""``SessionRepository``: the public API, an LRU cache in front of the SQL in ``store.py``.

A call goes: check the input (``validation``), try the cache (``cache``), else run one
transaction (``store.SqlStore``), then bring the cache in line with what was committed.

Consistency, in short:

- Writes are always correct: the database, not the cache, assigns turn order, so concurrent
  writers in any number of processes never lose, duplicate or split an exchange.
- The cache serves its own process. Another worker's writes are seen when this process next
  writes the session (the version the write returns shows the gap and the state is reloaded),
  when the session's expiry is refreshed, or after eviction; until then a cache hit may serve
  an older state. For the session fields, ``update`` is last-writer-wins.
- Sliding expiry: every read keeps a session alive, but to avoid a database write per read the
  stored ``last_accessed``/``expires_at`` are refreshed only when ``last_accessed`` is more than
  a tenth of the TTL old. ``access_count`` counts cache hits too: they are added with the next
  write or refresh.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .cache import CacheEntry, SessionCache
from .config import StoreConfig
from .engine import check_database, create_engine, prepare_engine
from .errors import InvalidTurn, NotRunning, translate_errors
from .expiry import delete_expired_batch, run_periodically
from .migrate import check_schema, upgrade
from .models import ConversationState, ConversationTurn, make_turn
from .store import SessionFields, SqlStore, Written
from .urls import hide_password
from .validation import (
    Limits,
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
        self._cache = SessionCache(self.config.max_sessions)
        self._store: SqlStore | None = None
        self._phase: Literal["new", "running", "stopped"] = "new"
        self._sweeper: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._direct_calls = 0
        self._drained: asyncio.Event | None = None
        self._created = 0
        self._expired = 0
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        url = self._engine.url if self._engine is not None else self.config.database_url
        return f"SessionRepository({hide_password(url)!r}, {self._phase})"

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
        """Open the engine, check (or with ``auto_migrate``, upgrade) the schema, and start the
        expiry task. Starting a running repository does nothing.

        Raises:
            SchemaNotReady: the database lacks the newest migration and ``auto_migrate`` is off.
            StoreError: the database cannot be reached.
            NotRunning: the repository was stopped; create a new one instead.
        """
        if self._phase == "running":
            return
        if self._phase == "stopped":
            raise NotRunning(
                "a stopped SessionRepository cannot be started again; create a new one"
            )
        engine = prepare_engine(self._engine or create_engine(self.config))
        try:
            if self.config.auto_migrate:
                await upgrade(engine)
            else:
                await check_schema(engine)
            store = SqlStore(engine)
        except BaseException:
            if self._owns_engine:
                await engine.dispose()
            raise
        self._engine, self._store = engine, store
        self._phase = "running"
        if self.config.cleanup_interval > 0:
            self._sweeper = asyncio.create_task(
                run_periodically(self.config.cleanup_interval, self.sweep_expired),
                name="convostore-expiry-sweep",
            )

    async def stop(self) -> None:
        """Stop the expiry task, let writes under way finish, and close the connections the
        repository opened (an engine passed in stays open). Stopping twice does nothing."""
        if self._phase != "running":
            self._phase = "stopped"
            return
        self._phase = "stopped"
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
            self._sweeper = None
        if self._inflight:
            await asyncio.wait(list(self._inflight))
        if self._direct_calls:
            self._drained = asyncio.Event()
            await self._drained.wait()
        self._cache.clear()
        if self._owns_engine and self._engine is not None:
            await self._engine.dispose()

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
            StoreError: the database failed.
        """
        now = self._clock()
        # Only checked ids are ever cached, so a hit needs no check: the hit path is the one
        # every request takes, and it runs no SQL.
        entry = self._cache.get(session_id) if type(session_id) is str else None
        if (
            entry is not None
            and now < entry.expires_at
            and now - entry.last_accessed <= self._refresh_after
        ):
            entry.unflushed_hits += 1
            self._hits += 1
            return entry.fork(session_id)
        sid = check_session_id(session_id)
        store = self._running()
        if entry is not None:
            if now < entry.expires_at:
                return await self._direct(
                    "refreshing a session", self._refresh(store, sid, entry, now)
                )
            self._cache.discard(sid)
        self._misses += 1
        return await self._direct("loading a session", self._load(store, sid, now))

    async def get_or_create(self, session_id: str | None = None) -> tuple[str, ConversationState]:
        """The session's id and state; a session that is unknown or expired is created under
        that id, and ``None`` creates one under a fresh id from ``generate_session_id()``.

        Raises:
            InvalidSessionId: before any SQL.
            StoreError: the database failed.
        """
        if session_id is None:
            sid = self.generate_session_id()
        else:
            sid = check_session_id(session_id)
            state = await self.get(sid)
            if state is not None:
                return sid, state
        store = self._running()
        state = await self._shielded("creating a session", self._create(store, sid, self._clock()))
        return sid, state

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
    ) -> ConversationState:
        """Append one exchange (a user turn with ``question`` and the other fields, then an
        assistant turn with ``answer``) and return the session's new state.

        Creates the session if it is unknown or expired. The append never reads or rewrites
        the history: both turns and the session row are written in one transaction, so they are
        stored together or not at all. The user turn's slots merge into ``current_slots`` and
        its template becomes ``current_template_id``.

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL (the message names the field).
            StoreError: the database failed; nothing of the exchange was stored.
        """
        sid = check_session_id(session_id)
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
        store = self._running()
        template = template or None
        state = await self._direct(
            "adding a turn", self._append(store, sid, user, assistant, template, create=False)
        )
        if state is None:
            state = await self._shielded(
                "adding a turn", self._append(store, sid, user, assistant, template, create=True)
            )
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

    async def update(self, session_id: str, state: ConversationState) -> None:
        """Persist a state the caller changed: its session fields (current slots, template,
        language; the last writer wins) and the turns added to it since the store handed it
        out, appended after whatever is stored now, in their order. Stored turns are never
        rewritten or deleted: removing or replacing a handed-out turn in ``state.turns`` (to
        keep a window, say) stores nothing, while every turn object the store did not hand
        out counts as new. An unknown or expired session is created with all the state's turns.

        On success the state's new turns are replaced by the stored ones (with ``created_at``).

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL.
            StoreError: the database failed; nothing was stored.
        """
        sid = check_session_id(session_id)
        if not isinstance(state, ConversationState):
            raise InvalidTurn(f"state must be a ConversationState, not {type(state).__name__}")
        handed = (
            {id(turn) for turn in state._origin[: state._stored]}
            if state._session_id == sid
            else set()
        )
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
        store = self._running()
        await self._shielded(
            "updating a session",
            self._replace(store, sid, state, fields, all_turns, new_at),
        )

    async def delete(self, session_id: str) -> bool:
        """Delete the session and its turns. Returns False if it was unknown or already
        expired (its rows are removed all the same).

        Raises:
            InvalidSessionId: before any SQL.
            StoreError: the database failed.
        """
        sid = check_session_id(session_id)
        store = self._running()
        return await self._shielded("deleting a session", self._delete(store, sid))

    async def sweep_expired(self) -> int:
        """Delete every expired session now, in batches of ``sweep_batch_size``, one short
        transaction each. Returns how many sessions were deleted."""
        store = self._running()
        return await self._shielded("sweeping expired sessions", self._sweep(store))

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

    def _running(self) -> SqlStore:
        if self._store is None or self._phase != "running":
            raise NotRunning(
                "the SessionRepository is not running: use `async with repo:` or "
                "`await repo.start()` first"
                if self._phase == "new"
                else "the SessionRepository was stopped"
            )
        return self._store

    async def _shielded(self, action: str, operation: Coroutine[Any, Any, T]) -> T:
        """Run one database operation to its end even if the caller is cancelled (a client
        hung up), so no transaction or pooled connection is left half-done; the caller still
        sees the cancellation. Driver errors become ``StoreError`` here, and only here."""

        async def translated() -> T:
            with translate_errors(action):
                return await operation

        task = asyncio.ensure_future(translated())
        self._inflight.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    async def _direct(self, action: str, operation: Coroutine[Any, Any, T]) -> T:
        """Run a hot-path operation in the caller's own task, sparing ``_shielded``'s extra
        task (about 50 us a call here). Only for operations made of single atomic statements
        on the driver path (``SqlStore.load``, ``touch``, ``drop_expired``, and ``append``
        without ``create``): a cancelled caller leaves each done or not done, and the driver
        path discards the connection on any error. ``stop()`` waits for these too."""
        self._direct_calls += 1
        try:
            with translate_errors(action):
                return await operation
        finally:
            self._direct_calls -= 1
            if not self._direct_calls and self._drained is not None:
                self._drained.set()

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller may never look at it

    def _new_entry(self, version: int, now: float) -> CacheEntry:
        """The entry of a session this process just created: empty, written at ``now``."""
        return CacheEntry([], {}, None, "nl", version, now, now + self._ttl)

    async def _refresh(
        self, store: SqlStore, sid: str, entry: CacheEntry, now: float
    ) -> ConversationState | None:
        version = await store.touch(sid, _utc(now), self._ttl, entry.unflushed_hits + 1)
        if version is None or version != entry.version:
            self._cache.discard(sid)
            return await self._load(store, sid, now)
        entry.last_accessed, entry.expires_at = now, now + self._ttl
        entry.unflushed_hits = 0
        self._hits += 1
        return entry.fork(sid)

    async def _load(self, store: SqlStore, sid: str, now: float) -> ConversationState | None:
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
        user: ConversationTurn,
        assistant: ConversationTurn,
        template_id: str | None,
        *,
        create: bool,
    ) -> ConversationState | None:
        now = self._clock()
        generation = self._cache.generation
        before = self._cache.peek(sid)
        hits = before.unflushed_hits if before is not None else 0
        try:
            written = await store.append(
                sid,
                (user, assistant),
                merge_slots=user.slots,
                template_id=template_id,
                now=_utc(now),
                ttl=self._ttl,
                hits=hits,
                create=create,
            )
        except BaseException:
            self._cache.discard(sid)
            raise
        if written is None:
            return None
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
        reloaded = await self._load(store, sid, now)
        return reloaded if reloaded is not None else ConversationState(turns=list(written.turns))

    async def _replace(
        self,
        store: SqlStore,
        sid: str,
        state: ConversationState,
        fields: SessionFields,
        all_turns: list[ConversationTurn],
        new_at: list[int],
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
            )
        except BaseException:
            self._cache.discard(sid)
            raise
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
            deleted = await delete_expired_batch(store.engine, now, batch_size)
            for sid in deleted:
                self._cache.discard(sid)
            total += len(deleted)
            self._expired += len(deleted)
            if len(deleted) < batch_size:
                return total
