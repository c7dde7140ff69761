"""Edits of a live conversation's history that keep what they take out: a rewind moves the
turns after one into a conversation of their own, a cap moves the oldest exchanges into one,
and a fork records where its copied history came from.

The turns taken out keep their numbers and their session id and move to another
conversation (``conversations.superseded_by`` names the live one), so every load, which
reads the live conversation's turns up to ``turn_count``, stays as it is, and the transcript
keeps them, visible to analytics, until retention. Each function runs inside the caller's
write transaction (``SqlStore``), which holds the session row's lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from convostore._core.schema import (
    UTCDateTime,
    conversations,
    sessions,
    turn_feedback,
    turn_slots,
    turns,
)
from convostore.backends import Backend

__all__ = ["HistoryEdits"]

_sid = bindparam("sid", type_=String())
_cid = bindparam("cid", type_=BigInteger())
_now = bindparam("now", type_=UTCDateTime())


def _in_conversation(table: Any) -> Any:
    return and_(table.c.session_id == _sid, table.c.conversation_id == _cid)


class HistoryEdits:
    """The statements of rewinds, caps and forks on one backend, and the steps that run them
    in a write transaction."""

    def __init__(self, backend: Backend) -> None:
        self.conversation_of = select(sessions.c.conversation_id, sessions.c.user_id).where(
            sessions.c.session_id == _sid
        )
        """The conversation and owner of the session's row."""
        self.first_seq = select(func.min(turns.c.seq)).where(_in_conversation(turns))
        """The number of the oldest turn left in the conversation."""
        self.next_exchange = select(func.min(turns.c.seq)).where(
            _in_conversation(turns),
            turns.c.seq > bindparam("after", type_=Integer()),
            turns.c.role == "user",
        )
        """The first user turn after turn ``after``: where an exchange begins."""
        self.last_exchange = select(func.max(turns.c.seq)).where(
            _in_conversation(turns), turns.c.role == "user"
        )
        """The newest user turn: where the newest exchange begins."""
        self.cap_archive = select(conversations.c.conversation_id).where(
            conversations.c.session_id == _sid,
            conversations.c.superseded_by == _cid,
            conversations.c.superseded_reason == "cap",
        )
        """The conversation that holds what the cap took out of conversation ``cid``."""
        largest = select(func.coalesce(func.max(conversations.c.conversation_id), 0))
        self.new_archive = (
            insert(conversations)
            .values(
                session_id=_sid,
                conversation_id=backend.next_conversation_id(largest.scalar_subquery()),
                user_id=select(conversations.c.user_id)
                .where(_in_conversation(conversations))
                .scalar_subquery(),
                started_at=_now,
                ended_at=_now,
                superseded_by=_cid,
                superseded_reason=bindparam("reason", type_=String()),
            )
            .returning(conversations.c.conversation_id)
        )
        """A new ended conversation, of the same owner, for turns taken out of conversation
        ``cid``."""
        self.archive_ended = (
            update(conversations)
            .where(conversations.c.session_id == _sid)
            .where(conversations.c.conversation_id == bindparam("archive", type_=BigInteger()))
            .values(ended_at=_now)
        )
        """Retention counts from the newest turns a cap took out."""
        self.move = [
            update(table)
            .where(
                _in_conversation(table),
                table.c.seq >= bindparam("low", type_=Integer()),
                table.c.seq <= bindparam("high", type_=Integer()),
            )
            .values(conversation_id=bindparam("archive", type_=BigInteger()))
            for table in (turns, turn_slots, turn_feedback)
        ]
        """Turns ``low`` to ``high`` (with their slots and feedback) into conversation
        ``archive``."""
        self.mark_fork = (
            update(conversations)
            .where(_in_conversation(conversations))
            .values(
                forked_from=bindparam("source", type_=String()),
                forked_from_conversation=bindparam("source_cid", type_=BigInteger()),
                forked_upto=bindparam("upto", type_=Integer()),
            )
        )
        """Record where conversation ``cid``'s history came from."""

    async def source(self, conn: AsyncConnection, sid: str) -> tuple[int | None, str | None]:
        """The conversation and owner of session ``sid``'s row (None, None: it has none)."""
        row = (await conn.execute(self.conversation_of, {"sid": sid})).first()
        return (None, None) if row is None else (int(row[0]), row[1])

    async def take_out(
        self,
        conn: AsyncConnection,
        sid: str,
        cid: int,
        low: int,
        high: int,
        *,
        reason: str,
        now: datetime,
    ) -> None:
        """Move turns ``low`` to ``high`` of conversation ``cid`` into the conversation that
        keeps what ``reason`` ("rewind" or "cap") took out: a new one for each rewind, one
        for all a cap takes (its numbers never repeat, as the cap only ever takes the
        oldest)."""
        params: dict[str, Any] = {"sid": sid, "cid": cid, "now": now}
        archive = None
        if reason == "cap":
            archive = (await conn.execute(self.cap_archive, params)).scalar()
        if archive is None:
            params["reason"] = reason
            archive = (await conn.execute(self.new_archive, params)).scalar_one()
        else:
            await conn.execute(self.archive_ended, {**params, "archive": archive})
        moved = {**params, "archive": archive, "low": low, "high": high}
        for statement in self.move:
            await conn.execute(statement, moved)

    async def cap(
        self,
        conn: AsyncConnection,
        sid: str,
        cid: int,
        turn_count: int,
        limit: int,
        *,
        now: datetime,
    ) -> int:
        """Take the oldest exchanges out of conversation ``cid`` until at most ``limit`` of
        its turns (up to ``turn_count``) are left, never splitting an exchange (an exchange
        begins with a user turn; the newest stays whole, even if it alone is longer).
        Returns how many turns it took out."""
        params = {"sid": sid, "cid": cid}
        first = (await conn.execute(self.first_seq, params)).scalar()
        if first is None or turn_count - first + 1 <= limit:
            return 0
        cut = turn_count - limit
        begins = (await conn.execute(self.next_exchange, {**params, "after": cut})).scalar()
        if begins is None:
            begins = (await conn.execute(self.last_exchange, params)).scalar()
        if begins is None or begins <= first:
            return 0
        await self.take_out(conn, sid, cid, first, begins - 1, reason="cap", now=now)
        return int(begins - first)
