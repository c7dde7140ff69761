"""The raw-driver floor: plain aiosqlite / asyncpg / asyncmy doing the same minimal work on
convostore's tables, written the way a careful hand-written driver call would be, without a
library.

An exchange is the naive transaction: BEGIN; UPDATE the session row (turn_count, version,
last_accessed, expires_at, current_slots, current_template_id) RETURNING turn_count and
conversation_id, which hand out the two sequence numbers and the conversation the turns belong
to; INSERT the user turn; INSERT the assistant turn; INSERT each slot row; COMMIT. On asyncpg
every statement is a prepared statement (BEGIN and COMMIT are round trips of their own); on
aiosqlite every statement is one ``execute`` (one thread hop), with the PRAGMAs convostore
sets. A load reads the session row (with its conversation id), then the conversation's turns
joined with their slot rows, and builds plain dicts (JSON decoded, timestamps as datetimes).

The true floor does the same work in the fewest steps the driver allows: on asyncpg,
convostore's own one-statement append (``Statements.append_cte``, compiled for
asyncpg and prepared, positional arguments, autocommit) and its one-statement load
(``Statements.load``); on SQLite, one hop to aiosqlite's worker thread running
BEGIN IMMEDIATE, convostore's own UPDATE ... RETURNING (``Statements.allocate``),
executemany of the turns and of the slots, COMMIT on the sqlite3 connection. Its appends store
the same rows as convostore's: the user turn carries an idempotency key, as every ``add_turn``
stores one (``keyed=False`` leaves it out, as the floor did before). For a load, one hop
running convostore's three-part read
(``Statements(backend_for("sqlite")).load_session``, ``load_turns``, ``load_slots``) in one read
transaction, as convostore's fast path does. Loads fold the rows into the same plain dicts.

On MariaDB (asyncmy), which has no ``UPDATE ... RETURNING``, the naive exchange runs the
UPDATE, then a SELECT of the counters, then one INSERT per row, in one transaction (begun by
the first statement, as the driver does with autocommit off; READ COMMITTED, as convostore's
engines set it). The true floor is the same transaction in the fewest statements: convostore's
``Statements.allocate`` (an ``UpdateThenRead`` there: the UPDATE, then the read of the
counters), one ``executemany`` of the turns (asyncmy sends it as one multi-row INSERT), one of
the slots, COMMIT: five round trips. Its load is convostore's
three-part read (``Statements.load_session``, ``load_turns``, ``load_slots``: three plain
index range scans, the fewest steps there: MariaDB runs them faster than the one-statement
union ``Statements.load`` that convostore runs on it, round trips included); its naive load
the session row, then the turns with their slots.

A sweep is convostore's two passes as hand-written batches, each one autocommitted DELETE
... RETURNING: expired sessions (the schema's trigger ends their conversations), then
conversations that ended ``retention`` seconds ago or more (turns and slots go by cascade).
Each batch's keys are picked and locked by a subquery (on PostgreSQL ``FOR UPDATE SKIP
LOCKED``, and ``= ANY(ARRAY(...))`` so the rows are found by primary key; on SQLite ``IN``;
on MariaDB convostore's own ``Statements.sweep`` and ``sweep_transcripts``, ``IN`` a derived
table, as MariaDB refuses ``LIMIT`` directly inside ``IN``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import aiosqlite
import asyncmy
import asyncpg
from sqlalchemy import ClauseElement
from sqlalchemy.dialects.mysql import asyncmy as mysql_asyncmy
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite as sqlite_aiosqlite
from sqlalchemy.sql.compiler import SQLCompiler

from convostore._core.store import CHANGES_KEPT
from convostore.backends import backend_for
from convostore.backends._private import run_in_sqlite_thread
from convostore.backends._statements import Statements, UpdateThenRead
from convostore.repository import new_idempotency_key

from .backends import Database, mariadb_connect_args
from .workload import Exchange, sqlite_timestamp

__all__ = [
    "RawMariaDB",
    "RawPool",
    "RawPostgres",
    "RawPostgresPool",
    "RawSqlite",
    "RawStore",
    "RawSweeper",
    "connect_mariadb",
    "connect_postgres",
    "connect_sqlite",
    "open_raw",
    "open_raw_sweeper",
]

SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_mode = WAL",
)
"""The same settings convostore applies to each SQLite connection (synchronous left at its
default, as convostore leaves it)."""

_PG_UPDATE = """
UPDATE sessions SET turn_count = turn_count + 2, version = version + 1,
    last_accessed = $2, expires_at = $3, current_slots = current_slots || $4::jsonb,
    current_template_id = coalesce($5, current_template_id)
WHERE session_id = $1 RETURNING turn_count, conversation_id"""
_PG_INSERT_TURN = """
INSERT INTO turns (conversation_id, seq, session_id, role, content, resolved_question,
    template_id, results, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9)"""
_PG_INSERT_SLOT = """
INSERT INTO turn_slots (conversation_id, seq, name, session_id, value)
VALUES ($1, $2, $3, $4, $5)"""
_PG_HEAD = """
SELECT version, last_accessed, expires_at, language, current_template_id, current_slots,
    turn_count, conversation_id FROM sessions WHERE session_id = $1"""
_PG_TURNS = """
SELECT seq, role, content, resolved_question, template_id, results, created_at, trace_id,
    span_id, tool_name, tool_call_id, tool_arguments, data, NULL AS name, NULL AS value
FROM turns WHERE session_id = $1 AND conversation_id = $2
UNION ALL
SELECT seq, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, name, value
FROM turn_slots WHERE session_id = $1 AND conversation_id = $2
ORDER BY 1, 14 NULLS FIRST"""
_PG_SWEEP = """
DELETE FROM sessions WHERE session_id = ANY(ARRAY(
    SELECT session_id FROM sessions WHERE expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))
RETURNING session_id"""
_PG_SWEEP_TRANSCRIPTS = """
DELETE FROM conversations WHERE conversation_id = ANY(ARRAY(
    SELECT conversation_id FROM conversations WHERE ended_at <= $1
    ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED))
RETURNING conversation_id"""

_SQLITE_UPDATE = """
UPDATE sessions SET turn_count = turn_count + 2, version = version + 1,
    last_accessed = ?, expires_at = ?, current_slots = json_patch(current_slots, ?),
    current_template_id = coalesce(?, current_template_id)
WHERE session_id = ? RETURNING turn_count, conversation_id"""
_SQLITE_INSERT_TURN = """
INSERT INTO turns (conversation_id, seq, session_id, role, content, resolved_question,
    template_id, results, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_SQLITE_INSERT_KEYED_TURN = """
INSERT INTO turns (conversation_id, seq, session_id, role, content, resolved_question,
    template_id, results, created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_SQLITE_INSERT_SLOT = """
INSERT INTO turn_slots (conversation_id, seq, name, session_id, value) VALUES (?, ?, ?, ?, ?)"""
_SQLITE_HEAD = _PG_HEAD.replace("$1", "?")
_SQLITE_TURNS = _PG_TURNS.replace("$1", "?1").replace("$2", "?2")
_SQLITE_SWEEP = """
DELETE FROM sessions WHERE session_id IN (
    SELECT session_id FROM sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)
RETURNING session_id"""
_SQLITE_SWEEP_TRANSCRIPTS = """
DELETE FROM conversations WHERE conversation_id IN (
    SELECT conversation_id FROM conversations WHERE ended_at <= ? ORDER BY ended_at LIMIT ?)
RETURNING conversation_id"""
_MARIADB_UPDATE = """
UPDATE sessions SET turn_count = turn_count + 2, version = version + 1,
    last_accessed = %s, expires_at = %s, current_slots = json_merge_patch(current_slots, %s),
    current_template_id = coalesce(%s, current_template_id)
WHERE session_id = %s"""
_MARIADB_COUNTERS = "SELECT turn_count, conversation_id FROM sessions WHERE session_id = %s"
_MARIADB_INSERT_TURN = _SQLITE_INSERT_TURN.replace("?", "%s")
_MARIADB_INSERT_KEYED_TURN = _SQLITE_INSERT_KEYED_TURN.replace("?", "%s")
_MARIADB_INSERT_SLOT = _SQLITE_INSERT_SLOT.replace("?", "%s")
_MARIADB_HEAD = _PG_HEAD.replace("$1", "%s")
_MARIADB_TURNS = (
    _PG_TURNS.replace("$1", "%s").replace("$2", "%s").replace(" NULLS FIRST", "")
)  # (sid, cid, sid, cid); ascending order puts NULLs first on MariaDB
_SQLITE_PRUNE_CHANGES = """
DELETE FROM convostore_changes WHERE id <= (SELECT max(id) FROM convostore_changes) - ?"""


_ALL_TURNS = 2**31 - 1
"""The load's window that reads every turn (as convostore passes it)."""


class _Positional:
    """A convostore statement compiled for a driver, its named parameters laid out in the
    driver's positional order (constants the statement carries filled in)."""

    def __init__(self, statement: ClauseElement, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None
        self.sql = str(compiled)
        self._slots = [(name, compiled.binds[name].value) for name in compiled.positiontup]
        selected = getattr(statement, "selected_columns", ())
        self.columns = {column.key: index for index, column in enumerate(selected)}
        """Each result column's index, by name."""

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values.get(name, constant) for name, constant in self._slots]


def _session(head: Sequence[Any], at: Mapping[str, int]) -> dict[str, Any]:
    """The session fields of a load's session row, by name: from the one-statement load's JSON
    object ``session``, or from the columns of the load in parts."""
    names = ("version", "language", "current_template_id", "current_slots")
    if "session" in at:
        fields = json.loads(head[at["session"]])
    else:
        fields = {name: head[at[name]] for name in names}
        fields["current_slots"] = json.loads(fields["current_slots"])
    return {name: fields[name] for name in names}


def _fold_one(
    rows: Sequence[Sequence[Any]], at: Mapping[str, int], parse: bool
) -> dict[str, Any] | None:
    """A session as plain data from the rows of convostore's one-statement load: the session
    row (seq 0) first, then each turn followed by its slots."""
    if not rows or rows[0][0] != 0:
        return None
    return {**_session(rows[0], at), "turns": _turns(rows[1:], parse)}


def _fold_parts(
    head: Sequence[Any],
    at: Mapping[str, int],
    turn_rows: Sequence[Sequence[Any]],
    slot_rows: Sequence[Sequence[Any]],
    parse: bool = True,
) -> dict[str, Any]:
    """A session as plain data from the rows of convostore's three-part load; ``parse``: the
    timestamps are SQLite's text (the driver returns datetimes otherwise)."""
    slots: dict[int, dict[str, str]] = {}
    for seq, name, value in slot_rows:
        slots.setdefault(seq, {})[name] = value
    parsed = _Stamps() if parse else _same
    return {
        **_session(head, at),
        "turns": [
            {
                "role": row[1],
                "content": row[2],
                "resolved_question": row[3],
                "template_id": row[4],
                "slots": slots.get(row[0], {}),
                "results": json.loads(row[5]),
                "created_at": parsed(row[6]),
                "trace_id": row[7],
                "span_id": row[8],
                **_tool_fields(*row[9:13]),
            }
            for row in turn_rows
        ],
    }


def _same(value: Any) -> Any:
    return value


def _tool_fields(tool: Any, call: Any, arguments: Any, data: Any) -> dict[str, Any]:
    """A message's tool fields and data as a reader keeps them, the JSON ones parsed."""
    return {
        "tool_name": tool,
        "tool_call_id": call,
        "tool_arguments": None if arguments is None else json.loads(arguments),
        "data": None if data is None else json.loads(data),
    }


class _Stamps:
    """SQLite's timestamp text as aware datetimes, the last one remembered: the turns of an
    exchange share theirs, and a careful reader parses it once (as convostore does)."""

    __slots__ = ("_parsed", "_text")

    def __init__(self) -> None:
        self._text: str | None = None
        self._parsed: datetime | None = None

    def __call__(self, text: str) -> datetime | None:
        if text != self._text:
            self._text = text
            self._parsed = datetime.fromisoformat(text + "+00:00")  # UTC, stored without
        return self._parsed


class RawStore(Protocol):
    """The floor's operations: ``append`` and ``load`` the naive transaction and reads, the
    ``*_one`` variants the true floor (one statement, or one SQLite thread hop)."""

    async def append(self, sid: str, exchange: Exchange) -> None: ...

    async def append_one(self, sid: str, exchange: Exchange, *, keyed: bool = True) -> None: ...

    async def load(self, sid: str) -> dict[str, Any] | None: ...

    async def load_one(self, sid: str, window: int = _ALL_TURNS) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


def _fold(head: Sequence[Any], rows: Sequence[Sequence[Any]], parse: bool) -> dict[str, Any]:
    """A session as plain data from its row and its turn-and-slot rows."""
    return {
        "version": head[0],
        "language": head[3],
        "current_template_id": head[4],
        "current_slots": json.loads(head[5]),
        "turns": _turns(rows, parse),
    }


def _turns(rows: Sequence[Sequence[Any]], parse: bool) -> list[dict[str, Any]]:
    """Turn rows, each followed by its slot rows (seq, role, content, resolved_question,
    template_id, results, created_at, trace_id, span_id, tool_name, tool_call_id,
    tool_arguments, data, name, value, then anything), as plain dicts."""
    turns: list[dict[str, Any]] = []
    slots: dict[str, str] = {}
    parsed = _Stamps()
    for row in rows:
        _, role, content, resolved, template_id, results, created_at, trace, span = row[:9]
        name, value = row[13], row[14]
        if name is None:
            slots = {}
            if parse:
                created_at = parsed(created_at)
            turns.append(
                {
                    "role": role,
                    "content": content,
                    "resolved_question": resolved,
                    "template_id": template_id,
                    "slots": slots,
                    "results": json.loads(results),
                    "created_at": created_at,
                    "trace_id": trace,
                    "span_id": span,
                    **_tool_fields(*row[9:13]),
                }
            )
        else:
            slots[name] = value
    return turns


async def connect_sqlite(path: str) -> aiosqlite.Connection:
    """An aiosqlite connection with convostore's PRAGMAs."""
    db = await aiosqlite.connect(path)
    for pragma in SQLITE_PRAGMAS:
        await db.execute_fetchall(pragma)  # read to the end: no statement left in progress
    return db


async def connect_postgres(dsn: str) -> asyncpg.Connection:
    """A plain asyncpg connection."""
    return await asyncpg.connect(dsn)


class RawSqlite:
    """The floor on aiosqlite: one ``execute`` (one thread hop) per statement."""

    def __init__(self, db: aiosqlite.Connection, ttl: float) -> None:
        self._db = db
        self._ttl = timedelta(seconds=ttl)
        statements, dialect = Statements(backend_for("sqlite")), sqlite_aiosqlite.dialect()
        allocate = statements.allocate
        assert not isinstance(allocate, UpdateThenRead)  # SQLite has UPDATE ... RETURNING
        self._allocate = _Positional(allocate, dialect)
        self._load_parts = tuple(
            _Positional(statement, dialect)
            for statement in (
                statements.load_session,
                statements.load_turns,
                statements.load_slots,
            )
        )

    async def append(self, sid: str, exchange: Exchange) -> None:
        db = self._db
        now = datetime.now(timezone.utc)
        stamp = sqlite_timestamp(now)
        try:
            rows = await db.execute_fetchall(
                _SQLITE_UPDATE,
                (
                    stamp,
                    sqlite_timestamp(now + self._ttl),
                    exchange.slots_json,
                    exchange.template_id,
                    sid,
                ),
            )
            last, cid = next(iter(rows))
            turn_rows, slot_rows = _exchange_rows(sid, cid, last, exchange, stamp)
            for turn in turn_rows:
                await db.execute(_SQLITE_INSERT_TURN, turn)
            for slot in slot_rows:
                await db.execute(_SQLITE_INSERT_SLOT, slot)
            await db.commit()
        except BaseException:
            await db.rollback()
            raise

    async def append_one(self, sid: str, exchange: Exchange, *, keyed: bool = True) -> None:
        """The true floor: the whole transaction in one hop to aiosqlite's worker thread:
        convostore's own head statement (``Statements.allocate``: it also checks
        the expiry and that the key is new), then the rows with their idempotency key.
        ``keyed=False``: the earlier floor, a hand-written UPDATE and rows without a key."""
        now = datetime.now(timezone.utc)
        stamp = sqlite_timestamp(now)
        expires = sqlite_timestamp(now + self._ttl)
        key = new_idempotency_key() if keyed else None
        if keyed:
            head_sql = self._allocate.sql
            head = self._allocate.args(
                {
                    "now": stamp,
                    "expires": expires,
                    "hits": 1,
                    "template_id": exchange.template_id,
                    "merge": exchange.slots_json,
                    "n": 2,
                    "sid": sid,
                    "key": key,
                    "uid": None,
                }
            )
            insert_turn = _SQLITE_INSERT_KEYED_TURN
        else:
            head_sql = _SQLITE_UPDATE
            head = [stamp, expires, exchange.slots_json, exchange.template_id, sid]
            insert_turn = _SQLITE_INSERT_TURN

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(head_sql, head).fetchone()
                last, cid = row[0], row[-1]
                turn_rows, slot_rows = _exchange_rows(sid, cid, last, exchange, stamp, key)
                conn.executemany(insert_turn, turn_rows)
                conn.executemany(_SQLITE_INSERT_SLOT, slot_rows)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

        await run_in_sqlite_thread(self._db, work)

    async def load_one(self, sid: str, window: int = _ALL_TURNS) -> dict[str, Any] | None:
        """The true floor: convostore's three-part load in one read transaction, one hop."""
        head, turns, slots = self._load_parts

        def work(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
            conn.execute("BEGIN")
            try:
                heads = conn.execute(head.sql, head.args({"sid": sid})).fetchall()
                if not heads:
                    return heads, [], []
                upto = heads[0][head.columns["turn_count"]]
                cid = heads[0][head.columns["conversation_id"]]
                params = {"sid": sid, "cid": cid, "upto": upto, "after": upto - window}
                return (
                    heads,
                    conn.execute(turns.sql, turns.args(params)).fetchall(),
                    conn.execute(slots.sql, slots.args(params)).fetchall(),
                )
            finally:
                conn.rollback()

        heads, turn_rows, slot_rows = await run_in_sqlite_thread(self._db, work)
        return _fold_parts(heads[0], head.columns, turn_rows, slot_rows) if heads else None

    async def load(self, sid: str) -> dict[str, Any] | None:
        heads = list(await self._db.execute_fetchall(_SQLITE_HEAD, (sid,)))
        if not heads:
            return None
        cid = heads[0][7]
        rows = await self._db.execute_fetchall(_SQLITE_TURNS, (sid, cid))
        return _fold(heads[0], list(rows), parse=True)

    async def close(self) -> None:
        await self._db.close()


def _exchange_rows(
    sid: str, cid: int, last: int, exchange: Exchange, stamp: object, key: str | None = None
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The two turn rows (user at ``last - 1``, assistant at ``last``, in conversation
    ``cid``) and the slot rows of an exchange, as the floors insert them, one statement per
    row. With a ``key``, the user turn's row ends with it (``_*_INSERT_KEYED_TURN``), as
    convostore stores one per append."""
    user_seq = last - 1
    user = (
        cid,
        user_seq,
        sid,
        "user",
        exchange.question,
        None,
        exchange.template_id,
        exchange.results_json,
        stamp,
    )
    assistant = (cid, last, sid, "assistant", exchange.answer, None, None, "[]", stamp)
    turn_rows = [user, assistant] if key is None else [(*user, key), (*assistant, None)]
    slot_rows = [(cid, user_seq, name, sid, value) for name, value in exchange.slots.items()]
    return turn_rows, slot_rows


async def _pg_append(
    conn: asyncpg.Connection, sid: str, exchange: Exchange, ttl: timedelta
) -> None:
    """The naive exchange on asyncpg: one transaction, one statement at a time (asyncpg's
    statement cache prepares each once per connection)."""
    now = datetime.now(timezone.utc)
    async with conn.transaction():
        last, cid = await conn.fetchrow(
            _PG_UPDATE, sid, now, now + ttl, exchange.slots_json, exchange.template_id
        )
        turn_rows, slot_rows = _exchange_rows(sid, cid, last, exchange, now)
        for turn in turn_rows:
            await conn.execute(_PG_INSERT_TURN, *turn)
        for slot in slot_rows:
            await conn.execute(_PG_INSERT_SLOT, *slot)


class RawPostgres:
    """The floor on one asyncpg connection, each statement prepared once."""

    def __init__(self, conn: asyncpg.Connection, ttl: float) -> None:
        self._conn = conn
        self._ttl = timedelta(seconds=ttl)
        self._statements: dict[str, Any] = {}
        self._positional: dict[str, _Positional] = {}
        self.feed = True
        """Whether ``append_one`` inserts the change feed's row, as convostore's append does
        (False: the append of a schema without coherence, ``Statements(feed=False)``)."""

    @classmethod
    async def open(cls, dsn: str, ttl: float) -> RawPostgres:
        conn = await connect_postgres(dsn)
        raw = cls(conn, ttl)
        for name, sql in (("head", _PG_HEAD), ("turns", _PG_TURNS)):
            raw._statements[name] = await conn.prepare(sql)
        statements = Statements(backend_for("postgresql"))
        assert statements.append_cte is not None
        dialect = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]
        unrecorded = Statements(backend_for("postgresql"), feed=False).append_cte
        assert unrecorded is not None
        for name, statement in (
            ("append_one", statements.append_cte),
            ("append_unrecorded", unrecorded),
            ("load_one", statements.load),
        ):
            positional = _Positional(statement, dialect)
            raw._positional[name] = positional
            raw._statements[name] = await conn.prepare(positional.sql)
        # asyncpg's prepares leave the server in an implicit transaction, holding a share
        # lock on every table they name (so any DDL waits) until the next statement ends it.
        await conn.execute("SELECT 1")
        return raw

    async def append(self, sid: str, exchange: Exchange) -> None:
        await _pg_append(self._conn, sid, exchange, self._ttl)

    async def append_one(self, sid: str, exchange: Exchange, *, keyed: bool = True) -> None:
        """The true floor: convostore's one-statement append, prepared, in autocommit, with an
        idempotency key as convostore stores one per append. ``keyed=False``: the earlier
        floor, without a key (the statement then skips the key's check and index entry)."""
        now = datetime.now(timezone.utc)
        name = "append_one" if self.feed else "append_unrecorded"
        args = self._positional[name].args(
            {
                "sid": sid,
                "n": 2,
                "now": now,
                "key": new_idempotency_key() if keyed else None,
                "expires": now + self._ttl,
                "hits": 1,
                "template_id": exchange.template_id,
                "merge": exchange.slots_json,
                "uid": None,
                "roles": ["user", "assistant"],
                "contents": [exchange.question, exchange.answer],
                "resolved": [None, None],
                "templates": [exchange.template_id, None],
                "results": [exchange.results_json, "[]"],
                "traces": [None, None],
                "spans": [None, None],
                "tools": [None, None],
                "calls": [None, None],
                "arguments": [None, None],
                "data": [None, None],
                "slot_ords": [1] * len(exchange.slots),
                "slot_names": list(exchange.slots),
                "slot_values": list(exchange.slots.values()),
            }
        )
        if await self._statements[name].fetchrow(*args) is None:
            raise RuntimeError(f"session {sid}: the one-statement append wrote nothing")

    async def load_one(self, sid: str, window: int = _ALL_TURNS) -> dict[str, Any] | None:
        """The true floor: convostore's one-statement load, prepared."""
        args = self._positional["load_one"].args({"sid": sid, "window": window})
        rows = await self._statements["load_one"].fetch(*args)
        return _fold_one(rows, self._positional["load_one"].columns, parse=False)

    async def load(self, sid: str) -> dict[str, Any] | None:
        head = await self._statements["head"].fetchrow(sid)
        if head is None:
            return None
        rows = await self._statements["turns"].fetch(sid, head[7])
        return _fold(head, rows, parse=False)

    async def close(self) -> None:
        await self._conn.close()


class RawPostgresPool:
    """The floor for concurrency: an asyncpg pool; asyncpg's statement cache prepares each
    statement once per connection."""

    def __init__(self, pool: asyncpg.Pool, ttl: float) -> None:
        self._pool = pool
        self._ttl = timedelta(seconds=ttl)

    @classmethod
    async def open(cls, dsn: str, size: int, ttl: float) -> RawPostgresPool:
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        return cls(pool, ttl)

    async def append(self, sid: str, exchange: Exchange) -> None:
        async with self._pool.acquire() as conn:
            await _pg_append(conn, sid, exchange, self._ttl)

    async def close(self) -> None:
        await self._pool.close()


async def connect_mariadb(url: str, *, autocommit: bool = False) -> asyncmy.Connection:
    """An asyncmy connection to the database of ``url`` (a ``mariadb+asyncmy://`` URL) that
    reads committed data, as convostore's engines do."""
    conn = await asyncmy.connect(**mariadb_connect_args(url), autocommit=autocommit)
    async with conn.cursor() as cursor:
        await cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return conn


class RawMariaDB:
    """The floor on one asyncmy connection (autocommit off: the first statement begins the
    transaction, COMMIT ends it)."""

    def __init__(self, conn: asyncmy.Connection, ttl: float) -> None:
        self._conn = conn
        self._ttl = timedelta(seconds=ttl)
        statements, dialect = Statements(backend_for("mariadb")), mysql_asyncmy.dialect()
        allocate = statements.allocate
        assert isinstance(allocate, UpdateThenRead)  # MariaDB has no UPDATE ... RETURNING
        self._bump = _Positional(allocate.update, dialect)
        self._counters = _Positional(allocate.read, dialect)
        self._load_parts = tuple(
            _Positional(statement, dialect)
            for statement in (
                statements.load_session,
                statements.load_turns,
                statements.load_slots,
            )
        )

    @classmethod
    async def open(cls, url: str, ttl: float) -> RawMariaDB:
        return cls(await connect_mariadb(url), ttl)

    async def append(self, sid: str, exchange: Exchange) -> None:
        """The naive exchange: UPDATE, the counters' SELECT, an INSERT per row, COMMIT."""
        now = datetime.now(timezone.utc)
        try:
            async with self._conn.cursor() as cursor:
                await cursor.execute(
                    _MARIADB_UPDATE,
                    (now, now + self._ttl, exchange.slots_json, exchange.template_id, sid),
                )
                await cursor.execute(_MARIADB_COUNTERS, (sid,))
                last, cid = await cursor.fetchone()
                turn_rows, slot_rows = _exchange_rows(sid, cid, last, exchange, now)
                for turn in turn_rows:
                    await cursor.execute(_MARIADB_INSERT_TURN, turn)
                for slot in slot_rows:
                    await cursor.execute(_MARIADB_INSERT_SLOT, slot)
            await self._conn.commit()
        except BaseException:
            await self._conn.rollback()
            raise

    async def append_one(self, sid: str, exchange: Exchange, *, keyed: bool = True) -> None:
        """The true floor: convostore's own head statement (``Statements.allocate``: the
        UPDATE, which also checks the expiry and that the key is new, then the read of the
        counters), one ``executemany`` of the turns with the idempotency key and one of the
        slots, COMMIT. ``keyed=False``: the hand-written UPDATE, rows without a key."""
        now = datetime.now(timezone.utc)
        key = new_idempotency_key() if keyed else None
        if keyed:
            head_sql = self._bump.sql
            head = self._bump.args(
                {
                    "now": now,
                    "expires": now + self._ttl,
                    "hits": 1,
                    "template_id": exchange.template_id,
                    "merge": exchange.slots_json,
                    "n": 2,
                    "sid": sid,
                    "key": key,
                    "uid": None,
                }
            )
            read_sql, read = self._counters.sql, self._counters.args({"sid": sid})
            insert_turn = _MARIADB_INSERT_KEYED_TURN
        else:
            head_sql = _MARIADB_UPDATE
            head = [now, now + self._ttl, exchange.slots_json, exchange.template_id, sid]
            read_sql, read = _MARIADB_COUNTERS, [sid]
            insert_turn = _MARIADB_INSERT_TURN
        try:
            async with self._conn.cursor() as cursor:
                if not await cursor.execute(head_sql, head):
                    raise RuntimeError(f"session {sid}: the append's UPDATE matched no row")
                await cursor.execute(read_sql, read)
                row = await cursor.fetchone()
                last, cid = row[0], row[-1]
                turn_rows, slot_rows = _exchange_rows(sid, cid, last, exchange, now, key)
                await cursor.executemany(insert_turn, turn_rows)
                await cursor.executemany(_MARIADB_INSERT_SLOT, slot_rows)
            await self._conn.commit()
        except BaseException:
            await self._conn.rollback()
            raise

    async def load_one(self, sid: str, window: int = _ALL_TURNS) -> dict[str, Any] | None:
        """The true floor: convostore's three-part read (``Statements.load_session``,
        ``load_turns``, ``load_slots``), three round trips of plain index range scans. Reading
        committed data, each statement reads a snapshot of its own; the turns and slots are
        bounded by the session row's ``turn_count``, so an append committed in between is not
        half read. The transaction the reads begin is left to whatever comes next (an
        append's COMMIT, or the close) to end."""
        head, turns, slots = self._load_parts
        async with self._conn.cursor() as cursor:
            await cursor.execute(head.sql, head.args({"sid": sid}))
            row = await cursor.fetchone()
            if row is None:
                return None
            upto, cid = row[head.columns["turn_count"]], row[head.columns["conversation_id"]]
            params = {"sid": sid, "cid": cid, "upto": upto, "after": upto - window}
            await cursor.execute(turns.sql, turns.args(params))
            turn_rows = await cursor.fetchall()
            await cursor.execute(slots.sql, slots.args(params))
            slot_rows = await cursor.fetchall()
        return _fold_parts(row, head.columns, turn_rows, slot_rows, parse=False)

    async def load(self, sid: str) -> dict[str, Any] | None:
        """The naive load: the session row, then its turns with their slots."""
        async with self._conn.cursor() as cursor:
            await cursor.execute(_MARIADB_HEAD, (sid,))
            head = await cursor.fetchone()
            if head is None:
                return None
            cid = head[7]
            await cursor.execute(_MARIADB_TURNS, (sid, cid, sid, cid))
            return _fold(head, await cursor.fetchall(), parse=False)

    async def close(self) -> None:
        await self._conn.ensure_closed()


class RawPool:
    """The floor under concurrency on any backend: ``size`` raw connections, each running
    the true floor's append, lent first come, first served from an ``asyncio.Queue``."""

    def __init__(self, stores: list[RawStore]) -> None:
        self._stores = stores
        self._idle: asyncio.Queue[RawStore] = asyncio.Queue()
        for store in stores:
            self._idle.put_nowait(store)

    @classmethod
    async def open(cls, db: Database, size: int, ttl: float) -> RawPool:
        return cls([await open_raw(db, ttl) for _ in range(size)])

    async def append(self, sid: str, exchange: Exchange) -> None:
        store = await self._idle.get()
        try:
            await store.append_one(sid, exchange)
        finally:
            self._idle.put_nowait(store)

    async def close(self) -> None:
        for store in self._stores:
            await store.close()


async def open_raw(db: Database, ttl: float) -> RawStore:
    """The single-connection floor for a database."""
    if db.backend == "sqlite":
        return RawSqlite(await connect_sqlite(db.target), ttl)
    if db.backend == "mariadb":
        return await RawMariaDB.open(db.target, ttl)
    return await RawPostgres.open(db.target, ttl)


class RawSweeper(Protocol):
    """The floor's sweep, one batch per call, each its own autocommitted statement."""

    async def sessions(self, now: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` sessions that expired by ``now``; returns how many."""
        ...

    async def transcripts(self, now: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` conversations that ended ``retention`` or more before
        ``now``, with their turns and slots; returns how many."""
        ...

    async def close(self) -> None: ...


class _PostgresSweeper:
    """The sweep on asyncpg: each batch one prepared DELETE ... RETURNING in autocommit."""

    def __init__(self, conn: asyncpg.Connection, retention: float) -> None:
        self._conn = conn
        self._retention = timedelta(seconds=retention)
        self._statements: dict[str, Any] = {}

    async def _fetch(self, sql: str, *args: Any) -> int:
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = await self._conn.prepare(sql)
        return len(await statement.fetch(*args))

    async def sessions(self, now: datetime, batch_size: int) -> int:
        return await self._fetch(_PG_SWEEP, now, batch_size)

    async def transcripts(self, now: datetime, batch_size: int) -> int:
        return await self._fetch(_PG_SWEEP_TRANSCRIPTS, now - self._retention, batch_size)

    async def close(self) -> None:
        await self._conn.close()


class _SqliteSweeper:
    """The sweep on aiosqlite: each batch a DELETE ... RETURNING and its COMMIT. Like
    convostore's, a batch that comes back short prunes the change feed (the schema's triggers
    add a row per deleted session) to its newest ``CHANGES_KEPT`` rows."""

    def __init__(self, db: aiosqlite.Connection, retention: float) -> None:
        self._db = db
        self._retention = timedelta(seconds=retention)

    async def _delete(self, sql: str, *args: Any) -> int:
        rows = await self._db.execute_fetchall(sql, args)
        await self._db.commit()
        return len(list(rows))

    async def sessions(self, now: datetime, batch_size: int) -> int:
        deleted = await self._delete(_SQLITE_SWEEP, sqlite_timestamp(now), batch_size)
        if deleted < batch_size:
            await self._db.execute(_SQLITE_PRUNE_CHANGES, (CHANGES_KEPT,))
            await self._db.commit()
        return deleted

    async def transcripts(self, now: datetime, batch_size: int) -> int:
        cutoff = sqlite_timestamp(now - self._retention)
        return await self._delete(_SQLITE_SWEEP_TRANSCRIPTS, cutoff, batch_size)

    async def close(self) -> None:
        await self._db.close()


class _MariaDBSweeper:
    """The sweep on asyncmy, in autocommit: each batch convostore's own DELETE ... WHERE key IN
    (a derived table of the batch's keys) RETURNING; like convostore's, a session batch that
    comes back short prunes the change feed (filled by the schema's triggers) to its newest
    ``CHANGES_KEPT`` rows."""

    def __init__(self, conn: asyncmy.Connection, retention: float) -> None:
        self._conn = conn
        self._retention = timedelta(seconds=retention)
        statements, dialect = Statements(backend_for("mariadb")), mysql_asyncmy.dialect()
        self._sweep = _Positional(statements.sweep, dialect)
        self._transcripts = _Positional(statements.sweep_transcripts, dialect)
        self._prune = _Positional(statements.prune_changes, dialect)

    async def _run(self, statement: _Positional, values: Mapping[str, Any]) -> int:
        async with self._conn.cursor() as cursor:
            await cursor.execute(statement.sql, statement.args(values))
            return len(await cursor.fetchall())

    async def sessions(self, now: datetime, batch_size: int) -> int:
        deleted = await self._run(self._sweep, {"now": now, "batch": batch_size})
        if deleted < batch_size:
            async with self._conn.cursor() as cursor:
                await cursor.execute(self._prune.sql, self._prune.args({"keep": CHANGES_KEPT}))
        return deleted

    async def transcripts(self, now: datetime, batch_size: int) -> int:
        cutoff = now - self._retention
        return await self._run(self._transcripts, {"cutoff": cutoff, "batch": batch_size})

    async def close(self) -> None:
        await self._conn.ensure_closed()


async def open_raw_sweeper(db: Database, retention: float) -> RawSweeper:
    """The floor's sweep on its own connection, keeping transcripts ``retention`` seconds."""
    if db.backend == "sqlite":
        return _SqliteSweeper(await connect_sqlite(db.target), retention)
    if db.backend == "mariadb":
        return _MariaDBSweeper(await connect_mariadb(db.target, autocommit=True), retention)
    return _PostgresSweeper(await connect_postgres(db.target), retention)
