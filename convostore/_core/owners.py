"""What convostore keeps about one user: their conversations listed, exported and erased.

These read and delete by ``conversations.user_id``, which covers live sessions and retained
transcripts alike (a live session's conversation carries the same owner as its session row).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Index,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    delete,
    func,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.crypt import TurnCipher
from convostore._core.schema import (
    TRANSCRIPT_SLOTS,
    TRANSCRIPT_TURNS,
    UTCDateTime,
    conversations,
    exported,
    grouped_turns,
    is_live,
    live_session,
    of_conversation,
    session_field,
    sessions,
    turn_feedback,
    turn_slots,
    turns,
)
from convostore.backends import Backend, backend_for
from convostore.errors import InvalidPage
from convostore.models import STATE_FIELDS, ConversationSummary, SessionPage

__all__ = ["ERASED_TABLES", "ORDERS", "Listing", "Owners", "decode_cursor", "encode_cursor"]

ERASED_TABLES = ("sessions", "conversations", "turns", "turn_slots", "turn_feedback")
"""The keys of ``erase_user``'s counts: every table that holds a user's rows."""

_uid = bindparam("uid", type_=String())
_ids: BindParameter[Any] = bindparam("ids", expanding=True)
_c, _s, _t, _slot, _f = conversations.c, sessions.c, turns.c, turn_slots.c, turn_feedback.c


def _among(columns: Any) -> Any:
    """``columns`` hold a row of one of the conversations ``ids`` ((session_id,
    conversation_id) pairs)."""
    return tuple_(columns.session_id, columns.conversation_id).in_(_ids)


def _ended_turns() -> Any:
    """How many turns an ended conversation kept (a live one counts them in its session)."""
    return select(func.count()).where(of_conversation(_t)).scalar_subquery()


ORDERS = ("last_activity", "started")
"""The orders ``list_sessions`` pages in."""


def encode_cursor(order: str, summary: ConversationSummary) -> str:
    """The opaque cursor of the page after ``summary`` in ``order``."""
    key: list[Any] = [order, summary.conversation_id]
    if order == "last_activity":
        key.append(summary.last_activity.isoformat())
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(order: str, cursor: object) -> tuple[int, datetime | None]:
    """(conversation id, last activity) of a cursor ``encode_cursor`` made for ``order``;
    ``InvalidPage`` for anything else, before any SQL."""
    try:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if order == "last_activity":
            kind, cid, stamp = key
            at: datetime | None = datetime.fromisoformat(stamp)
            if at is None or at.tzinfo is None:
                raise ValueError
        else:
            (kind, cid), at = key, None
        if kind != order or type(cid) is not int or cid < 1:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidPage(
            f"cursor {cursor!r} is not a next_cursor that list_sessions returned for "
            f"order={order!r}"
        ) from None
    return cid, at


class Listing(NamedTuple):
    """What one page of ``list_sessions`` asks for, checked."""

    uid: str
    limit: int
    order: str
    after: tuple[int, datetime | None] | None
    """The cursor's (conversation id, last activity): the page starts after it."""
    metadata: dict[str, str | int | bool] | None
    live: bool | None
    now: datetime


class Shape(NamedTuple):
    """What a listing statement is built for; the values go in as parameters, so one
    statement serves every call of the same shape (building one costs more than running
    it)."""

    order: str
    live: bool | None
    after: bool
    """Whether a cursor names where the page starts."""
    metadata_keys: int
    """How many keys the metadata filter has (0: none)."""


@functools.lru_cache(maxsize=256)
def listing(backend: Backend, shape: Shape) -> Select[Any]:
    """The statement of a ``list_sessions`` page of ``shape`` on ``backend``."""
    build = _by_activity if shape.order == "last_activity" else _by_start
    return build(backend, shape)


def _by_activity(backend: Backend, ask: Shape) -> Select[Any]:
    """A page by last activity, newest first: the live sessions' page (index
    ``sessions(user_id, last_activity, conversation_id)``) and the ended conversations' page
    (the same index on ``conversations``), merged. Each part reads at most ``limit`` rows
    from its index, wherever the cursor is, so every page costs about the same."""
    now = bindparam("now", type_=UTCDateTime())
    parts = []
    for table in (sessions, conversations):
        c = table.c
        live_side = table is sessions
        if not live_side and ask.live is True:
            continue
        query = select(
            c.conversation_id,
            c.session_id,
            _c.started_at,
            _c.ended_at,
            (_s.expires_at if live_side else backend.typed_null(UTCDateTime())).label("expires_at"),
            (c.turn_count if live_side else _ended_turns()).label("turns"),
            c.last_activity,
            c.title,
            c.metadata,
            *_LINEAGE,
        ).where(c.user_id == _uid)
        if live_side:
            query = query.select_from(sessions.join(conversations, of_conversation(_s)))
            if ask.live is not None:
                live = live_session(_s.expires_at, now)
                query = query.where(live if ask.live else ~live)
        else:
            query = query.where(c.last_activity.is_not(None))
        if ask.after:
            query = query.where(
                backend.before(
                    (c.last_activity, c.conversation_id),
                    (
                        bindparam("after_at", type_=UTCDateTime()),
                        bindparam("after_cid", type_=BigInteger()),
                    ),
                )
            )
        if ask.metadata_keys:
            query = query.where(backend.json_holds(c.metadata, ask.metadata_keys))
        part = query.order_by(c.last_activity.desc(), c.conversation_id.desc()).limit(_limit)
        part = backend.keyset_read(
            part, _index(table, "user_id", "last_activity", "conversation_id")
        )
        parts.append(part.subquery())
    if len(parts) == 1:
        rows = select(*parts[0].c)
    else:
        rows = select(*union_all(*(select(*part.c) for part in parts)).subquery().c)
    order = rows.selected_columns
    return rows.order_by(order.last_activity.desc(), order.conversation_id.desc()).limit(_limit)


def _by_start(backend: Backend, ask: Shape) -> Select[Any]:
    """A page by start, newest first: conversations by id (index
    ``conversations(user_id, conversation_id)``)."""
    now = bindparam("now", type_=UTCDateTime())
    query = (
        select(
            _c.conversation_id,
            _c.session_id,
            _c.started_at,
            _c.ended_at,
            _s.expires_at,
            func.coalesce(_s.turn_count, _ended_turns()).label("turns"),
            func.coalesce(_s.last_activity, _c.last_activity, _c.started_at).label("last_activity"),
            session_field("title"),
            session_field("metadata"),
            *_LINEAGE,
        )
        .select_from(conversations.outerjoin(sessions, of_conversation(_s)))
        .where(_c.user_id == _uid, _c.superseded_by.is_(None))
    )
    if ask.after:
        query = query.where(_c.conversation_id < bindparam("after_cid", type_=BigInteger()))
    if ask.live is not None:
        live = live_session(_s.expires_at, now)
        query = query.where(live if ask.live else ~live)
    if ask.metadata_keys:
        query = query.where(
            or_(
                backend.json_holds(_s.metadata, ask.metadata_keys),
                backend.json_holds(_c.metadata, ask.metadata_keys),
            )
        )
    page = query.order_by(_c.conversation_id.desc()).limit(_limit)
    return backend.keyset_read(page, _index(conversations, "user_id", "conversation_id"))


def _index(table: Table, *columns: str) -> Index:
    """``table``'s index on ``columns``, in that order."""
    return next(index for index in table.indexes if [c.name for c in index.columns] == [*columns])


_limit = bindparam("limit", type_=Integer())

_LINEAGE = (_c.forked_from, _c.forked_from_conversation, _c.forked_upto)
"""Where a listed conversation's history came from (``fork``)."""


class Owners:
    """``list_sessions``, ``export_user`` and ``erase_user`` on one engine."""

    _batch = (
        select(_c.session_id, _c.conversation_id)
        .where(_c.user_id == _uid)
        .order_by(_c.conversation_id)
        .limit(bindparam("batch", type_=Integer()))
        .with_for_update()
    )
    _erase = (
        delete(turn_feedback).where(_among(_f)),
        delete(turn_slots).where(_among(_slot)),
        delete(turns).where(_among(_t)),
        delete(sessions).where(_among(_s)).returning(_s.session_id),
        delete(conversations).where(_among(_c)),
    )
    _export_conversations = (
        select(
            _c.conversation_id,
            _c.session_id,
            _c.started_at,
            _c.ended_at,
            _s.expires_at,
            *(session_field(name) for name in STATE_FIELDS),
        )
        .select_from(conversations.outerjoin(sessions, of_conversation(_s)))
        .where(_c.user_id == _uid)
        .order_by(_c.conversation_id)
    )
    _export_turns = (
        select(*TRANSCRIPT_TURNS)
        .join(conversations, of_conversation(_t))
        .where(_c.user_id == _uid)
        .order_by(_t.conversation_id, _t.seq)
    )
    _export_slots = (
        select(*TRANSCRIPT_SLOTS)
        .join(conversations, of_conversation(_slot))
        .where(_c.user_id == _uid)
        .order_by(_slot.conversation_id, _slot.seq, _slot.name)
    )
    _export_feedback = (
        select(_f.conversation_id, _f.seq, _f.score, _f.comment, _f.created_at)
        .join(conversations, of_conversation(_f))
        .where(_c.user_id == _uid)
        .order_by(_f.conversation_id, _f.seq)
    )

    def __init__(self, engine: AsyncEngine, cipher: TurnCipher | None = None) -> None:
        """``cipher``: what opens encrypted turns for ``export``
        (``StoreConfig.encryption_keys``)."""
        self.engine = engine
        self.backend = backend_for(engine)
        self.cipher = cipher

    async def page(self, ask: Listing) -> SessionPage:
        """One page of the user's conversations (see ``SessionRepository.list_sessions``)."""
        wanted = ask.metadata or {}
        shape = Shape(ask.order, ask.live, ask.after is not None, len(wanted))
        query = listing(self.backend, shape)
        params: dict[str, Any] = {"uid": ask.uid, "limit": ask.limit + 1, "now": ask.now}
        if ask.after is not None:
            params["after_cid"], params["after_at"] = ask.after
        if wanted:
            params.update(self.backend.json_wanted(wanted))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query, params)).all()
        summaries = [
            ConversationSummary(
                conversation_id=cid,
                session_id=sid,
                user_id=ask.uid,
                started_at=started,
                ended_at=ended,
                live=is_live(expires, ask.now),
                turns=count,
                last_activity=last or started,
                title=title,
                metadata=metadata or {},
                forked_from=source,
                forked_from_conversation=source_cid,
                forked_upto=upto,
            )
            for (
                cid,
                sid,
                started,
                ended,
                expires,
                count,
                last,
                title,
                metadata,
                source,
                source_cid,
                upto,
            ) in rows[: ask.limit]
        ]
        more = len(rows) > ask.limit
        return SessionPage(
            summaries, next_cursor=encode_cursor(ask.order, summaries[-1]) if more else None
        )

    async def erase(self, uid: str, batch_size: int) -> tuple[dict[str, int], list[str]]:
        """Delete every row of the user, ``batch_size`` conversations per transaction.
        Returns the rows deleted per table and the ids of the live sessions that went."""
        counts = dict.fromkeys(ERASED_TABLES, 0)
        ended: list[str] = []
        params: dict[str, Any] = {"uid": uid, "batch": batch_size}
        while True:
            async with self.engine.begin() as conn:
                ids = [tuple(row) for row in await conn.execute(self._batch, params)]
                if not ids:
                    return counts, ended
                await self._erase_batch(conn, ids, counts, ended)

    async def _erase_batch(
        self,
        conn: AsyncConnection,
        ids: list[tuple[Any, ...]],
        counts: dict[str, int],
        ended: list[str],
    ) -> None:
        given, slots, turn_rows, live, gone = self._erase
        counts["turn_feedback"] += (await conn.execute(given, {"ids": ids})).rowcount
        counts["turn_slots"] += (await conn.execute(slots, {"ids": ids})).rowcount
        counts["turns"] += (await conn.execute(turn_rows, {"ids": ids})).rowcount
        sids = list((await conn.execute(live, {"ids": ids})).scalars())
        counts["sessions"] += len(sids)
        ended.extend(sids)
        counts["conversations"] += (await conn.execute(gone, {"ids": ids})).rowcount

    async def export(self, uid: str, now: datetime) -> dict[str, Any]:
        """Everything stored about the user, as JSON-ready data (timestamps in ISO 8601)."""
        params = {"uid": uid}
        async with self.engine.connect() as conn, conn.begin():
            heads = (await conn.execute(self._export_conversations, params)).all()
            turn_rows = (await conn.execute(self._export_turns, params)).all()
            slot_rows = (await conn.execute(self._export_slots, params)).all()
            given = (await conn.execute(self._export_feedback, params)).all()
        feedback: dict[int, list[dict[str, Any]]] = {}
        for cid, seq, score, comment, created in given:
            feedback.setdefault(cid, []).append(
                {"seq": seq, "score": score, "comment": comment, "created_at": created.isoformat()}
            )
        by_conversation = {
            cid: [{**turn._asdict(), "created_at": turn.created_at.isoformat()} for turn in turns]
            for cid, turns in grouped_turns(turn_rows, slot_rows, self.cipher).items()
        }
        return {
            "user_id": uid,
            "exported_at": now.isoformat(),
            "conversations": list(_conversations(heads, by_conversation, feedback, now)),
        }


def _conversations(
    heads: Iterable[Any],
    turns_of: dict[int, list[dict[str, Any]]],
    feedback_of: dict[int, list[dict[str, Any]]],
    now: datetime,
) -> Iterable[dict[str, Any]]:
    for head in heads:
        cid, sid, started, ended, expires = head[:5]
        fields = head._mapping
        yield {
            "conversation_id": cid,
            "session_id": sid,
            "started_at": started.isoformat(),
            "ended_at": None if ended is None else ended.isoformat(),
            "live": is_live(expires, now),
            **{name: exported(fields[name]) for name in STATE_FIELDS},
            "turns": turns_of.get(cid, []),
            "feedback": feedback_of.get(cid, []),
        }
