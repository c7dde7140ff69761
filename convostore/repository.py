"""``SessionRepository``: the public API, an LRU cache in front of the SQL in ``_core/store.py``.

A call goes: check the input (``validation``), try the cache (``cache``), else run one
transaction (``_core/store.SqlStore``) through ``_core/calls.CallLifecycle`` (admission,
retries, draining at ``stop()``), then bring the cache in line with what was committed.
``coherence`` drops cached copies of sessions other processes wrote.

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
import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.cache import SessionCache
from convostore._core.calls import CallLifecycle, attempt_timeout
from convostore._core.coherence import Watcher
from convostore._core.crypt import cipher_for
from convostore._core.engine import check_database, create_engine, prepare_engine, release_engine
from convostore._core.expiry import DeferredRefreshes, logger, run_periodically
from convostore._core.gate import Gate
from convostore._core.owners import ORDERS, Listing, Owners, decode_cursor
from convostore._core.search import Searches, read_cursor
from convostore._core.session_ops import SessionOperations, Stats, TimingHook, owned, utc
from convostore._core.store import SqlStore
from convostore._core.validation import (
    Limits,
    check_content,
    check_idempotency_key,
    check_limit,
    check_metadata_filter,
    check_optional_content,
    check_optional_text,
    check_owner,
    check_query,
    check_score,
    check_session_fields,
    check_session_id,
    check_span_id,
    check_summary,
    check_title,
    check_trace_id,
    check_turn,
    check_user_id,
    check_window,
    copy_metadata,
    copy_results,
    copy_slots,
)
from convostore.backends import backend_for
from convostore.backends._urls import hide_password
from convostore.config import StoreConfig, check_settings
from convostore.errors import (
    ConvostoreError,
    ForeignStateError,
    InvalidPage,
    InvalidTurn,
    NotRunning,
    NotSessionOwner,
    SchemaNotReady,
    StaleStateError,
    translate_errors,
)
from convostore.migrate import check_schema, create_schema, upgrade
from convostore.models import (
    ConversationState,
    ConversationTurn,
    SearchPage,
    SessionFields,
    SessionPage,
    StoredSession,
    carry_context,
    make_turn,
    name_ordered,
)

__all__ = ["SessionRepository", "new_idempotency_key"]

_EDIT_ATTEMPTS = 5
"""How often a rewind reads the session again when another write came between its read and
its own (the write checks the version it read)."""


def _turn_number(name: str, value: object) -> int:
    """A turn number as ``rewind`` and ``fork`` take it: an int of 0 or more."""
    if type(value) is not int or value < 0:
        raise InvalidTurn(f"{name} must be a turn's number (an int from 0), not {value!r}")
    return value


def _kept_turns(
    state: ConversationState, upto: int, *, split: bool = False
) -> list[ConversationTurn] | None:
    """The turns of ``state`` up to turn ``upto``, or None if that is all of them.
    ``InvalidTurn`` if ``upto`` is before the state's first turn (less one), or, unless
    ``split``, if the turn after it is not a user turn (an exchange would be split)."""
    first = state._first_seq
    turns = state.turns
    if upto >= first + len(turns) - 1:
        return None
    if upto < first - 1:
        raise InvalidTurn(
            f"turn {upto} is no longer in the live conversation, which begins at turn {first}"
        )
    kept = turns[: upto - first + 1]
    if not split and turns[len(kept)].role != "user":
        raise InvalidTurn(
            f"turn {upto + 1} is not a user turn: ending at turn {upto} would split an exchange"
        )
    return kept


def _fields_after(
    state: ConversationState, kept: Sequence[ConversationTurn], upto: int
) -> SessionFields:
    """The session fields of a history cut after turn ``upto`` that keeps ``kept``: the
    context those turns carry, the state's catalog fields and language, and its summary if
    it covers no turn beyond ``upto``."""
    slots: dict[str, str] = {}
    template: str | None = None
    for turn in kept:
        template = carry_context(turn, slots, template)
    summary = state.summary_upto is not None and state.summary_upto <= upto
    return SessionFields(
        language=state.language,
        current_slots=name_ordered(slots),
        current_template_id=template,
        title=state.title,
        metadata=dict(state.metadata),
        summary=state.summary if summary else None,
        summary_upto=state.summary_upto if summary else None,
    )


def _before_newest(state: ConversationState) -> int | None:
    """Where ``pop_message`` cuts: before the newest turn (None: there is none)."""
    return state._first_seq + len(state.turns) - 2 if state.turns else None


def _before_oldest(state: ConversationState) -> int | None:
    """Where ``clear`` cuts: before the oldest live turn (None: there is none)."""
    return state._first_seq - 1 if state.turns else None


Clock = Callable[[], float]
"""Returns the current time as epoch seconds, like ``time.time`` (the default)."""


class _Keys:
    """The idempotency keys of appends whose caller gave none: a random prefix (96 bits) per
    process and a counter, so no two appends share one, without the system call for random
    bytes that ``secrets`` makes per key (a twentieth of an append's own Python time). A
    forked child draws a prefix of its own: it must not repeat its parent's keys."""

    _prefix: str
    _counter: Iterator[int]

    def __init__(self) -> None:
        self.reseed()
        if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
            os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = secrets.token_urlsafe(12)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_idempotency_key: Callable[[], str] = _Keys()
"""The idempotency key an append stores when its caller gives none (``add_turn`` without
``idempotency_key``, ``update`` with new turns): distinct in this process and in every process
forked from it, at most 128 printable ASCII characters. The benchmark's raw floor stores its
appends' keys with it, as convostore does."""


class SessionRepository:
    """Conversation sessions in SQL with an in-process LRU cache.

    Create it with a ``StoreConfig``, a database URL, or a config and an existing
    ``AsyncEngine`` (which the caller keeps owning), then ``async with repo:`` or
    ``await repo.start()`` ... ``await repo.stop()``.

    ``clock`` replaces ``time.time`` as the source of "now" (tests move it instead of sleeping).

    The constructor raises ``ConfigError`` for a database URL or engine it cannot use, and for
    a config whose settings are out of range (one that skipped validation: ``model_construct``,
    ``model_copy(update=...)``).
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
        check_settings(self.config)
        check_database(self.config, engine)
        self._limits = Limits(
            self.config.max_text_chars, self.config.max_results_bytes, self.config.redact
        )
        self._cipher = cipher_for(self.config.encryption_keys)
        """Encrypts turns at rest (``StoreConfig.encryption_keys``); None: nothing does."""
        self._engine = engine
        self._owns_engine = engine is None
        self._clock: Clock = clock or time.time
        self._ttl = float(self.config.session_ttl)
        self._refresh_after = self._ttl / 10
        self._strict = self.config.cache_coherence == "strict"
        self._cache = SessionCache(self.config.max_sessions)
        self._stats = Stats()
        reconnect_timeout = float(self.config.reconnect_timeout)
        self._attempt_timeout = attempt_timeout(reconnect_timeout) if self._owns_engine else None
        """Bounds each connect and statement on the repository's own engine (PostgreSQL)."""
        self._calls = CallLifecycle(
            reconnect_timeout,
            self._attempt_timeout,
            Gate(self.config.pool_size + self.config.max_overflow) if self._owns_engine else None,
        )
        self._ops: SessionOperations | None = None
        self._owners: Owners | None = None
        self._searches: Searches | None = None
        self._watcher: Watcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None

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

    @property
    def fast_path(self) -> bool:
        """Whether the hot operations (appends, loads, expiry refreshes) run on the database
        driver directly now, or through SQLAlchemy's execution: ``config.fast_path``, unless
        the engine echoes or has cursor-execute listeners (asked now, as each operation asks).

        Raises:
            NotRunning: before ``start()``.
        """
        return self._running_store().fast_path

    @property
    def connections_kept(self) -> int:
        """Connections the fast path holds between operations: checked out of the pool but
        idle, kept for the next operation (0 on an engine passed in, whose connections always
        go back to its pool). A pool's ``checkedout()`` minus this is the connections in use.

        Raises:
            NotRunning: before ``start()``.
        """
        return self._running_store().lender.kept

    def _running_store(self) -> SqlStore:
        if self._ops is None:
            raise NotRunning("the repository has no store until start()")
        return self._ops.store

    async def start(self) -> None:
        """Open the engine, check (or with ``auto_migrate``, by default on an embedded
        database such as SQLite, upgrade) the schema, start following other processes' writes
        (``cache_coherence="bounded"``) and start the expiry task. Starting a running
        repository does nothing.

        Raises:
            SchemaNotReady: the database lacks the newest migration and ``auto_migrate`` is off
                (by default on PostgreSQL).
            StoreError: the database cannot be reached.
            NotRunning: the repository was stopped; create a new one instead.
        """
        if self._calls.phase == "running":
            return
        if self._calls.phase != "new":
            raise NotRunning(
                "a stopped SessionRepository cannot be started again; create a new one"
            )
        engine = prepare_engine(
            self._engine or create_engine(self.config, timeout=self._attempt_timeout)
        )
        try:
            await self._ensure_schema(engine)
            store = SqlStore(
                engine,
                owns_engine=self._owns_engine,
                fast_path=self.config.fast_path,
                retention=float(self.config.transcript_retention),
                gate=self._calls.gate,
                default_language=self.config.default_language,
                auto_title=self.config.auto_title,
                max_turns=self.config.max_turns_per_session,
                cipher=self._cipher,
            )
            self._watcher = self._make_watcher(engine)
            if self._watcher is not None:
                await self._watcher.start()
        except BaseException:
            await release_engine(engine, owned=self._owns_engine)
            raise
        self._engine = engine
        delay = float(self.config.refresh_delay)
        behind = (
            DeferredRefreshes(partial(self._touch_many, store), self.config.sweep_batch_size)
            if delay > 0
            else None
        )
        self._ops = SessionOperations(
            store,
            self._cache,
            self._stats,
            ttl=self._ttl,
            clock=self._clock,
            behind=behind,
            trusted=self.config.cache_coherence == "bounded",
        )
        self._owners = Owners(engine, self._cipher)
        self._searches = Searches(engine)
        self._calls.phase = "running"
        if self.config.cleanup_interval > 0:
            self._sweeper = asyncio.create_task(
                run_periodically(self.config.cleanup_interval, self.sweep_expired),
                name="convostore-expiry-sweep",
            )
        if behind is not None:
            self._flusher = asyncio.create_task(
                run_periodically(delay, behind.flush, "expiry refresh"),
                name="convostore-expiry-refresh",
            )

    async def _touch_many(
        self, store: SqlStore, refreshes: Sequence[tuple[str, datetime, int]]
    ) -> None:
        """Write refreshes held back from reads, in turn with the calls' operations."""
        await self._calls.gated(lambda: store.slide_expiries(refreshes, self._ttl))

    async def _ensure_schema(self, engine: AsyncEngine) -> None:
        """Check the schema; upgrade one that is behind when ``auto_migrate`` says so (None:
        on an embedded database, SQLite). A current schema is only read: no write lock, and no
        statement an engine's own transaction handling could object to."""
        schema = self.config.schema
        try:
            await check_schema(engine, schema=schema)
        except SchemaNotReady:
            backend = backend_for(engine)
            migrate = self.config.auto_migrate
            if migrate is None:
                migrate = backend.embedded
            if not migrate:
                raise
            if self._owns_engine and schema is not None:
                await create_schema(self.config.database_url, schema)
            if not self._owns_engine or not backend.statement_timeouts:
                await upgrade(engine, schema=schema)
                return
            # A migration may rightly run long, or wait its turn behind another worker's: it
            # runs on an engine of its own, without the statement timeout of calls.
            unbounded = create_engine(self.config)
            try:
                await upgrade(unbounded, schema=schema)
            finally:
                await unbounded.dispose()

    def _make_watcher(self, engine: AsyncEngine) -> Watcher | None:
        """What follows other processes' writes, if the coherence mode needs one."""
        if self.config.cache_coherence != "bounded":
            return None
        return backend_for(engine).watcher(self._cache, engine, self.config)

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
            for task in (self._sweeper, self._flusher):
                if task is not None:
                    task.cancel()
                    await asyncio.wait([task])
            self._sweeper = self._flusher = None
            await self._calls.drain()
            await self._flush_refreshes()
            if self._watcher is not None:
                await self._watcher.stop()
            self._cache.clear()
            try:
                if self._ops is not None:
                    await self._ops.store.close()
            finally:
                if self._engine is not None:
                    await release_engine(self._engine, owned=self._owns_engine)
        finally:
            self._calls.phase = "stopped"
            self._stopped.set()

    async def _flush_refreshes(self) -> None:
        """At ``stop()``: write the expiry refreshes reads left behind; a failure is logged
        (those sessions may then expire up to ``refresh_delay`` sooner)."""
        behind = self._ops.behind if self._ops is not None else None
        if behind is None or not len(behind):
            return
        try:
            with translate_errors("writing expiry refreshes"):
                await behind.flush()
        except ConvostoreError:
            logger.warning("convostore: expiry refreshes were not written at stop()", exc_info=True)

    @staticmethod
    def generate_session_id() -> str:
        """A new unguessable, URL-safe session id (192 random bits)."""
        return secrets.token_urlsafe(24)

    async def get(
        self, session_id: str, *, user_id: str | None = None, last_turns: int | None = None
    ) -> ConversationState | None:
        """The session's state, or None if it is unknown or expired, or if ``user_id`` is
        given and the session is not that user's (created for another user, or for none).

        ``last_turns``: the state holds only the newest ``last_turns`` turns (the session
        fields are whole), read so in SQL, so a long history costs nothing extra. The cache
        keeps what was read: a later read of more turns goes to the database once. ``update``
        with such a state appends the turns you add, as always.

        Served from the cache without SQL when possible. The state is the caller's to change;
        changes reach the store only through ``update``.

        Raises:
            InvalidSessionId: a bad session id or user id, before any SQL.
            InvalidPage: ``last_turns`` is not a positive int.
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
            and user_id is None
            and last_turns is None
            and entry.complete
        ):
            entry.unflushed_hits += 1
            self._stats.hits += 1
            return entry.fork(session_id)
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        window = check_window(last_turns)
        try:
            return await self._get(sid, entry, now, owner, window)
        except NotSessionOwner:
            return None

    async def _get(
        self,
        sid: str,
        entry: StoredSession | None,
        now: float,
        owner: str | None,
        window: int | None = None,
    ) -> ConversationState | None:
        """``get`` past the unchecked hit; raises ``NotSessionOwner`` for another's session."""
        if entry is not None and not entry.covers(window):
            entry = None
        if (
            entry is not None
            and now < entry.expires_at
            and now - entry.last_accessed <= self._refresh_after
            and not self._strict
        ):
            entry.unflushed_hits += 1
            self._stats.hits += 1
            return owned(sid, entry, owner).fork(sid, window)
        ops = self._enter()
        try:
            if entry is not None:
                if now < entry.expires_at:
                    return await self._calls.run(
                        "refreshing a session",
                        lambda: ops.refresh(sid, entry, now, owner, window),
                    )
                self._cache.discard(sid)
            self._stats.misses += 1
            return await self._calls.run(
                "loading a session", lambda: ops.load(sid, now, owner, window)
            )
        finally:
            self._calls.leave()

    async def _whole(self, sid: str, owner: str | None) -> ConversationState | None:
        """The whole live session as ``get`` reads it, but ``NotSessionOwner`` for a session
        of another owner: what a write that starts from the stored history reads first."""
        return await self._get(sid, self._cache.get(sid), self._clock(), owner)

    async def get_or_create(
        self, session_id: str | None = None, *, user_id: str | None = None
    ) -> tuple[str, ConversationState]:
        """The session's id and state; a session that is unknown or expired is created under
        that id, and ``None`` creates one under a fresh id from ``generate_session_id()``.

        ``user_id`` makes that user the owner of a session this call creates. A live session
        of another owner (or of none) is never handed out to a call with a ``user_id``: it
        raises ``NotSessionOwner`` and leaves the session as it is.

        Raises:
            InvalidSessionId: a bad session id or user id, before any SQL.
            NotSessionOwner: the live session under that id is not ``user_id``'s.
            StoreError: the database failed.
        """
        sid = self.generate_session_id() if session_id is None else check_session_id(session_id)
        owner = check_owner(user_id)
        ops = self._enter()
        try:
            if session_id is not None:
                state = await self._get(sid, self._cache.get(sid), self._clock(), owner)
                if state is not None:
                    return sid, state
            now = self._clock()
            state = await self._calls.run(
                "creating a session", lambda: ops.create(sid, now, owner), shield=True
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
        user_id: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> ConversationState:
        """Append one exchange (a user turn with ``question`` and the other fields, then an
        assistant turn with ``answer``) and return the session's new state.

        Creates the session if it is unknown or expired. The append never reads or rewrites
        the history: both turns and the session row are written in one transaction, so they are
        stored together or not at all. The user turn's slots merge into ``current_slots`` and
        its template becomes ``current_template_id``.

        ``idempotency_key`` (session-id rules): a second call with the same key in the same
        conversation stores nothing and returns the session's state (once the session has
        ended, a new conversation under its id stores the same key again). Without one,
        convostore makes its own, so its own retries after a lost connection never store an
        exchange twice.

        ``user_id``: a session this call creates belongs to that user, and a live session of
        another owner (or of none) is never written (``NotSessionOwner``).

        ``trace_id`` and ``span_id``: the OpenTelemetry trace and span that produced the
        exchange (32 and 16 lowercase hex digits, not all zero), stored on both of its turns,
        so either one, read alone, leads to the trace. Nothing is taken from the current
        span by itself: pass ``**convostore.otel.trace_context()`` for that.

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL (the message names the field).
            NotSessionOwner: the live session under that id is not ``user_id``'s; nothing
                was stored.
            StoreError: the database failed; nothing of the exchange was stored.
            StoreUnavailable: the database stayed unreachable for ``reconnect_timeout``.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        key = (
            new_idempotency_key()
            if idempotency_key is None
            else check_idempotency_key(idempotency_key)
        )
        limits = self._limits
        template = check_optional_text("template_id", template_id, limits)
        trace, span = check_trace_id("trace_id", trace_id), check_span_id("span_id", span_id)
        user = make_turn(
            role="user",
            content=check_content("question", question, limits),
            resolved_question=check_optional_content(
                "resolved_question", resolved_question, limits
            ),
            template_id=template,
            slots=copy_slots("slots", slots, limits),
            results=copy_results("results", results, limits),
            created_at=None,
            trace_id=trace,
            span_id=span,
            tool_name=None,
            tool_call_id=None,
            tool_arguments=None,
            data=None,
        )
        assistant = make_turn(
            role="assistant",
            content=check_content("answer", answer, limits),
            resolved_question=None,
            template_id=None,
            slots={},
            results=[],
            created_at=None,
            trace_id=trace,
            span_id=span,
            tool_name=None,
            tool_call_id=None,
            tool_arguments=None,
            data=None,
        )
        return await self._append(sid, (user, assistant), template or None, key, owner)

    async def add_messages(
        self,
        session_id: str,
        messages: Sequence[ConversationTurn | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        user_id: str | None = None,
    ) -> ConversationState:
        """Append ``messages`` (``ConversationTurn``s, or dicts of their fields) in their
        order, of any role (``user``, ``assistant``, ``system``, ``tool``), with their tool
        fields and ``data``, and return the session's new state: what agent frameworks
        store, where ``add_turn`` stores a question and its answer.

        All of them are stored in one transaction, or none; an empty sequence stores nothing.
        The rest is as for ``add_turn``: an unknown or expired session is created (owned by
        ``user_id``), a live session of another owner is never written, the same
        ``idempotency_key`` in the same conversation stores them once, and the user
        messages' slots and the messages' templates carry into the context.

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL (the message names the field and
                the message's index).
            NotSessionOwner: the live session under that id is not ``user_id``'s; nothing
                was stored.
            StoreError: the database failed; nothing was stored.
            StoreUnavailable: the database stayed unreachable for ``reconnect_timeout``.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        key = (
            new_idempotency_key()
            if idempotency_key is None
            else check_idempotency_key(idempotency_key)
        )
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
            raise InvalidTurn(
                f"messages must be a sequence of messages, not {type(messages).__name__}"
            )
        limits = self._limits
        checked = tuple(
            check_turn(f"messages[{index}]", message, limits)
            for index, message in enumerate(messages)
        )
        if not checked:
            return (await self.get_or_create(sid, user_id=owner))[1]
        template = None
        for message in checked:
            template = message.template_id or template
        return await self._append(sid, checked, template, key, owner)

    async def _append(
        self,
        sid: str,
        new_turns: Sequence[ConversationTurn],
        template: str | None,
        key: str,
        owner: str | None,
    ) -> ConversationState:
        """Append checked turns: on the live session in one statement, else creating it."""
        ops = self._enter()
        hooks = self._stats.hooks
        started = time.perf_counter() if hooks is not None else 0.0
        try:
            state = await self._calls.run(
                "adding a turn",
                lambda: ops.append(sid, new_turns, template, key, create=False, owner=owner),
            )
            if state is None:
                state = await self._calls.run(
                    "adding a turn",
                    lambda: ops.append(sid, new_turns, template, key, create=True, owner=owner),
                    shield=True,
                )
        finally:
            self._calls.leave()
        if hooks is not None:
            self._stats.timed("append", started)
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
        *,
        user_id: str | None = None,
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
            user_id=user_id,
        )

    async def update(
        self,
        session_id: str,
        state: ConversationState,
        *,
        if_unchanged: bool = False,
        user_id: str | None = None,
    ) -> None:
        """Persist a state the caller changed: its session fields (current slots, template,
        language; a ``language`` of None stores ``StoreConfig.default_language``) and the
        turns added to it since the store handed it out, appended after whatever is stored
        now, in their order. Stored turns are never rewritten or deleted:
        removing or replacing a handed-out turn in ``state.turns`` (to keep a window, say)
        stores nothing, while every turn object the store did not hand out counts as new. An
        unknown or expired session is created with all the state's turns.

        A state the store handed out (by ``get``, ``get_or_create``, ``add_turn`` or an
        earlier ``update``) belongs to its session: passing it for another session raises
        ``ForeignStateError``, so one conversation's turns are never copied into another by
        mistake. A state you build yourself (``ConversationState(...)``) belongs to no
        session, and all its turns are new; ``ConversationState(**state.model_dump())`` copies
        a conversation on purpose (``state.model_copy()`` keeps its session).

        The session fields are last-writer-wins, unless ``if_unchanged``: then the update is
        refused with ``StaleStateError`` if the stored session was written or deleted since
        the state was read (a state the store never handed out for this session expects no
        live session).

        ``user_id``: as for ``add_turn``: a session this call creates belongs to that user,
        and a live session of another owner (or of none) is never written.

        On success the state's new turns are replaced by the stored ones (with ``created_at``).

        Raises:
            InvalidSessionId, InvalidTurn: before any SQL.
            ForeignStateError: the state was handed out for another session, before any SQL.
            NotSessionOwner: the live session under that id is not ``user_id``'s; nothing
                was stored.
            StaleStateError: ``if_unchanged`` and the session moved on; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        if not isinstance(state, ConversationState):
            raise InvalidTurn(f"state must be a ConversationState, not {type(state).__name__}")
        if state._session_id is not None and state._session_id != sid:
            raise ForeignStateError(
                f"this state was read from another session than {sid!r}; to copy its "
                "conversation on purpose, pass ConversationState(**state.model_dump())"
            )
        read_here = state._session_id == sid
        handed = {id(turn) for turn in state._origin[: state._stored]} if read_here else set()
        all_turns = list(state.turns)
        new_at = [index for index, turn in enumerate(all_turns) if id(turn) not in handed]
        limits = self._limits
        for index in new_at:
            all_turns[index] = check_turn(f"turns[{index}]", all_turns[index], limits)
        fields = check_session_fields(state, limits, self.config.default_language)
        expected: int | None = None
        if if_unchanged:
            expected = state._version if read_here and state._version is not None else -1
        key = new_idempotency_key() if new_at else None
        ops = self._enter()
        try:
            await self._calls.run(
                "updating a session",
                lambda: ops.update(sid, state, fields, all_turns, new_at, key, expected, owner),
                shield=True,
            )
        finally:
            self._calls.leave()

    async def rewind(
        self, session_id: str, to_seq: int, *, user_id: str | None = None
    ) -> ConversationState | None:
        """Take the turns after turn ``to_seq`` (numbered from 1; 0: all of them) out of the
        live conversation, for edit-and-regenerate: the next ``add_turn`` follows turn
        ``to_seq``. Returns the session's state after it, or None if there is no live
        session. The turns taken out stay in the transcript, in a conversation of their own
        (``superseded_by`` the live one, in ``conversation_status``), until retention.

        Atomic (the rewind and the move of its turns commit together), and idempotent: a
        rewind to where the conversation already ends changes nothing, so a retry after an
        unknown outcome is safe. Other workers' caches drop the session as for any write.
        The context (current slots and template) becomes what the kept turns carry; a
        summary that covers a turn taken out goes.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: ``to_seq`` not an int of 0 or more, a turn before the live
                conversation's oldest (a cap took it out), or one that would split an
                exchange (the turn after it is not a user turn).
            NotSessionOwner: the live session is not ``user_id``'s; nothing was changed.
            StaleStateError: other writes kept changing the session; nothing was changed.
            StoreError: the database failed; nothing was changed.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        to_seq = _turn_number("to_seq", to_seq)
        cut = await self._cut(sid, owner, lambda state: to_seq, split=False, doing="rewound")
        return None if cut is None else cut[1]

    async def pop_message(
        self, session_id: str, *, user_id: str | None = None
    ) -> ConversationTurn | None:
        """Take the newest message out of the live conversation and return it (None if there
        is no live session, or it has no messages): an agent framework's "pop the last item".
        Unlike ``rewind`` it may split an exchange. The message stays in the transcript as
        superseded, as a rewind's do; the context becomes what the messages left carry.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was changed.
            StaleStateError: other writes kept changing the session; nothing was changed.
            StoreError: the database failed; nothing was changed.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        cut = await self._cut(sid, owner, _before_newest, split=True, doing="popped")
        if cut is None or cut[0] is cut[1]:
            return None
        return cut[0].turns[-1]

    async def clear(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Take every message out of the live conversation, which stays live (with its id,
        owner, title, metadata and language; no context, no summary). Returns False if there
        is no live session. The messages stay in the transcript as superseded, as a
        rewind's do, until retention. Safe to retry: clearing an empty session changes
        nothing.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was changed.
            StaleStateError: other writes kept changing the session; nothing was changed.
            StoreError: the database failed; nothing was changed.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        cut = await self._cut(sid, owner, _before_oldest, split=True, doing="cleared")
        return cut is not None

    async def _cut(
        self,
        sid: str,
        owner: str | None,
        where: Callable[[ConversationState], int | None],
        *,
        split: bool,
        doing: str,
    ) -> tuple[ConversationState, ConversationState] | None:
        """Take the turns after turn ``where(state)`` out of the live session (nothing if it
        is None or the last turn), checking the stored version so nothing appended since the
        read is taken out. Returns the state before and after (the same object if nothing
        was taken out), or None if there is no live session."""
        for _ in range(_EDIT_ATTEMPTS):
            state = await self._whole(sid, owner)
            if state is None:
                return None
            to_seq = where(state)
            kept = None if to_seq is None else _kept_turns(state, to_seq, split=split)
            if to_seq is None or kept is None:
                return state, state  # it ends there already
            last_seq = state._first_seq + len(state.turns) - 1
            fields = _fields_after(state, kept, to_seq)
            expected = state._version
            assert expected is not None  # a state the store handed out
            ops = self._enter()
            try:
                done = await self._calls.run(
                    f"editing a session's history ({doing})",
                    partial(ops.rewind, sid, to_seq, last_seq, fields, expected, owner),
                    shield=True,
                )
            finally:
                self._calls.leave()
            if done:
                after = await self._whole(sid, owner)
                return None if after is None else (state, after)
        raise StaleStateError(
            f"session {sid!r} kept changing while it was being {doing}; nothing was changed"
        )

    async def fork(
        self, session_id: str, upto_seq: int | None = None, *, user_id: str | None = None
    ) -> str | None:
        """Start a new session whose history is this live session's up to turn
        ``upto_seq`` (None: all of it), and return its id (None if there is no live session
        under ``session_id``). Its turns are copies, numbered from 1; it takes the context
        they carry (a fork of the whole history: the session's current context), the title,
        metadata and language, and the summary if it covers no turn beyond ``upto_seq``.
        Its conversation records where it came from (``forked_from``,
        ``forked_from_conversation``, ``forked_upto``, in the catalog and
        ``conversation_status``). It belongs to ``user_id``, or else to the original's
        owner. Atomic, and safe to retry: an attempt repeated after a lost connection finds
        the first one's.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: ``upto_seq`` not None or an int of 0 or more, beyond the newest
                turn, before the live conversation's oldest, or splitting an exchange.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        upto = None if upto_seq is None else _turn_number("upto_seq", upto_seq)
        state = await self._whole(sid, owner)
        if state is None:
            return None
        last_seq = state._first_seq + len(state.turns) - 1
        if upto is None:
            upto = last_seq
        if upto > last_seq:
            raise InvalidTurn(f"upto_seq {upto} is beyond the newest turn, {last_seq}")
        kept = _kept_turns(state, upto)
        if kept is None:  # the whole history: the state's own context too
            turns = list(state.turns)
            fields = check_session_fields(state, self._limits, self.config.default_language)
        else:
            turns, fields = kept, _fields_after(state, kept, upto)
        new_sid = self.generate_session_id()
        key = new_idempotency_key()
        ops = self._enter()
        try:
            await self._calls.run(
                "forking a session",
                lambda: ops.fork(new_sid, fields, turns, sid, upto, key, owner),
                shield=True,
            )
        finally:
            self._calls.leave()
        return new_sid

    async def delete(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its turns. Returns False if it was unknown or already
        expired (its rows are removed all the same).

        ``user_id``: only a session of that user is deleted; a live session of another owner
        (or of none) raises ``NotSessionOwner`` and stays, and an expired one is left to the
        sweep (False).

        Raises:
            InvalidSessionId: a bad session id or user id, before any SQL.
            NotSessionOwner: the live session under that id is not ``user_id``'s; nothing
                was deleted.
            StoreError: the database failed.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        ops = self._enter()
        try:
            return await self._calls.run(
                "deleting a session", lambda: ops.delete(sid, owner), shield=True
            )
        finally:
            self._calls.leave()

    async def sweep_expired(self) -> int:
        """Delete every expired session now, in batches of ``sweep_batch_size``, one short
        transaction each. Returns how many sessions were deleted."""
        ops = self._enter()
        batch_size = self.config.sweep_batch_size
        try:
            return await self._calls.run(
                "sweeping expired sessions", lambda: ops.sweep(batch_size), shield=True
            )
        finally:
            self._calls.leave()

    async def list_sessions(
        self,
        user_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        order: str = "last_activity",
        metadata: Mapping[str, str | int | bool] | None = None,
        live: bool | None = None,
        before: int | None = None,
    ) -> SessionPage:
        """One page of the user's conversations, live and retained: at most ``limit``
        summaries with their titles and metadata, newest first, and the ``next_cursor`` to
        pass as ``cursor`` for the next page (None on the last).

        ``order``: ``"last_activity"`` (when turns were last appended, or the session was
        created) or ``"started"`` (when the conversation began). Pages are keyset pages: a
        cursor names the last summary seen, so writes meanwhile neither repeat nor skip a
        conversation that did not move (one whose activity moves it ahead is on an earlier
        page), and every page costs about the same, however deep. ``metadata``: only
        conversations whose metadata holds each of these keys with this value (a string, an
        int or a bool). ``live``: True only live sessions, False only ended ones.

        ``before`` (a conversation id) is the paging of earlier releases: the conversations
        started before that one, as with ``order="started"``.

        Raises:
            InvalidSessionId: a bad user id, before any SQL.
            InvalidPage: ``limit`` is not 1-1000, an unknown ``order``, a cursor that is not
                one ``list_sessions`` returned for that order, a bad ``metadata`` filter,
                ``live`` not a bool, or both ``cursor`` and ``before``.
            StoreError: the database failed.
        """
        uid = check_user_id(user_id)
        check_limit(limit)
        if order not in ORDERS:
            raise InvalidPage(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        if live is not None and type(live) is not bool:
            raise InvalidPage(f"live must be True, False or None, not {live!r}")
        after: tuple[int, datetime | None] | None = None
        if before is not None:
            if type(before) is not int or before < 1:
                raise InvalidPage(
                    f"before must be a conversation_id (a positive int), not {before!r}"
                )
            if cursor is not None:
                raise InvalidPage("pass cursor or before, not both")
            order, after = "started", (before, None)
        elif cursor is not None:
            after = decode_cursor(order, cursor)
        wanted = None if metadata is None else check_metadata_filter(metadata)
        owners = self._users()
        ask = Listing(uid, limit, order, after, wanted, live, utc(self._clock()))
        try:
            return await self._calls.run("listing sessions", lambda: owners.page(ask))
        finally:
            self._calls.leave()

    async def set_title(
        self, session_id: str, title: str | None, *, user_id: str | None = None
    ) -> bool:
        """Give the live session a title (None: none), as the catalog (``list_sessions``)
        shows it and its states carry it. Returns False, storing nothing, if there is no
        live session under that id. Other workers' cached copies follow within the
        coherence bound, as for any write.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: a title that is not 1-500 characters of text, before any SQL.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        checked = check_title(title, self._limits)
        return await self._set_fields(session_id, {"title": checked}, user_id)

    async def set_metadata(
        self, session_id: str, metadata: Mapping[str, Any] | None, *, user_id: str | None = None
    ) -> bool:
        """Replace the live session's metadata, a JSON object of the caller's (tags, a
        project, a model name; None: an empty one), held to ``StoreConfig.max_results_bytes``
        like a turn's results. ``list_sessions(metadata=...)`` filters by it. Returns False,
        storing nothing, if there is no live session under that id.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: not a JSON object, or too large, before any SQL.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        value = copy_metadata("metadata", metadata, self._limits)
        return await self._set_fields(session_id, {"metadata": value}, user_id)

    async def set_summary(
        self,
        session_id: str,
        text: str | None,
        *,
        upto_seq: int | None,
        user_id: str | None = None,
    ) -> bool:
        """Store a summary of the live session's turns up to turn ``upto_seq`` (numbered
        from 1), written by the caller's model: convostore never calls one. A read returns it
        with its window (``get(session_id, last_turns=N)``: ``state.summary``,
        ``state.summary_upto``), and ``to_dspy_history()`` puts it first when turns came
        before its window. A summary never deletes a turn; a new one replaces the old, and
        ``text=None, upto_seq=None`` removes it. Returns False, storing nothing, if there is
        no live session under that id.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: text that is not text within ``max_text_chars``, an ``upto_seq``
                that is not a positive int (or not None with the text None), before any SQL;
                an ``upto_seq`` beyond the session's turns, after its statement (nothing
                was stored).
            NotSessionOwner: the live session is not ``user_id``'s; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        summary, upto = check_summary(text, upto_seq, self._limits)
        values = {"summary": summary, "summary_upto": upto}
        return await self._set_fields(session_id, values, user_id)

    async def _set_fields(
        self, session_id: str, values: dict[str, Any], user_id: str | None
    ) -> bool:
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        ops = self._enter()
        try:
            return await self._calls.run(
                f"setting a session's {next(iter(values))}",
                lambda: ops.set_fields(sid, values, owner),
                shield=True,
            )
        finally:
            self._calls.leave()

    async def search(
        self,
        query: str,
        *,
        user_id: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> SearchPage:
        """Full-text search over every stored conversation, live and retained: the turns whose
        question, resolved question or answer holds every word of ``query``, best first, at
        most ``limit`` of them. The query is plain words: quotes, ``*``, ``-``, ``AND`` and
        parentheses are never operators. How words are matched is each database's (see
        docs/search.md): SQLite folds case and accents; PostgreSQL uses the text search
        configuration migration 0010 was run with (``simple`` by default); MariaDB folds case
        and skips words under three characters.

        Hits are ordered by rank (highest first), then by conversation id, session id and
        ``seq``; ``next_cursor`` names the page's last hit, and passing it as ``cursor`` (with
        the same query and user) gives the hits after it. Pages of an unchanged store cover
        every hit once; turns stored or deleted meanwhile can move ranks, so a hit may then be
        missed or seen twice.

        ``user_id``: only that user's conversations (``conversations.user_id``).

        Raises:
            InvalidQuery: ``query`` is not text, holds no word, or exceeds
                ``max_text_chars``, before any SQL.
            InvalidSessionId: a bad user id, before any SQL.
            InvalidPage: ``limit`` is not 1-1000, or ``cursor`` is not a ``next_cursor`` of
                this search, before any SQL.
            StoreError: the database failed.
        """
        text = check_query(query, self._limits)
        uid = check_owner(user_id)
        check_limit(limit)
        after = None if cursor is None else read_cursor(cursor, text, uid)
        self._calls.enter()
        searches = self._searches
        assert searches is not None
        try:
            return await self._calls.run(
                "searching transcripts", lambda: searches.page(text, uid, limit, after)
            )
        finally:
            self._calls.leave()

    async def add_feedback(
        self,
        session_id: str,
        seq: int,
        score: int,
        *,
        comment: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Record feedback on an answer: turn ``seq`` (its stored number, from 1: the answer
        of the n-th exchange is turn 2n, unless a rewind or a cap took turns out) of the
        session's live conversation, which must be an assistant turn. A second call for the
        same turn replaces the first. Feedback stays with the transcript: the retention sweep and
        ``erase_user`` delete it with the conversation, ``export_user`` includes it, and the
        view ``feedback`` shows it beside its exchange (docs/analytics.md).

        ``score``: an int from -2 to 2, so that both kinds of rating fit one column: thumbs
        down and up are -1 and 1, one to five stars are ``stars - 3``, 0 is neutral.
        ``comment``: optional text, within ``StoreConfig.max_text_chars``. ``user_id``: as
        for ``add_turn``, only the live session's owner may give feedback on it.

        Returns False, storing nothing, if there is no live session under that id or its turn
        ``seq`` is not an answer (a question, or no such turn): feedback arrives after the
        answer was shown, when the conversation may have ended, and that is no error.

        Raises:
            InvalidSessionId: a bad session or user id, before any SQL.
            InvalidTurn: ``seq`` not a positive int, ``score`` not an int from -2 to 2, or a
                ``comment`` the store cannot hold, before any SQL.
            NotSessionOwner: the live session is not ``user_id``'s; nothing was stored.
            StoreError: the database failed; nothing was stored.
        """
        sid = check_session_id(session_id)
        owner = check_owner(user_id)
        if type(seq) is not int or not 0 < seq < 2**31:
            raise InvalidTurn(f"seq must be a turn number (an int from 1), not {seq!r}")
        value = check_score(score)
        remark = check_optional_text("comment", comment, self._limits)
        ops = self._enter()
        try:
            return await self._calls.run(
                "giving feedback",
                lambda: ops.add_feedback(sid, seq, value, remark, owner),
                shield=True,
            )
        finally:
            self._calls.leave()

    async def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything stored about the user (data-subject access): each conversation, live or
        retained, with its turns, slots and results and the feedback given on it, as data
        ``json.dumps`` takes as is.

        Raises:
            InvalidSessionId: a bad user id, before any SQL.
            StoreError: the database failed.
        """
        uid = check_user_id(user_id)
        owners = self._users()
        now = utc(self._clock())
        try:
            return await self._calls.run("exporting a user", lambda: owners.export(uid, now))
        finally:
            self._calls.leave()

    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete every row of the user in every table: live sessions (other workers' caches
        drop them too), retained transcripts, their turns, slots and results, in batches of
        ``sweep_batch_size`` conversations, one transaction each. Returns the rows deleted
        per table (``sessions``, ``conversations``, ``turns``, ``turn_slots``,
        ``turn_feedback``). A session the user creates while this runs may survive it; run
        it again after blocking the user.

        Raises:
            InvalidSessionId: a bad user id, before any SQL.
            StoreError: the database failed; the batches before the failure stay erased.
        """
        uid = check_user_id(user_id)
        owners = self._users()
        batch = self.config.sweep_batch_size
        try:
            counts, ended = await self._calls.run(
                "erasing a user", lambda: owners.erase(uid, batch), shield=True
            )
        finally:
            self._calls.leave()
        for sid in ended:
            self._cache.discard(sid)
        return counts

    async def get_stats(self) -> dict[str, int]:
        """Counters since start: ``sessions_created``, ``sessions_expired`` (removed by expiry,
        on read or by the sweep), ``transcripts_deleted`` (conversations the sweep deleted past
        ``transcript_retention``), ``sessions_evicted``, ``cache_hits``, ``cache_misses``; and
        two current values: ``cached_sessions`` (also under its old name ``active_sessions``)
        and ``cache_enabled`` (0 while the cache is off because the change listener is down)."""
        return self.stats()

    def stats(self) -> dict[str, int]:
        """``get_stats()`` without ``await``, for callers that cannot await: metric callbacks
        run on their exporter's thread (see ``convostore.otel``)."""
        cache, stats = self._cache, self._stats
        cached = len(cache)
        return {
            "sessions_created": stats.created,
            "sessions_expired": stats.expired,
            "transcripts_deleted": stats.transcripts_deleted,
            "sessions_evicted": cache.evictions,
            "cache_hits": stats.hits,
            "cache_misses": stats.misses,
            "cached_sessions": cached,
            "active_sessions": cached,
            "cache_enabled": int(cache.enabled),
        }

    def add_timing_hook(self, hook: TimingHook) -> None:
        """Call ``hook(what, seconds)`` after each ``add_turn`` (``"append"``), each read of a
        session from the database (``"load"``) and each sweep batch (``"sweep.sessions"``,
        ``"sweep.transcripts"``), from the task that ran it; calls that raise are not timed.
        A hook must be quick and must not block; one that raises is logged. Without hooks
        (the default) timing costs a timed call one attribute check, a cache hit nothing."""
        self._stats.hooks = [*(self._stats.hooks or ()), hook]

    def remove_timing_hook(self, hook: TimingHook) -> None:
        """Stop calling ``hook`` (added with ``add_timing_hook``)."""
        hooks = [h for h in self._stats.hooks or () if h != hook]
        self._stats.hooks = hooks or None

    def _enter(self) -> SessionOperations:
        """Admit a call (``NotRunning`` if the repository is not running); the caller must
        ``self._calls.leave()`` when it ends."""
        self._calls.enter()
        assert self._ops is not None
        return self._ops

    def _users(self) -> Owners:
        """``_enter`` for the per-user calls."""
        self._calls.enter()
        assert self._owners is not None
        return self._owners
