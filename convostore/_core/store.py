"""The SQL behind each repository call: one short transaction per operation.

``SqlStore`` knows the statements (``backends/_statements.py``) and the backend, nothing of
the cache.
Every method is one transaction or one atomic statement, so an error or a cancelled task leaves
both turns of an exchange stored or neither. Turn sequence numbers come from the session row:
the UPDATE that bumps ``turn_count`` locks the row, so concurrent writers to one session take
turns, in any number of processes.

The three paths every request takes (append, load, refresh expiry) run on the backend's fast
path: the same statements, compiled once, on the pooled driver connection; or, while something
watches SQLAlchemy's statements (asked per operation) or when ``fast_path`` is off, the same
compiled statements through SQLAlchemy's execution (``backends/_executor.py``). The rarer
ones (create, update, delete, the append that must first create its session) go through SQLAlchemy's
execution as usual.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any, NamedTuple, cast

from sqlalchemy import Select, Update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.crypt import SEALED_MARK, TurnCipher, refuse_sealed
from convostore._core.gate import Gate
from convostore._core.history import HistoryEdits
from convostore._core.schema import (
    TURN_FIELDS,
    opened_fields,
    opened_json,
    rows_of_turns,
    sealed_json,
    turn_at,
)
from convostore.backends import Backend, backend_for
from convostore.backends._core_path import CoreExecutor
from convostore.backends._executor import (
    AppendsInGroups,
    Executors,
    LoadsInParts,
    WritesTransactions,
)
from convostore.backends._fast import Compiled, ConnectionLender
from convostore.backends._statements import Statements, UpdateThenRead
from convostore.errors import (
    InvalidTurn,
    NotSessionOwner,
    StoreError,
    causes,
    register_driver_errors,
)
from convostore.models import (
    SESSION_COLUMNS,
    ConversationTurn,
    SessionFields,
    StoredSession,
    make_turn,
    name_ordered,
)

__all__ = ["CHANGES_KEPT", "SqlStore", "WriteOutcome"]

CHANGES_KEPT = 100_000
"""Rows of the change feed the sweep keeps. A process whose poll fell further behind than
that (seconds of heavy writing) sees the gap and drops its whole cache."""


@dataclass(slots=True)
class WriteOutcome:
    """What a write committed: the session's new version, whether the write created the
    session (and removed an expired one first), and the turns it stored."""

    version: int
    created: bool
    expired_removed: bool
    turns: list[ConversationTurn]
    """The turns as stored, with their ``created_at``."""
    duplicate: bool = False
    """The write's idempotency key was stored already: nothing was written this time (the
    other fields are then meaningless)."""
    stale: bool = False
    """The session was not at the expected version: nothing was written."""
    trimmed: int = 0
    """How many of the oldest turns ``max_turns_per_session`` took out of the live
    conversation after this write."""


_DUPLICATE = WriteOutcome(-1, False, False, [], duplicate=True)
_STALE = WriteOutcome(-1, False, False, [], stale=True)


def _session_write(
    sid: str, now: datetime, ttl: float, hits: int, uid: str | None
) -> dict[str, Any]:
    """The parameters every write of a session row takes: the session, the time, the expiry
    it slides to, the reads it adds to ``access_count`` (``hits`` not yet counted, and the
    write's own), and whose write it is."""
    return {
        "sid": sid,
        "now": now,
        "expires": now + timedelta(seconds=ttl),
        "hits": hits + 1,
        "uid": uid,
    }


def _stamped(turns: Sequence[ConversationTurn], created_at: datetime) -> list[ConversationTurn]:
    return [turn_at(turn, created_at) for turn in turns]


def _rows(
    sid: str,
    cid: int,
    first_seq: int,
    new_turns: Sequence[ConversationTurn],
    now: datetime,
    key: str | None,
    cipher: TurnCipher | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of turns numbered from ``first_seq`` in conversation ``cid``, written at
    ``now`` (encrypted with ``cipher``); the first turn carries the write's idempotency
    ``key``."""
    return rows_of_turns(
        sid,
        cid,
        (
            (seq, turn, now, key if seq == first_seq else None)
            for seq, turn in enumerate(new_turns, first_seq)
        ),
        cipher,
    )


class SqlStore:
    """The operations of a ``SessionRepository``, on one engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool,
        fast_path: bool = True,
        retention: float = 0,
        gate: Gate | None = None,
        default_language: str | None = None,
        auto_title: bool = False,
        cipher: TurnCipher | None = None,
        max_turns: int | None = None,
    ) -> None:
        """``gate``: where the operations on an engine convostore created wait for a
        connection (``calls.CallLifecycle``), whose hot path may keep connections between
        operations (``_fast.ConnectionLender``); None for an engine passed in. ``cipher``:
        what encrypts turns at rest (``StoreConfig.encryption_keys``), None: nothing does."""
        self.engine = engine
        self.cipher = cipher
        self.retention = retention
        """Seconds a transcript stays after its session ended (0: it goes with the session)."""
        self.default_language = default_language
        """The language of a session created here (``StoreConfig.default_language``)."""
        self.auto_title = auto_title
        """Whether an append titles a session without a title (``StoreConfig.auto_title``)."""
        self.max_turns = max_turns
        """The most turns a live conversation keeps (``StoreConfig.max_turns_per_session``):
        an append beyond it takes the oldest exchanges out, in its transaction."""
        dialect = engine.dialect
        backend = backend_for(engine)
        register_driver_errors(backend)
        self.sql = sql = Statements(backend)
        self.history = HistoryEdits(backend)
        self._executors = Executors(
            engine,
            owns_engine=owns_engine,
            fast_path=fast_path,
            gate=gate,
        )
        one_statement = sql.append_cte
        self._live_append = Compiled(
            sql.allocate if one_statement is None else one_statement, dialect
        )
        self._live_append_row = (
            Compiled(sql.append_row, dialect) if sql.append_row is not None else None
        )
        self._insert_turns = Compiled(sql.insert_turns, dialect)
        self._insert_slots = Compiled(sql.insert_slots, dialect)
        self._numbering = {
            compiled: (compiled.position("conversation_id"), compiled.position("seq"))
            for compiled in (self._insert_turns, self._insert_slots)
        }
        """Where an insert's conversation and turn number go in its arguments."""
        self._slide_expiry = Compiled(sql.slide_expiry, dialect)
        self._drop_expired = Compiled(sql.drop_expired, dialect)
        self._load = load = Compiled(sql.load, dialect)
        self._session_of = _SessionOf(load)
        self._seq_at = load.columns["seq"]
        self._turn_row = _TurnRow.of(load)
        self._slot_at = (load.columns["name"], load.columns["value"])
        self._load_session = head = Compiled(sql.load_session, dialect)
        self._session_of_head = _SessionOf(head)
        self._newest_at = (head.columns["turn_count"], head.columns["conversation_id"])
        """Where the session row of a load in parts has its newest turn's number and its
        conversation, which bound the turn and slot reads."""
        self._load_turns = turn_part = Compiled(sql.load_turns, dialect)
        self._load_slots = Compiled(sql.load_slots, dialect)
        self._part_row = _TurnRow.of(turn_part)
        self._sweep = Compiled(sql.sweep, dialect)
        self._sweep_transcripts = Compiled(sql.sweep_transcripts, dialect)
        self._version_of = Compiled(sql.version_of, dialect)

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """``engine.begin()`` for a write: on SQLite in its turn after this process's other
        write transactions (``Executors.writes``), before it takes a connection. It always finds
        one: fast-path writers hold theirs while they wait for the turn, but the repository
        lets in no more operations than the pool has connections, and of the connections the
        fast path kept, all but one go back to the pool first: it keeps that one only while
        the pool could lend another (``ConnectionLender.give_back``)."""
        await self._executors.lender.release(keep=1)
        writes = self._executors.writes
        async with writes.turn() if writes else nullcontext(), self.engine.begin() as conn:
            yield conn

    async def close(self) -> None:
        """Give back the connection the hot path kept (before the engine is disposed)."""
        await self._executors.close()

    @property
    def lender(self) -> ConnectionLender:
        """What lends the hot path its connections (``_fast.ConnectionLender``)."""
        return self._executors.lender

    @property
    def fast_path(self) -> bool:
        """Whether the hot paths run on the driver directly now (see ``backends/_executor.py``)."""
        return not isinstance(self._executors.pick(), CoreExecutor)

    async def create(
        self, sid: str, now: datetime, ttl: float, uid: str | None = None
    ) -> tuple[bool, bool]:
        """Create an empty session owned by ``uid`` unless a live one exists. Returns
        (created, expired_removed)."""
        async with self._begin() as conn:
            return await self._ensure(conn, sid, now, ttl, uid)

    async def _ensure(
        self, conn: AsyncConnection, sid: str, now: datetime, ttl: float, uid: str | None
    ) -> tuple[bool, bool]:
        """Create the session, with a new conversation, unless a live one exists; an expired
        one is removed first (its conversation ends)."""
        sql = self.sql
        expired = (await conn.execute(sql.drop_expired, {"sid": sid, "now": now})).scalar()
        if expired is not None and self.retention <= 0:
            await conn.execute(sql.delete_conversation, {"sid": sid, "cid": expired})
        cid = await conn.execute(sql.start_conversation, {"sid": sid, "uid": uid, "now": now})
        conversation_id = cid.scalar_one()
        created = await conn.execute(
            sql.create,
            {
                "session_id": sid,
                "conversation_id": conversation_id,
                "user_id": uid,
                "created_at": now,
                "last_accessed": now,
                "expires_at": now + timedelta(seconds=ttl),
                "access_count": 0,
                **SessionFields(language=self.default_language).state_values(),
                "last_activity": now,
                "turn_count": 0,
                "version": 0,
            },
        )
        if created.scalar() != conversation_id:
            # A concurrent creator won: its conversation is the live one.
            await conn.execute(sql.delete_conversation, {"sid": sid, "cid": conversation_id})
            return False, expired is not None
        return True, expired is not None

    async def _check_owner(
        self, conn: AsyncConnection, sid: str, uid: str | None, now: datetime
    ) -> None:
        """Raise ``NotSessionOwner`` if ``sid`` is live and ``uid`` may not write it. This only
        names the reason a write found no row: the writes themselves carry the condition, so
        a session that changed hands in between is not written either."""
        if uid is None:
            return
        owner = (await conn.execute(self.sql.owner_of, {"sid": sid, "now": now})).first()
        if owner is not None and owner[0] != uid:
            raise NotSessionOwner(f"session {sid!r} belongs to another user")

    async def append(
        self,
        sid: str,
        new_turns: Sequence[ConversationTurn],
        *,
        merge_slots: dict[str, str],
        template_id: str | None,
        now: datetime,
        ttl: float,
        hits: int,
        key: str,
        create: bool,
        uid: str | None = None,
    ) -> WriteOutcome | None:
        """Append turns after whatever is stored, merging slots and template into the session
        row, unless the append with idempotency ``key`` is stored already (then the result says
        ``duplicate``). A missing or expired session is created first (owned by ``uid``) if
        ``create``; otherwise the result is None and nothing is written. With ``uid``, a live
        session of another owner is never written: ``create`` raises ``NotSessionOwner``.

        Without ``create`` this is one statement (or one SQLite transaction in one call), so a
        cancelled caller leaves it done or not done; creating takes a SQLAlchemy transaction.
        Either way, sending the same append again after an unknown outcome stores it once."""
        params: dict[str, Any] = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits + 1,
            "n": len(new_turns),
            "merge": merge_slots,
            "template_id": template_id,
            "auto_title": self.title_for(new_turns) if self.auto_title else None,
            "key": key,
            "uid": uid,
        }
        if self.max_turns is None:
            try:
                row = await self._append_to_live(params, new_turns)
            except Exception as exc:
                if _is_key_conflict(self.sql.backend, exc):
                    return _DUPLICATE
                raise
            if row is not None:
                return WriteOutcome(row[1], False, False, _stamped(new_turns, now))
            if not create:
                return None
        async with self._begin() as conn:
            created = expired = False
            if create:
                created, expired = await self._ensure(conn, sid, now, ttl, uid)
                if not created:
                    await self._check_owner(conn, sid, uid, now)
                    if await self._key_stored(conn, sid, key):
                        return _DUPLICATE
            allocated = await _returned(conn, self.sql.allocate, params)
            if allocated is None:
                return None  # capped, not live (or stored already): create=True tells which
            await self._insert(conn, sid, allocated, new_turns, now, key)
            trimmed = await self._cap(conn, sid, allocated, now)
        return WriteOutcome(
            allocated[1], created, expired, _stamped(new_turns, now), trimmed=trimmed
        )

    async def _cap(
        self, conn: AsyncConnection, sid: str, allocated: Sequence[Any], now: datetime
    ) -> int:
        """Hold the live conversation to ``max_turns`` after a write that numbered its turns
        up to ``allocated`` (turn_count, version, conversation_id); returns how many of the
        oldest turns it took out."""
        if self.max_turns is None:
            return 0
        return await self.history.cap(
            conn, sid, allocated[2], allocated[0], self.max_turns, now=now
        )

    def title_for(self, new_turns: Sequence[ConversationTurn]) -> str | None:
        """The title an append of ``new_turns`` gives a session that has none: None unless
        ``auto_title`` and one of them is a user turn; else the first user turn's text, its
        whitespace collapsed, cut at a word to at most ``AUTO_TITLE_CHARS`` characters (with
        an ellipsis)."""
        if not self.auto_title:
            return None
        first = next((turn for turn in new_turns if turn.role == "user"), None)
        if first is None:
            return None
        words = " ".join(first.content.split())
        if len(words) <= AUTO_TITLE_CHARS:
            return words or None
        cut = words[: AUTO_TITLE_CHARS - 1]
        if " " in cut:
            cut = cut[: cut.rindex(" ")]
        return cut + "\u2026"

    async def set_fields(
        self,
        sid: str,
        values: dict[str, Any],
        *,
        now: datetime,
        ttl: float,
        hits: int,
        uid: str | None,
    ) -> int | None:
        """Set one group of ``models.FIELD_WRITES`` (``values``, by name) of the live session
        ``sid``. Returns its new version, or None if it is not live. With ``uid``, a live
        session of another owner is never written: ``NotSessionOwner``. A summary of turns
        the session does not have raises ``InvalidTurn``."""
        params = {**_session_write(sid, now, ttl, hits, uid), **values}
        async with self._begin() as conn:
            row = await _returned(conn, self.sql.set_fields[tuple(values)], params)
            if row is None:
                await self._check_owner(conn, sid, uid, now)
                live = (await conn.execute(self.sql.owner_of, params)).first()
                if live is not None and values.get("summary_upto") is not None:
                    raise InvalidTurn(
                        f"upto_seq {values['summary_upto']} is beyond the turns of session "
                        f"{sid!r}; nothing was stored"
                    )
                return None
        return int(row[1])

    async def add_feedback(
        self,
        sid: str,
        seq: int,
        score: int,
        comment: str | None,
        *,
        now: datetime,
        uid: str | None,
    ) -> bool:
        """Store the feedback on answer ``seq`` of the live session ``sid``, replacing any
        given before. Returns False, storing nothing, if there is no live session or turn
        ``seq`` of its conversation is not an answer; with ``uid``, a live session of another
        owner raises ``NotSessionOwner``."""
        params = {
            "sid": sid,
            "uid": uid,
            "seq": seq,
            "score": score,
            "comment": comment,
            "now": now,
        }
        async with self._begin() as conn:
            stored = (await conn.execute(self.sql.give_feedback, params)).rowcount
            if not stored:
                await self._check_owner(conn, sid, uid, now)
        return bool(stored)

    async def _key_stored(self, conn: AsyncConnection, sid: str, key: str | None) -> bool:
        if key is None:
            return False
        found = await conn.execute(self.sql.key_stored, {"sid": sid, "key": key})
        return found.first() is not None

    async def _append_to_live(
        self, params: dict[str, Any], new_turns: Sequence[ConversationTurn]
    ) -> tuple[Any, ...] | None:
        """The append on a live session, in one round trip (PostgreSQL) or one thread hop
        (SQLite). Returns (turn_count, version), or None if the session is not live."""
        driver = self._executors.pick()
        if self.sql.append_cte is not None:
            roles, contents, resolved, templates, results = [], [], [], [], []
            traces, spans, tools, calls, arguments, data = [], [], [], [], [], []
            ords, names, values = [], [], []
            cipher = self.cipher
            for ord_, turn in enumerate(new_turns, start=1):
                roles.append(turn.role)
                templates.append(turn.template_id)
                if cipher is None:
                    contents.append(turn.content)
                    resolved.append(turn.resolved_question)
                    results.append(json.dumps(turn.results))
                else:
                    contents.append(cipher.seal(turn.content))
                    resolved.append(cipher.seal_optional(turn.resolved_question))
                    results.append(json.dumps(cipher.seal_results(turn.results)))
                traces.append(turn.trace_id)
                spans.append(turn.span_id)
                tools.append(turn.tool_name)
                calls.append(turn.tool_call_id)
                sealed_arguments, sealed_data = sealed_json(cipher, turn.tool_arguments, turn.data)
                arguments.append(_json_or_null(sealed_arguments))
                data.append(_json_or_null(sealed_data))
                for name, value in turn.slots.items():
                    ords.append(ord_)
                    names.append(name)
                    values.append(value)
            params.update(
                roles=roles,
                contents=contents,
                resolved=resolved,
                templates=templates,
                results=results,
                traces=traces,
                spans=spans,
                tools=tools,
                calls=calls,
                arguments=arguments,
                data=data,
                slot_ords=ords,
                slot_names=names,
                slot_values=values,
            )
            grouped = self._live_append_row
            if driver.appends_in_groups and grouped is not None:
                records = await cast(AppendsInGroups, driver).append(
                    self._live_append, grouped, params
                )
            else:
                records = await driver.write(self._live_append, params)
            return tuple(records[0]) if records else None

        # The rows are bound now, numbered from 0 in conversation 0; the worker thread only
        # sets the conversation and adds the first number once the head statement told them.
        turn_rows, slot_rows = _rows(
            params["sid"], 0, 0, new_turns, params["now"], params["key"], self.cipher
        )
        bound = [
            (compiled, [compiled.args(row) for row in rows], *self._numbering[compiled])
            for compiled, rows in ((self._insert_turns, turn_rows), (self._insert_slots, slot_rows))
        ]

        def inserts(row: tuple[Any, ...]) -> list[tuple[Compiled, list[list[Any]]]]:
            first, cid = row[0] - len(new_turns) + 1, row[2]
            for _, many, cid_at, seq_at in bound:
                for args in many:
                    args[cid_at] = cid
                    args[seq_at] += first
            return [(compiled, many) for compiled, many, _, _ in bound]

        rows = await cast(WritesTransactions, driver).write_transaction(
            self._live_append, params, inserts
        )
        return rows[0] if rows else None

    async def _insert(
        self,
        conn: AsyncConnection,
        sid: str,
        allocated: Sequence[Any],
        new_turns: Sequence[ConversationTurn],
        now: datetime,
        key: str | None,
    ) -> None:
        """Insert the turns (and slots) numbered by ``allocated``, the row of ``allocate`` or
        ``replace``: (turn_count, version, conversation_id)."""
        last_seq, _, cid = allocated
        turn_rows, slot_rows = _rows(
            sid, cid, last_seq - len(new_turns) + 1, new_turns, now, key, self.cipher
        )
        if turn_rows:
            await conn.execute(self.sql.insert_turns, turn_rows)
        if slot_rows:
            await conn.execute(self.sql.insert_slots, slot_rows)

    async def update(
        self,
        sid: str,
        fields: SessionFields,
        new_turns: Sequence[ConversationTurn],
        all_turns: Sequence[ConversationTurn],
        *,
        now: datetime,
        ttl: float,
        hits: int,
        key: str | None,
        expected: int | None,
        uid: str | None = None,
    ) -> WriteOutcome:
        """Write the session fields and append ``new_turns`` after whatever is stored. A
        missing or expired session is created with ``all_turns`` (owned by ``uid``). With new
        turns, ``key`` makes the write idempotent like ``append``'s. With ``uid``, a live
        session of another owner is never written: ``NotSessionOwner``.

        ``expected`` None: the last writer wins. Otherwise nothing is written (the result
        says ``stale``) unless the live session is at that version, or, for -1, there is no
        live session."""
        params = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits + 1,
            "n": len(new_turns),
            **fields.state_values(),
            "key": key,
            "expected": expected,
            "uid": uid,
        }
        first = self.sql.replace if expected is None else self.sql.replace_if_unchanged
        async with self._begin() as conn:
            row = await _returned(conn, first, params)
            created = expired = False
            if row is None:
                if await self._key_stored(conn, sid, key):
                    return _DUPLICATE
                if expected is not None and expected >= 0:
                    await self._check_owner(conn, sid, uid, now)
                    return _STALE
                created, expired = await self._ensure(conn, sid, now, ttl, uid)
                if not created:
                    await self._check_owner(conn, sid, uid, now)
                    if expected is not None:
                        return _STALE
                if created:
                    new_turns = all_turns
                    params["n"] = len(new_turns)
                row = await _returned(conn, self.sql.replace, params)
                assert row is not None
            await self._insert(conn, sid, row, new_turns, now, key)
            trimmed = await self._cap(conn, sid, row, now)
        return WriteOutcome(row[1], created, expired, _stamped(new_turns, now), trimmed=trimmed)

    async def rewind(
        self,
        sid: str,
        to_seq: int,
        last_seq: int,
        fields: SessionFields,
        *,
        expected: int,
        now: datetime,
        ttl: float,
        hits: int,
        uid: str | None,
    ) -> int | None:
        """Take the turns after ``to_seq`` (to ``last_seq``) out of the live session at
        version ``expected`` into a conversation of their own, setting its fields to
        ``fields``. Returns the new version, or None (nothing written) if the session is not
        live or not at that version any more. With ``uid``, a live session of another owner
        is never written: ``NotSessionOwner``."""
        params = {
            **_session_write(sid, now, ttl, hits, uid),
            "expected": expected,
            "to": to_seq,
            **fields.state_values(),
        }
        async with self._begin() as conn:
            row = await _returned(conn, self.sql.rewind, params)
            if row is None:
                await self._check_owner(conn, sid, uid, now)
                return None
            await self.history.take_out(
                conn, sid, row[2], to_seq + 1, last_seq, reason="rewind", now=now
            )
        return int(row[1])

    async def fork(
        self,
        sid: str,
        fields: SessionFields,
        new_turns: Sequence[ConversationTurn],
        *,
        source: str,
        upto: int,
        now: datetime,
        ttl: float,
        key: str,
        uid: str | None,
    ) -> WriteOutcome:
        """Create session ``sid`` with ``fields`` and ``new_turns`` (numbered from 1), its
        conversation recording that its history is ``source``'s up to turn ``upto``, owned
        by ``uid`` or else by ``source``'s owner. Sent again after a lost connection
        (the same ``key``), it finds the first attempt's and stores nothing."""
        async with self._begin() as conn:
            source_cid, source_owner = await self.history.source(conn, source)
            owner = uid if uid is not None else source_owner
            created, expired = await self._ensure(conn, sid, now, ttl, owner)
            if not created:
                if await self._key_stored(conn, sid, key) or not new_turns:
                    return _DUPLICATE
                raise StoreError(f"the new session id {sid!r} is taken; nothing was stored")
            params = {
                **_session_write(sid, now, ttl, 0, owner),
                "n": len(new_turns),
                **fields.state_values(),
                "key": key,
            }
            row = await _returned(conn, self.sql.replace, params)
            assert row is not None
            await self._insert(conn, sid, row, new_turns, now, key)
            trimmed = await self._cap(conn, sid, row, now)
            lineage = {"source": source, "source_cid": source_cid, "upto": upto}
            await conn.execute(self.history.mark_fork, {"sid": sid, "cid": row[2], **lineage})
        return WriteOutcome(row[1], True, expired, _stamped(new_turns, now), trimmed=trimmed)

    async def slide_expiry(self, sid: str, now: datetime, ttl: float, hits: int) -> int | None:
        """Slide a live session's expiry. Returns its version, or None if it is not live."""
        params = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits,
        }
        rows = await self._executors.pick().write(self._slide_expiry, params)
        return int(rows[0][0]) if rows else None

    async def slide_expiries(
        self, refreshes: Sequence[tuple[str, datetime, int]], ttl: float
    ) -> None:
        """Write refreshes reads left behind, (session id, read at, hits) each, in one
        transaction, in session id order so that concurrent flushes lock rows alike."""
        params = [
            {"sid": sid, "now": now, "expires": now + timedelta(seconds=ttl), "hits": hits}
            for sid, now, hits in sorted(refreshes)
        ]
        async with self._begin() as conn:
            await conn.execute(self.sql.slide_expiry_behind, params)

    async def drop_expired(self, sid: str, now: datetime) -> bool:
        """Delete the session if it has expired (without retention, its conversation too).
        Returns whether a row went."""
        rows = await self._executors.pick().write(self._drop_expired, {"sid": sid, "now": now})
        if rows and self.retention <= 0:
            async with self._begin() as conn:
                await conn.execute(self.sql.delete_conversation, {"sid": sid, "cid": rows[0][0]})
        return bool(rows)

    async def delete(self, sid: str, now: datetime, uid: str | None = None) -> bool:
        """Delete the session (its conversation ends; without retention it goes too, with its
        turns). Returns whether it was live. With ``uid``, only a session of that owner goes;
        a live one of another owner raises ``NotSessionOwner``."""
        async with self._begin() as conn:
            row = (await conn.execute(self.sql.delete, {"sid": sid, "uid": uid})).first()
            if row is None:
                await self._check_owner(conn, sid, uid, now)
                return False
            if self.retention <= 0:
                await conn.execute(self.sql.delete_conversation, {"sid": sid, "cid": row[1]})
        return bool(row[0] > now)

    async def version_of(self, sid: str) -> tuple[int, datetime] | None:
        """The stored session's version and expiry, or None if there is no such row."""
        rows = await self._executors.pick().read(self._version_of, {"sid": sid})
        if not rows:
            return None
        version, expires_at = self._version_of.row(rows[0])
        return int(version), expires_at

    async def sweep_batch(self, now: datetime, batch_size: int) -> list[str]:
        """Delete up to ``batch_size`` sessions that expired by ``now``, in one statement (its
        own transaction) on the driver path. Returns their ids. The last batch of a sweep
        (fewer than ``batch_size``) also prunes the change feed to its newest rows."""
        rows = await self._executors.pick().write(self._sweep, {"now": now, "batch": batch_size})
        if len(rows) < batch_size:
            async with self._begin() as conn:
                await conn.execute(self.sql.prune_changes, {"keep": CHANGES_KEPT})
        return [row[0] for row in rows]

    async def sweep_transcripts_batch(self, now: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` conversations that ended ``retention`` or more before
        ``now``, with their turns and slots, in one statement. Returns how many went."""
        cutoff = now - timedelta(seconds=self.retention)
        rows = await self._executors.pick().write(
            self._sweep_transcripts, {"cutoff": cutoff, "batch": batch_size}
        )
        return len(rows)

    async def load(self, sid: str, window: int | None = None) -> StoredSession | None:
        """Read a session and its turns, or its ``window`` newest turns (expired or not; the
        caller decides)."""
        driver = self._executors.pick()
        if window is None:
            window = _ALL_TURNS
        if driver.loads_in_parts:
            return await self._load_in_parts(cast(LoadsInParts, driver), sid, window)
        rows = await driver.read(self._load, {"sid": sid, "window": window})
        if not rows or rows[0][self._seq_at] != 0:
            return None
        turns = _fold_turns(rows[1:], self._turn_row, self._slot_at, self.cipher)
        return self._session_of(self._load.row(rows[0]), turns, window)

    async def _load_in_parts(
        self, driver: LoadsInParts, sid: str, window: int
    ) -> StoredSession | None:
        """``load`` on SQLite's fast path: the session row, its turns and their slots, three
        range scans in one snapshot (see ``Statements.load_session``)."""

        upto_at, cid_at = self._newest_at

        def turns_and_slots(head: Sequence[Any]) -> list[tuple[Compiled, dict[str, Any]]]:
            upto, cid = head[upto_at], head[cid_at]
            params = {"sid": sid, "cid": cid, "upto": upto, "after": upto - window}
            return [(self._load_turns, params), (self._load_slots, params)]

        heads, parts = await driver.read_parts(self._load_session, {"sid": sid}, turns_and_slots)
        if not heads:
            return None
        turn_rows, slot_rows = parts
        turns = _turns(turn_rows, _slots_by_turn(slot_rows), self._part_row, self.cipher)
        return self._session_of_head(self._load_session.row(heads[0]), turns, window)


class _SessionOf:
    """Decodes a load's session row into a ``StoredSession``, by name: from the JSON object in
    its column ``session`` (the one-statement load), or from its columns named as the fields
    (SQLite's load in parts)."""

    __slots__ = ("_at", "_object_at")

    def __init__(self, load: Compiled) -> None:
        at = load.columns
        self._object_at = at.get("session")
        self._at = [] if "session" in at else [(name, at[name]) for name in SESSION_COLUMNS]

    def __call__(
        self, row: Sequence[Any], turns: list[ConversationTurn], window: int
    ) -> StoredSession:
        """The session of ``row`` (result processors applied) with ``turns``, read as the
        ``window`` newest."""
        if self._object_at is not None:
            values = dict(row[self._object_at])
        else:
            values = {name: row[index] for name, index in self._at}
        values["current_slots"] = name_ordered(values["current_slots"])
        values["metadata"] = values["metadata"] or {}
        values["last_accessed"] = _epoch(values["last_accessed"])
        values["expires_at"] = _epoch(values["expires_at"])
        return StoredSession(turns=turns, complete=len(turns) < window, **values)


def _epoch(stamp: datetime | str) -> float:
    """A stored timestamp as epoch seconds: a ``UTCDateTime`` column's value, or its text in
    a JSON object (ISO 8601; SQLite's is UTC without an offset)."""
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


class _TurnRow(NamedTuple):
    """How to read a load's turn rows: their columns, and SQLAlchemy's conversions of the
    JSON and ``created_at`` columns."""

    columns: itemgetter[tuple[Any, ...]]
    """A row's (seq, role, content, resolved_question, template_id, results, created_at,
    trace_id, span_id, tool_name, tool_call_id, tool_arguments, data)."""
    load_results: Callable[[Any], Any]
    load_created_at: Callable[[Any], Any]
    load_json: Callable[[Any], Any]
    """The conversion of ``tool_arguments`` and ``data`` (NULL reads as None)."""

    @classmethod
    def of(cls, statement: Compiled) -> _TurnRow:
        at, processors = statement.columns, statement.processors
        return cls(
            itemgetter(*(at[column.key] for column in TURN_FIELDS)),
            processors[at["results"]] or _unchanged,
            processors[at["created_at"]] or _unchanged,
            processors[at["data"]] or _unchanged,
        )


def _fold_turns(
    rows: Sequence[Sequence[Any]],
    layout: _TurnRow,
    slot_at: tuple[int, int],
    cipher: TurnCipher | None,
) -> list[ConversationTurn]:
    """The turns of the one-statement load's rows after the session's: each turn's row, then
    its slot rows (whose name and value are at ``slot_at``); encrypted fields opened with
    ``cipher`` (``schema.opened_fields``).

    One pass, each turn's slots filled in as they follow it: this is PostgreSQL's cold load,
    and splitting the rows first (to share ``_turns`` with SQLite's load in parts) added a
    pass over every row."""
    name_at, value_at = slot_at
    columns, load_results, load_created_at, load_json = layout
    result: list[ConversationTurn] = []
    slots: dict[str, str] = {}
    stamp: Any = None
    stamped: Any = None
    for row in rows:
        name = row[name_at]
        if name is not None:
            slots[name] = row[value_at]
            continue
        (_, role, content, resolved, template_id, results, created_at, trace, span, tool,
         call, arguments, data) = columns(row)  # fmt: skip
        if created_at != stamp:  # both turns of an exchange share it: convert it once
            stamp, stamped = created_at, load_created_at(created_at)
        if cipher is not None:
            content, resolved, results = opened_fields(
                cipher, content, resolved, load_results(results)
            )
        else:
            if content.startswith(SEALED_MARK):  # inline: a cold load's loop
                refuse_sealed(content)
            results = load_results(results)
        if arguments is not None or data is not None:
            arguments, data = opened_json(cipher, load_json(arguments), load_json(data))
        slots = {}
        result.append(
            make_turn(
                role=role,
                content=content,
                resolved_question=resolved,
                template_id=template_id,
                slots=slots,
                results=results,
                created_at=stamped,
                trace_id=trace,
                span_id=span,
                tool_name=tool,
                tool_call_id=call,
                tool_arguments=arguments,
                data=data,
            )
        )
    return result


def _slots_by_turn(rows: Iterable[Sequence[Any]]) -> dict[int, dict[str, str]]:
    """Slot rows (seq, name, value) as each turn's slots, by seq."""
    slots: dict[int, dict[str, str]] = {}
    for seq, name, value in rows:
        slots.setdefault(seq, {})[name] = value
    return slots


def _turns(
    rows: Sequence[Sequence[Any]],
    slots: dict[int, dict[str, str]],
    layout: _TurnRow,
    cipher: TurnCipher | None,
) -> list[ConversationTurn]:
    """Turn rows, in order, into turns with their ``slots``, encrypted fields opened with
    ``cipher``.

    The ``results`` and ``created_at`` conversions are applied here rather than to every row
    beforehand, because this loop is most of a cold load's Python time."""
    columns, load_results, load_created_at, load_json = layout
    result: list[ConversationTurn] = []
    stamp: Any = None
    stamped: Any = None
    for row in map(columns, rows):
        (seq, role, content, resolved, template_id, results, created_at, trace, span, tool,
         call, arguments, data) = row  # fmt: skip
        if created_at != stamp:  # both turns of an exchange share it: convert it once
            stamp, stamped = created_at, load_created_at(created_at)
        if cipher is not None:
            content, resolved, results = opened_fields(
                cipher, content, resolved, load_results(results)
            )
        else:
            if content.startswith(SEALED_MARK):  # inline: a cold load's loop
                refuse_sealed(content)
            results = load_results(results)
        if arguments is not None or data is not None:
            arguments, data = opened_json(cipher, load_json(arguments), load_json(data))
        result.append(
            make_turn(
                role=role,
                content=content,
                resolved_question=resolved,
                template_id=template_id,
                slots=slots.get(seq) or {},
                results=results,
                created_at=stamped,
                trace_id=trace,
                span_id=span,
                tool_name=tool,
                tool_call_id=call,
                tool_arguments=arguments,
                data=data,
            )
        )
    return result


def _unchanged(value: Any) -> Any:
    return value


def _json_or_null(value: Any) -> str | None:
    """An optional JSON value as the one-statement append binds it: its text, None for NULL."""
    return None if value is None else json.dumps(value)


AUTO_TITLE_CHARS = 80
"""The longest title ``StoreConfig.auto_title`` makes from a question."""

_ALL_TURNS = 2**31 - 1
"""The load's window when it reads every turn (sequence numbers are 32-bit)."""

_KEY_INDEX = "ix_turns_session_id_conversation_id_idempotency_key"


async def _returned(
    conn: AsyncConnection,
    statement: Update | Select[Any] | UpdateThenRead,
    params: Mapping[str, Any],
) -> Sequence[Any] | None:
    """The row a write returns (None: it changed none), in one statement or, on a backend
    without ``UPDATE ... RETURNING``, as the update and then the read."""
    if isinstance(statement, UpdateThenRead):
        if not (await conn.execute(statement.update, params)).rowcount:
            return None
        statement = statement.read
    return (await conn.execute(statement, params)).first()


def _is_key_conflict(backend: Backend, exc: BaseException) -> bool:
    """Whether a write failed on the idempotency key's unique index: a concurrent call with
    the same key stored the exchange first (SQLite's writers never overlap)."""
    return any(backend.is_key_conflict(error, _KEY_INDEX) for error in causes(exc))
