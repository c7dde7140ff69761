"""What convostore keeps about one user: their conversations listed, exported and erased.

These read and delete by ``conversations.user_id``, which covers live sessions and retained
transcripts alike (a live session's conversation carries the same owner as its session row).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Integer,
    Select,
    String,
    bindparam,
    delete,
    func,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.crypt import TurnCipher
from convostore._core.schema import (
    TRANSCRIPT_SLOTS,
    TRANSCRIPT_TURNS,
    conversations,
    exported,
    grouped_turns,
    is_live,
    of_conversation,
    session_field,
    sessions,
    turn_slots,
    turns,
)
from convostore.models import STATE_FIELDS, ConversationSummary

__all__ = ["ERASED_TABLES", "Owners"]

ERASED_TABLES = ("sessions", "conversations", "turns", "turn_slots")
"""The keys of ``erase_user``'s counts: every table that holds a user's rows."""

_uid = bindparam("uid", type_=String())
_ids: BindParameter[Any] = bindparam("ids", expanding=True)
_c, _s, _t, _slot = conversations.c, sessions.c, turns.c, turn_slots.c


def _among(columns: Any) -> Any:
    """``columns`` hold a row of one of the conversations ``ids`` ((session_id,
    conversation_id) pairs)."""
    return tuple_(columns.session_id, columns.conversation_id).in_(_ids)


def _summaries() -> Select[Any]:
    """A user's conversations, newest first, ``limit`` of them."""
    turn_count = select(func.count()).where(of_conversation(_t)).scalar_subquery()
    last_turn = (
        select(_t.created_at)
        .where(of_conversation(_t))
        .order_by(_t.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(
            _c.conversation_id,
            _c.session_id,
            _c.started_at,
            _c.ended_at,
            _s.expires_at,
            turn_count.label("turns"),
            last_turn.label("last_turn_at"),
        )
        .select_from(conversations.outerjoin(sessions, of_conversation(_s)))
        .where(_c.user_id == _uid)
        .order_by(_c.conversation_id.desc())
        .limit(bindparam("limit", type_=Integer()))
    )


class Owners:
    """``list_sessions``, ``export_user`` and ``erase_user`` on one engine."""

    _list = _summaries()
    _batch = (
        select(_c.session_id, _c.conversation_id)
        .where(_c.user_id == _uid)
        .order_by(_c.conversation_id)
        .limit(bindparam("batch", type_=Integer()))
        .with_for_update()
    )
    _erase = (
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

    def __init__(self, engine: AsyncEngine, cipher: TurnCipher | None = None) -> None:
        """``cipher``: what opens encrypted turns for ``export``
        (``StoreConfig.encryption_keys``)."""
        self.engine = engine
        self.cipher = cipher

    async def summaries(
        self, uid: str, now: datetime, limit: int, before: int | None
    ) -> list[ConversationSummary]:
        """The user's conversations below conversation id ``before``, newest first."""
        query = self._list
        if before is not None:
            query = query.where(_c.conversation_id < bindparam("before", type_=BigInteger()))
        params = {"uid": uid, "limit": limit, "before": before}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query, params)).all()
        return [
            ConversationSummary(
                conversation_id=cid,
                session_id=sid,
                user_id=uid,
                started_at=started,
                ended_at=ended,
                live=is_live(expires, now),
                turns=count,
                last_activity=last or started,
            )
            for cid, sid, started, ended, expires, count, last in rows
        ]

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
        slots, turn_rows, live, gone = self._erase
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
        by_conversation = {
            cid: [{**turn._asdict(), "created_at": turn.created_at.isoformat()} for turn in turns]
            for cid, turns in grouped_turns(turn_rows, slot_rows, self.cipher).items()
        }
        return {
            "user_id": uid,
            "exported_at": now.isoformat(),
            "conversations": list(_conversations(heads, by_conversation, now)),
        }


def _conversations(
    heads: Iterable[Any], turns_of: dict[int, list[dict[str, Any]]], now: datetime
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
        }
