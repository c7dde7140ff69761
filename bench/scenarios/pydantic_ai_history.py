"""pydantic-ai's message history through convostore's adapter (``store_messages`` of a run's new
request and response, ``load_messages``) against hand-written baselines, as pydantic-ai has no
store of its own, each on the raw driver convostore's fast path uses (aiosqlite, asyncpg): one
JSON blob per conversation, as pydantic-ai's documentation keeps a history
(``ModelMessagesTypeAdapter.dump_json(result.all_messages())``, upserted after each run, read
back with ``validate_json``), and a row per message, as SQL chat stores keep one. Interleaved:
store at 10 and 1,000 stored messages, load of 10 and 1,000 (convostore's cache warm), load of
100 cold (its cache holds one session; random order).

SQLite and PostgreSQL; not MariaDB (the issue asks for those two)."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, cast

import aiosqlite
import asyncpg

from convostore import SessionRepository

from ..backends import Database, Server
from ..context import Context
from ..raw import connect_sqlite
from ..results import Row
from ..timing import Op, Stats, interleave
from ..workload import history_exchanges, session_ids
from ._util import cycling, timed
from .langchain_history import COLD, LARGE, SMALL, comparison_rows

__all__ = ["run"]

STAMP = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


async def run(ctx: Context) -> list[Row]:
    try:
        import pydantic_ai  # noqa: F401
    except ImportError as exc:
        ctx.note(f"pydantic-ai: skipped ({exc}); pip install '.[pydantic-ai]'")
        return []
    rows: list[Row] = []
    for server in ctx.servers.values():
        if server.name == "mariadb":
            ctx.note("pydantic-ai: SQLite and PostgreSQL only, so no rows on MariaDB")
            continue
        rows += await _run_backend(ctx, server)
    return rows


def _messages(question: str, answer: str) -> list[Any]:
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

    return [
        ModelRequest(parts=[UserPromptPart(question, timestamp=STAMP)], timestamp=STAMP),
        ModelResponse(parts=[TextPart(answer)], timestamp=STAMP, model_name="bench"),
    ]


def _history(n_messages: int) -> list[Any]:
    return [m for q, a, _ in history_exchanges(n_messages) for m in _messages(q, a)]


class _Baseline:
    """A hand-written store on the raw driver (aiosqlite or asyncpg): its own table, each
    write one transaction."""

    _schema: tuple[str, ...]
    """Its CREATE statements (``INTEGER PRIMARY KEY`` is ``SERIAL`` on PostgreSQL)."""

    def __init__(self, db: Database, conn: Any) -> None:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        self._sqlite = db.backend == "sqlite"
        self._conn = conn
        self._adapter = ModelMessagesTypeAdapter

    @classmethod
    async def open(cls, db: Database) -> Any:
        if db.backend == "sqlite":
            conn: Any = await connect_sqlite(db.target)
            for statement in cls._schema:
                await conn.execute(statement)
            await conn.commit()
        else:
            conn = await asyncpg.connect(db.target)
            for statement in cls._schema:
                await conn.execute(statement.replace("INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY"))
        return cls(db, conn)

    async def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._sqlite:
            conn: aiosqlite.Connection = self._conn
            await conn.executemany(sql.replace("$1", "?").replace("$2", "?"), rows)
            await conn.commit()
        else:
            await self._conn.executemany(sql, rows)

    async def _fetch(self, sql: str, sid: str) -> list[Any]:
        if self._sqlite:
            return list(await self._conn.execute_fetchall(sql.replace("$1", "?"), (sid,)))
        return list(await self._conn.fetch(sql, sid))

    async def close(self) -> None:
        await self._conn.close()


class _Blobs(_Baseline):
    """One JSON blob per conversation, as pydantic-ai's documentation keeps a history: after
    each run the app upserts ``dump_json(result.all_messages())`` (it holds the messages
    between runs), and a load is ``validate_json`` of the blob."""

    _schema = (
        "CREATE TABLE bench_pai_blobs (conversation_id VARCHAR(128) PRIMARY KEY, "
        "messages TEXT NOT NULL)",
    )

    def __init__(self, db: Database, conn: Any) -> None:
        super().__init__(db, conn)
        self.held: dict[str, list[Any]] = {}

    async def store(self, sid: str, new: list[Any]) -> None:
        messages = self.held.setdefault(sid, [])
        messages.extend(new)
        await self._write(
            "INSERT INTO bench_pai_blobs VALUES ($1, $2) ON CONFLICT (conversation_id) "
            "DO UPDATE SET messages = excluded.messages",
            [(sid, self._adapter.dump_json(messages).decode())],
        )

    async def load(self, sid: str) -> list[Any]:
        rows = await self._fetch(
            "SELECT messages FROM bench_pai_blobs WHERE conversation_id = $1", sid
        )
        return self._adapter.validate_json(rows[0][0]) if rows else []


class _Rows(_Baseline):
    """A row per message (as LangChain's and the OpenAI Agents SDK's SQL stores keep them):
    a store inserts each new message's JSON; a load reads them in order and validates them
    as one JSON array."""

    _schema = (
        "CREATE TABLE bench_pai_rows (id INTEGER PRIMARY KEY, conversation_id VARCHAR(128) "
        "NOT NULL, message TEXT NOT NULL)",
        "CREATE INDEX bench_pai_rows_conversation ON bench_pai_rows (conversation_id, id)",
    )

    async def store(self, sid: str, new: list[Any]) -> None:
        dumped = self._adapter.dump_python(new, mode="json")
        await self._write(
            "INSERT INTO bench_pai_rows (conversation_id, message) VALUES ($1, $2)",
            [(sid, json.dumps(message)) for message in dumped],
        )

    async def load(self, sid: str) -> list[Any]:
        rows = await self._fetch(
            "SELECT message FROM bench_pai_rows WHERE conversation_id = $1 ORDER BY id", sid
        )
        return self._adapter.validate_json("[" + ",".join(row[0] for row in rows) + "]")


BLOB = {"blob": "JSON blob per conversation"}
"""The baseline the target is set against, by its key in the stats, with its label."""
ROWS = {
    "rows": (
        "a row per message",
        "a bare table on the raw driver (no sessions, expiry, owners, idempotency or cache): "
        "shown, no target",
    )
}
"""Shown without a target: by key, label and note."""


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    from convostore.integrations.pydantic_ai import load_messages, store_messages

    sizes = ctx.sizes
    calls = sizes.peer_iterations + sizes.warmup
    db = await server.database("pydantic_ai")
    repo = ctx.repository(db.url)
    cold_repo = ctx.repository(db.url, max_sessions=1)
    baselines: dict[str, Any] = {"blob": await _Blobs.open(db), "rows": await _Rows.open(db)}
    sets = {
        "store-small": (session_ids("pa-ss", calls), SMALL),
        "store-large": (session_ids("pa-sl", max(2, sizes.append_sessions // 4)), LARGE),
        "load-small": (session_ids("pa-ls", 4), SMALL),
        "load-large": (session_ids("pa-ll", 2), LARGE),
        "cold": (session_ids("pa-c", max(4, sizes.append_sessions)), COLD),
    }
    try:
        async with repo, cold_repo:

            async def prefill() -> None:
                for sids, size in sets.values():
                    messages = _history(size)
                    for sid in sids:
                        await store_messages(repo, sid, messages)
                        for baseline in baselines.values():
                            await baseline.store(sid, messages)
                        await load_messages(repo, sid)  # cached, as a run loads before it stores

            await timed(f"pydantic-ai: prefill ({server.label})", prefill())
            new = _messages("En in Enschede?", "Er zijn 3 archieven in Enschede.")
            order = random.Random(7).choices(sets["cold"][0], k=calls)

            def store(target: Any) -> Callable[[str], Awaitable[Any]]:
                if isinstance(target, SessionRepository):
                    return lambda sid: store_messages(target, sid, new)
                return lambda sid: target.store(sid, new)

            def load(target: Any) -> Callable[[str], Awaitable[Any]]:
                if isinstance(target, SessionRepository):
                    return lambda sid: load_messages(target, sid)
                return cast(Callable[[str], Awaitable[Any]], target.load)

            measured: list[tuple[str, str, dict[str, Stats]]] = []
            for op, path, sids, action, conv in (
                ("store.10", f"store_messages (request + response) at {SMALL} stored",
                 sets["store-small"][0], store, repo),
                ("store.1000", f"store_messages (request + response) at {LARGE:,} stored",
                 sets["store-large"][0], store, repo),
                ("load.10", f"load_messages of {SMALL}", sets["load-small"][0], load, repo),
                ("load.1000", f"load_messages of {LARGE:,}", sets["load-large"][0], load, repo),
                ("load.cold100", f"load_messages of {COLD}, cold (random order)",
                 order, load, cold_repo),
            ):  # fmt: skip
                ops: dict[str, Op] = {"convostore": cycling(sids, action(conv))}
                ops.update((key, cycling(sids, action(b))) for key, b in baselines.items())
                stats = await timed(
                    f"pydantic-ai: {path} ({server.label})",
                    interleave(
                        ops, sizes.peer_iterations, warmup=sizes.warmup, rounds=sizes.rounds
                    ),
                )
                measured.append((op, path, stats))
    finally:
        for baseline in baselines.values():
            await baseline.close()
        await server.drop(db)
    return comparison_rows("pydantic_ai", server, measured, BLOB, "pydantic-ai: ", ROWS)
