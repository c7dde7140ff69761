"""The SQL behind each repository call: one short transaction per operation, in SQLAlchemy Core.

``SqlStore`` knows the tables and the dialect, nothing of the cache. Every method is one
transaction (or one autocommit read), so an error or a cancelled task leaves both turns of an
exchange stored or neither. Turn sequence numbers come from the session row: the UPDATE that
bumps ``turn_count`` locks the row, so concurrent writers to one session take turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .models import ConversationState, ConversationTurn
from .schema import JSONDocument, UTCDateTime, sessions, turn_slots, turns

__all__ = ["Loaded", "SqlStore", "Written"]


@dataclass(slots=True)
class Written:
    """What a write committed: the session's new version, and whether the write created it."""

    version: int
    created: bool
    expired_removed: bool
    turns: list[ConversationTurn]
    """The turns the write stored, stamped with their ``created_at``."""


@dataclass(slots=True)
class Loaded:
    """A session read from the database."""

    state: ConversationState
    version: int
    last_accessed: datetime
    expires_at: datetime


def _stamp(turn: ConversationTurn, created_at: datetime) -> ConversationTurn:
    """The same turn with the store's timestamp, without validating it again."""
    return ConversationTurn.model_construct(
        role=turn.role,
        content=turn.content,
        resolved_question=turn.resolved_question,
        template_id=turn.template_id,
        slots=turn.slots,
        results=turn.results,
        created_at=created_at,
    )


class SqlStore:
    """The statements of every operation, compiled by SQLAlchemy for the engine's dialect."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"convostore supports SQLite and PostgreSQL, not {self.dialect}")

        now = bindparam("now", type_=UTCDateTime())
        live = and_(sessions.c.session_id == bindparam("sid"), sessions.c.expires_at > now)
        refreshed: dict[str, Any] = {
            "last_accessed": now,
            "expires_at": bindparam("expires", type_=UTCDateTime()),
            "access_count": sessions.c.access_count + bindparam("hits"),
        }
        self._append = (
            update(sessions)
            .where(live)
            .values(
                **refreshed,
                turn_count=sessions.c.turn_count + bindparam("n"),
                version=sessions.c.version + 1,
                current_slots=self._merged_slots(),
                current_template_id=func.coalesce(
                    bindparam("template_id", type_=sessions.c.current_template_id.type),
                    sessions.c.current_template_id,
                ),
            )
            .returning(sessions.c.turn_count, sessions.c.version)
        )
        self._replace = (
            update(sessions)
            .where(live)
            .values(
                **refreshed,
                turn_count=sessions.c.turn_count + bindparam("n"),
                version=sessions.c.version + 1,
                current_slots=bindparam("slots", type_=JSONDocument),
                current_template_id=bindparam(
                    "template_id", type_=sessions.c.current_template_id.type
                ),
                language=bindparam("language", type_=sessions.c.language.type),
            )
            .returning(sessions.c.turn_count, sessions.c.version)
        )
        self._touch = update(sessions).where(live).values(**refreshed).returning(sessions.c.version)
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._create = dialect_insert(sessions).on_conflict_do_nothing(
            index_elements=[sessions.c.session_id]
        )
        self._drop_expired = delete(sessions).where(
            sessions.c.session_id == bindparam("sid"), sessions.c.expires_at <= now
        )
        self._delete = (
            delete(sessions)
            .where(sessions.c.session_id == bindparam("sid"))
            .returning(sessions.c.expires_at)
        )
        self._load_session = select(
            sessions.c.version,
            sessions.c.last_accessed,
            sessions.c.expires_at,
            sessions.c.language,
            sessions.c.current_template_id,
            sessions.c.current_slots,
            sessions.c.turn_count,
        ).where(sessions.c.session_id == bindparam("sid"))
        self._load_turns = (
            select(
                turns.c.seq,
                turns.c.role,
                turns.c.content,
                turns.c.resolved_question,
                turns.c.template_id,
                turns.c.results,
                turns.c.created_at,
                turn_slots.c.name,
                turn_slots.c.value,
            )
            .select_from(
                turns.outerjoin(
                    turn_slots,
                    and_(
                        turn_slots.c.session_id == turns.c.session_id,
                        turn_slots.c.seq == turns.c.seq,
                    ),
                )
            )
            .where(turns.c.session_id == bindparam("sid"), turns.c.seq <= bindparam("upto"))
            .order_by(turns.c.seq, turn_slots.c.name)
        )

    def _merged_slots(self) -> ColumnElement[Any]:
        """``current_slots`` with the new slots merged in, inside the database, so an append
        never reads the session first."""
        new = bindparam("merge", type_=JSONDocument)
        if self.dialect == "postgresql":
            return sessions.c.current_slots.op("||")(new)
        return func.json_patch(sessions.c.current_slots, new)

    async def create(self, sid: str, now: datetime, ttl: float) -> tuple[bool, bool]:
        """Create an empty session unless a live one exists. Returns (created, expired_removed)."""
        async with self.engine.begin() as conn:
            return await self._ensure(conn, sid, now, ttl)

    async def _ensure(
        self, conn: AsyncConnection, sid: str, now: datetime, ttl: float
    ) -> tuple[bool, bool]:
        expired = await conn.execute(self._drop_expired, {"sid": sid, "now": now})
        created = await conn.execute(
            self._create,
            {
                "session_id": sid,
                "created_at": now,
                "last_accessed": now,
                "expires_at": now + timedelta(seconds=ttl),
                "access_count": 0,
                "language": "nl",
                "current_template_id": None,
                "current_slots": {},
                "turn_count": 0,
                "version": 0,
            },
        )
        return created.rowcount == 1, expired.rowcount > 0

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
    ) -> Written:
        """Append turns after whatever is stored, merging slots and template into the session
        row, creating the session if it is missing or expired."""
        params = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits + 1,
            "n": len(new_turns),
            "merge": merge_slots,
            "template_id": template_id,
        }
        async with self.engine.begin() as conn:
            row = (await conn.execute(self._append, params)).first()
            created = expired = False
            if row is None:
                created, expired = await self._ensure(conn, sid, now, ttl)
                row = (await conn.execute(self._append, params)).one()
            stamped = await self._insert_turns(conn, sid, row[0], new_turns, now)
        return Written(row[1], created, expired, stamped)

    async def replace(
        self,
        sid: str,
        state: ConversationState,
        all_turns: Sequence[ConversationTurn],
        stored: int,
        *,
        now: datetime,
        ttl: float,
        hits: int,
    ) -> Written:
        """Write the session fields of ``state`` (last writer wins) and append
        ``all_turns[stored:]`` after whatever is stored. A missing or expired session is
        created with all of ``all_turns``."""
        new_turns = all_turns[stored:]
        params = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits + 1,
            "n": len(new_turns),
            "slots": state.current_slots,
            "template_id": state.current_template_id,
            "language": state.language,
        }
        async with self.engine.begin() as conn:
            row = (await conn.execute(self._replace, params)).first()
            created = expired = False
            if row is None:
                created, expired = await self._ensure(conn, sid, now, ttl)
                if created:
                    new_turns = all_turns
                    params["n"] = len(new_turns)
                row = (await conn.execute(self._replace, params)).one()
            stamped = await self._insert_turns(conn, sid, row[0], new_turns, now)
        return Written(row[1], created, expired, stamped)

    async def _insert_turns(
        self,
        conn: AsyncConnection,
        sid: str,
        last_seq: int,
        new_turns: Sequence[ConversationTurn],
        now: datetime,
    ) -> list[ConversationTurn]:
        first_seq = last_seq - len(new_turns) + 1
        turn_rows = []
        slot_rows: list[dict[str, Any]] = []
        for seq, turn in enumerate(new_turns, start=first_seq):
            turn_rows.append(
                {
                    "session_id": sid,
                    "seq": seq,
                    "role": turn.role,
                    "content": turn.content,
                    "resolved_question": turn.resolved_question,
                    "template_id": turn.template_id,
                    "results": turn.results,
                    "created_at": now,
                }
            )
            slot_rows.extend(
                {"session_id": sid, "seq": seq, "name": name, "value": value}
                for name, value in turn.slots.items()
            )
        if turn_rows:
            await conn.execute(insert(turns), turn_rows)
        if slot_rows:
            await conn.execute(insert(turn_slots), slot_rows)
        return [_stamp(turn, now) for turn in new_turns]

    async def touch(self, sid: str, now: datetime, ttl: float, hits: int) -> int | None:
        """Slide a live session's expiry. Returns its version, or None if it is not live."""
        params = {
            "sid": sid,
            "now": now,
            "expires": now + timedelta(seconds=ttl),
            "hits": hits,
        }
        async with self.engine.begin() as conn:
            version: int | None = (await conn.execute(self._touch, params)).scalar()
        return version

    async def drop_expired(self, sid: str, now: datetime) -> bool:
        """Delete the session if it has expired. Returns whether a row went."""
        async with self.engine.begin() as conn:
            result = await conn.execute(self._drop_expired, {"sid": sid, "now": now})
        return result.rowcount > 0

    async def delete(self, sid: str, now: datetime) -> bool:
        """Delete the session and its turns. Returns whether it was live."""
        async with self.engine.begin() as conn:
            expires_at = (await conn.execute(self._delete, {"sid": sid})).scalar()
        return expires_at is not None and expires_at > now

    async def load(self, sid: str) -> Loaded | None:
        """Read a session and its turns (expired or not; the caller decides)."""
        async with self._reader.connect() as conn:
            head = (await conn.execute(self._load_session, {"sid": sid})).first()
            if head is None:
                return None
            rows = await conn.execute(self._load_turns, {"sid": sid, "upto": head.turn_count})
            loaded_turns = _fold_turns(rows.all())
        state = ConversationState.model_construct(
            turns=loaded_turns,
            current_slots=dict(head.current_slots),
            current_template_id=head.current_template_id,
            language=head.language,
        )
        state._session_id = sid
        state._stored = len(loaded_turns)
        return Loaded(state, head.version, head.last_accessed, head.expires_at)


def _fold_turns(rows: Sequence[Any]) -> list[ConversationTurn]:
    """Turn rows joined with their slot rows (one row per slot) into turns, in order."""
    result: list[ConversationTurn] = []
    last_seq = None
    slots: dict[str, str] = {}
    for seq, role, content, resolved, template_id, results, created_at, name, value in rows:
        if seq != last_seq:
            last_seq = seq
            slots = {}
            result.append(
                ConversationTurn.model_construct(
                    role=role,
                    content=content,
                    resolved_question=resolved,
                    template_id=template_id,
                    slots=slots,
                    results=results,
                    created_at=created_at,
                )
            )
        if name is not None:
            slots[name] = value
    return result
