"""Bulk loading of stored histories into convostore's tables: COPY on PostgreSQL, one
``executemany`` transaction per chunk on SQLite and MariaDB (asyncmy sends each as multi-row
INSERTs). Not timed as a figure, only reported.

Conversation ids are taken the way the database hands them out, so that convostore's own
inserts afterwards never collide with loaded rows: on PostgreSQL and MariaDB a block is
reserved from the sequence ``conversation_ids``, on SQLite (a rowid without AUTOINCREMENT)
they follow the largest stored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial

import asyncpg

from .backends import Database
from .raw import connect_mariadb, connect_postgres, connect_sqlite
from .workload import (
    CONVERSATION_COLUMNS,
    SESSION_COLUMNS,
    SLOT_COLUMNS,
    TURN_COLUMNS,
    HistoryRows,
    history_rows,
    sqlite_timestamp,
)

__all__ = ["checkpoint", "load_histories", "vacuum_analyze"]


Texts = Callable[[str, int], str]
"""A turn's content by session id and ``seq``."""
Rows = Callable[..., Iterator[HistoryRows]]
"""``workload.history_rows`` for the sessions to load, given ``stamp`` and
``first_conversation``, which each database decides."""


def _insert(table: str, columns: Sequence[str], mark: str = "?") -> str:
    marks = ", ".join(mark for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


async def load_histories(
    db: Database,
    sids: Sequence[str],
    n_turns: int,
    *,
    now: datetime,
    ttl: float,
    expired: bool = False,
    texts: Texts | None = None,
    user: str | None = None,
) -> None:
    """Store ``len(sids)`` sessions of ``n_turns`` turns each, ``user``'s (see
    ``workload.history_rows``, which also says what ``texts`` does)."""
    if not sids:
        return
    load = {"sqlite": _load_sqlite, "mariadb": _load_mariadb}.get(db.backend, _load_postgres)
    rows = partial(
        history_rows, sids, n_turns, now=now, ttl=ttl, expired=expired, texts=texts, user=user
    )
    await load(db, len(sids), rows)


async def _load_sqlite(db: Database, count: int, rows: Rows) -> None:
    conn = await connect_sqlite(db.target)
    try:
        top = await conn.execute_fetchall(
            "SELECT coalesce(max(conversation_id), 0) + 1 FROM conversations"
        )
        chunks = rows(stamp=sqlite_timestamp, first_conversation=next(iter(top))[0])
        for chunk in chunks:
            await conn.executemany(
                _insert("conversations", CONVERSATION_COLUMNS), chunk.conversations
            )
            await conn.executemany(_insert("sessions", SESSION_COLUMNS), chunk.sessions)
            await conn.executemany(_insert("turns", TURN_COLUMNS), chunk.turns)
            await conn.executemany(_insert("turn_slots", SLOT_COLUMNS), chunk.slots)
            await conn.commit()
    finally:
        await conn.close()


async def _load_postgres(db: Database, count: int, rows: Rows) -> None:
    conn = await connect_postgres(db.target)
    try:
        # The rows are consistent by construction; skipping the per-row foreign-key triggers
        # (superuser only) makes loading millions of turns minutes faster. Same schema.
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("SET session_replication_role = replica")
        first = await conn.fetchval(_PG_RESERVE, count)
        chunks = rows(stamp=_same, first_conversation=first)
        for chunk in chunks:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "conversations",
                    records=chunk.conversations,
                    columns=list(CONVERSATION_COLUMNS),
                )
                await conn.copy_records_to_table(
                    "sessions", records=chunk.sessions, columns=list(SESSION_COLUMNS)
                )
                await conn.copy_records_to_table(
                    "turns", records=chunk.turns, columns=list(TURN_COLUMNS)
                )
                await conn.copy_records_to_table(
                    "turn_slots", records=chunk.slots, columns=list(SLOT_COLUMNS)
                )
    finally:
        await conn.close()


async def _load_mariadb(db: Database, count: int, rows: Rows) -> None:
    conn = await connect_mariadb(db.target)
    try:
        async with conn.cursor() as cursor:
            # The rows are consistent by construction: skipping the foreign-key and unique
            # checks for this connection's inserts only makes the load faster. Same schema.
            await cursor.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
            await cursor.execute("SELECT NEXTVAL(conversation_ids)")
            (first,) = await cursor.fetchone()
            await cursor.execute("SELECT SETVAL(conversation_ids, %s)", (first + count - 1,))
            chunks = rows(stamp=_same, first_conversation=first)
            for chunk in chunks:
                for table, columns, values in (
                    ("conversations", CONVERSATION_COLUMNS, chunk.conversations),
                    ("sessions", SESSION_COLUMNS, chunk.sessions),
                    ("turns", TURN_COLUMNS, chunk.turns),
                    ("turn_slots", SLOT_COLUMNS, chunk.slots),
                ):
                    await cursor.executemany(_insert(table, columns, "%s"), values)
                await conn.commit()
    finally:
        await conn.ensure_closed()


_PG_RESERVE = """
SELECT setval('conversation_ids', nextval('conversation_ids') + $1 - 1) - $1 + 1"""
"""The first of $1 conversation ids taken from the sequence in one step."""


def _same(value: datetime) -> datetime:
    return value


async def vacuum_analyze(db: Database) -> None:
    """Bring PostgreSQL's statistics and visibility map up to date after a bulk load, as
    autovacuum would on a long-lived store; on MariaDB, InnoDB's index statistics (ANALYZE
    TABLE), which it would otherwise recalculate in the background once a tenth of a table
    changed."""
    if db.backend == "mariadb":
        maria = await connect_mariadb(db.target, autocommit=True)
        try:
            async with maria.cursor() as cursor:
                await cursor.execute("ANALYZE TABLE conversations, sessions, turns, turn_slots")
                await cursor.fetchall()
        finally:
            await maria.ensure_closed()
        return
    if db.backend != "postgresql":
        return
    conn = await connect_postgres(db.target)
    try:
        for table in ("conversations", "sessions", "turns", "turn_slots"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


async def checkpoint(db: Database) -> None:
    """Write what a bulk load left in the write-ahead log to the tables (PostgreSQL
    ``CHECKPOINT``, for superusers and ``pg_checkpoint`` members, skipped for others; SQLite
    ``wal_checkpoint``), so that a timed part after the load does not pay for a checkpoint the
    load made due: on PostgreSQL one after a load of 100,000 sessions stalled commits for up
    to 0.2 s. MariaDB has no statement for it (InnoDB flushes in the background): nothing."""
    if db.backend == "mariadb":
        return
    if db.backend == "sqlite":
        lite = await connect_sqlite(db.target)
        try:
            await lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await lite.close()
        return
    conn = await connect_postgres(db.target)
    try:
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
