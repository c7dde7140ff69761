"""The two executors of the hot paths: which one a repository picks, that both store the same
rows and return the same states, that SQLAlchemy's listeners see every statement on the Core
path, and that a SQLite exchange is atomic under SQLAlchemy's aiosqlite recipe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from convostore import (
    ConversationState,
    ConversationTurn,
    SessionRepository,
    StoreConfig,
    StoreError,
)
from convostore.backends import sqlite as sqlite_backend_module
from convostore.backends._private import aiosqlite_thread_api

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]


def count_cursor_executes(engine: AsyncEngine) -> list[str]:
    """A before_cursor_execute listener on ``engine``, recording each statement."""
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    return seen


async def test_fast_path_unless_something_watches_sqlalchemy(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver runs the hot paths by default; the Core executor with fast_path=False, an
    engine that echoes or has cursor-execute listeners, or aiosqlite's private API missing."""

    async def picks_fast(engine: AsyncEngine | None = None, **config: Any) -> bool:
        settings = StoreConfig(database_url=url, cleanup_interval=0, **config)
        async with SessionRepository(settings, engine=engine) as repo:
            return repo.fast_path

    assert await picks_fast()
    assert not await picks_fast(fast_path=False)
    echoing = create_async_engine(url, echo=True)
    listened = create_async_engine(url)
    count_cursor_executes(listened)
    try:
        assert not await picks_fast(echoing)
        assert not await picks_fast(listened)
    finally:
        await echoing.dispose()
        await listened.dispose()
    monkeypatch.setattr(sqlite_backend_module, "aiosqlite_thread_api", lambda: False)
    assert await picks_fast() is url.startswith("postgresql")


def test_aiosqlite_thread_api_is_detected() -> None:
    """The helper finds aiosqlite's private API here, and reports a class without it."""
    assert aiosqlite_thread_api()
    assert not aiosqlite_thread_api(type("Moved", (), {"_execute": lambda self: None}))


async def _workload(repo: SessionRepository, sid: str, clock: Any) -> list[Any]:
    """The same calls on either executor; returns the states they returned, as dicts."""
    states: list[ConversationState | None] = [
        await repo.add_turn(
            sid,
            "Welke archieven zijn er in Utrecht? 🏛️",
            "Er zijn er 12.",
            resolved_question="Welke archieven zijn er in Utrecht?",
            template_id="archives_in_place",
            slots={"place": "Utrecht", "leeg": ""},
            results=[{"name": "Het Utrechts Archief", "score": 0.5, "tags": [1, None]}],
        ),
        await repo.add_turn(sid, "En in Enschede?", "Er zijn er 3.", slots={"place": "Enschede"}),
    ]
    clock.advance(400)
    state = await repo.get(sid)
    assert state is not None
    state.add_turn(ConversationTurn(content="Hoeveel?", slots={"n": "1"}))
    await repo.update(sid, state)  # returns nothing, so it adds no state
    states.append(await repo.get(sid))
    return [s.model_dump() if s is not None else None for s in states]


SESSION_ROW = (
    "SELECT language, current_template_id, current_slots, turn_count, version, access_count,"
    " created_at, last_accessed, expires_at FROM sessions WHERE session_id = :sid"
)
TURN_ROWS = (
    "SELECT seq, role, content, resolved_question, template_id, results, created_at,"
    " idempotency_key IS NULL FROM turns WHERE session_id = :sid ORDER BY seq"
)
SLOT_ROWS = "SELECT seq, name, value FROM turn_slots WHERE session_id = :sid ORDER BY seq, name"


async def test_both_executors_store_the_same_rows(
    make_repo: MakeRepo, sql: Sql, clock: Any
) -> None:
    """The same workload through the fast path and through SQLAlchemy's execution stores the
    same session, turn and slot rows and returns the same states."""
    start = clock.now
    results = {}
    for fast_path in (True, False):
        clock.now = start
        repo = await make_repo(fast_path=fast_path, max_sessions=1)
        assert repo.fast_path is fast_path
        results[fast_path] = await _workload(repo, f"sid-{fast_path}", clock)
    assert results[True] == results[False]
    for query in (SESSION_ROW, TURN_ROWS, SLOT_ROWS):
        on_fast = await sql(query, sid="sid-True")
        on_core = await sql(query, sid="sid-False")
        assert on_fast, query
        assert [tuple(row) for row in on_fast] == [tuple(row) for row in on_core], query


async def test_cursor_listener_sees_every_hot_path_statement(
    url: str, make_repo: MakeRepo, clock: Any
) -> None:
    """On a caller's engine with a before_cursor_execute listener, a cold get and an append
    each reach the listener."""
    writer = await make_repo()
    await writer.add_turn("s", "q", "a", slots={"place": "Utrecht"})
    engine = create_async_engine(url)
    seen = count_cursor_executes(engine)
    try:
        config = StoreConfig(database_url=url, cleanup_interval=0)
        async with SessionRepository(config, engine=engine, clock=clock) as repo:
            seen.clear()
            state = await repo.get("s")
            assert state is not None
            assert len(state.turns) == 2
            loads = [s for s in seen if "turn_slots" in s and s.lstrip().startswith("SELECT")]
            assert loads, seen
            seen.clear()
            await repo.add_turn("s", "q2", "a2")
            assert [s for s in seen if s.lstrip().upper().startswith(("UPDATE", "WITH"))], seen
    finally:
        await engine.dispose()


async def test_listener_added_after_start_sees_hot_paths(make_repo: MakeRepo) -> None:
    """A cursor-execute listener added to a running repository's engine sees the append and
    the cold load; once it is removed, the hot paths are back on the driver."""
    writer = await make_repo()
    await writer.add_turn("s", "q", "a")
    repo = await make_repo(fast_path=True)
    assert repo.fast_path
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(repo.engine.sync_engine, "before_cursor_execute", record)
    assert not repo.fast_path
    state = await repo.get("s")
    assert state is not None
    assert [s for s in seen if "turn_slots" in s and s.lstrip().startswith("SELECT")], seen
    seen.clear()
    await repo.add_turn("s", "q2", "a2")
    assert [s for s in seen if s.lstrip().upper().startswith(("UPDATE", "WITH"))], seen
    event.remove(repo.engine.sync_engine, "before_cursor_execute", record)
    assert repo.fast_path


REJECT_ASSISTANT = (
    "CREATE TRIGGER reject_assistant BEFORE INSERT ON turns WHEN NEW.role = 'assistant' "
    "BEGIN SELECT RAISE(ABORT, 'rejected'); END"
)


def _recipe_engine(url: str) -> AsyncEngine:
    """SQLAlchemy's documented aiosqlite recipe: the driver's own BEGIN off, SQLAlchemy's on."""
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def do_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def do_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


@pytest.mark.parametrize("setup", ["recipe", "autocommit"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "core"])
async def test_sqlite_exchange_is_atomic_whatever_the_engine_settings(
    url: str, sql: Sql, fast_path: bool, setup: str
) -> None:
    """With the assistant turn rejected, add_turn raises StoreError and stores nothing of the
    exchange, on an engine following SQLAlchemy's aiosqlite recipe or in autocommit."""
    if not url.startswith("sqlite"):
        pytest.skip("the recipe and the trigger are SQLite's")
    engine = (
        _recipe_engine(url)
        if setup == "recipe"
        else create_async_engine(url, isolation_level="AUTOCOMMIT")
    )
    try:
        config = StoreConfig(database_url=url, cleanup_interval=0, fast_path=fast_path)
        async with SessionRepository(config, engine=engine) as repo:
            assert repo.fast_path is fast_path
            await repo.add_turn("s", "q", "a")
            await sql(REJECT_ASSISTANT)
            with pytest.raises(StoreError):
                await repo.add_turn("s", "q2", "a2", slots={"place": "Utrecht"})
            assert await sql("SELECT turn_count, version FROM sessions") == [(2, 1)]
            assert await sql("SELECT count(*) FROM turns") == [(2,)]
            assert await sql("SELECT count(*) FROM turn_slots") == [(0,)]
            state = await repo.get("s")
            assert state is not None
            assert [t.content for t in state.turns] == ["q", "a"]
    finally:
        await engine.dispose()


def checked_out(engine: AsyncEngine) -> int:
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


async def test_own_engine_keeps_one_connection_between_operations(make_repo: MakeRepo) -> None:
    """On convostore's own engine the fast path keeps the connection an operation used for the
    next one (no pool checkout per call), and gives it back at stop()."""
    repo = await make_repo()
    if not repo.fast_path:
        pytest.skip("the Core path (CONVOSTORE_TEST_FAST_PATH=0) keeps no connection")
    engine = repo.engine
    checkouts: list[int] = []
    await repo.add_turn("kept", "q1", "a1")
    assert checked_out(engine) == 1
    listener = lambda *args: checkouts.append(1)  # noqa: E731
    await repo.add_turn("kept", "q2", "a2")
    assert (await repo.get("other")) is None
    assert checked_out(engine) == 1
    event.listen(engine.sync_engine, "checkout", listener)
    try:
        await repo.add_turn("kept", "q3", "a3")
        # Something watches checkouts now: every operation checks out, and none is kept.
        assert checkouts == [1]
        assert checked_out(engine) == 0
    finally:
        event.remove(engine.sync_engine, "checkout", listener)
    await repo.add_turn("kept", "q4", "a4")
    assert checked_out(engine) == 1
    pool = engine.sync_engine.pool
    await repo.stop()
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0


async def test_engine_passed_in_keeps_no_connection(url: str) -> None:
    """A caller's engine gets every connection back after each operation."""
    engine = create_async_engine(url)
    try:
        async with SessionRepository(StoreConfig(cleanup_interval=0), engine=engine) as repo:
            await repo.add_turn("s", "q", "a")
            assert await repo.get("nobody") is None
            assert checked_out(engine) == 0
    finally:
        await engine.dispose()


async def test_engine_passed_in_decodes_results_with_its_own_json_deserializer(url: str) -> None:
    """convostore decodes its own engines' JSON with its own decoder; a caller's engine keeps
    the ``json_deserializer`` it was made with, on a cold load as everywhere."""
    decoded: list[str] = []

    def deserialize(text: str) -> Any:
        decoded.append(text)
        return json.loads(text)

    engine = create_async_engine(url, json_deserializer=deserialize)
    try:
        async with SessionRepository(StoreConfig(cleanup_interval=0), engine=engine) as repo:
            await repo.add_turn("theirs", "q", "a", results=[{"name": "Het Utrechts Archief"}])
        decoded.clear()
        async with SessionRepository(StoreConfig(cleanup_interval=0), engine=engine) as cold:
            state = await cold.get("theirs")
        assert state is not None
        assert state.turns[0].results == [{"name": "Het Utrechts Archief"}]
        assert '[{"name": "Het Utrechts Archief"}]' in decoded
    finally:
        await engine.dispose()


async def test_kept_connection_never_starves_the_pool(make_repo: MakeRepo) -> None:
    """With room for one connection only, concurrent calls all finish: the fast path keeps
    none when the pool could lend no other."""
    repo = await make_repo(pool_size=1, max_overflow=0)
    await repo.add_turn("starve", "q", "a")
    states = await asyncio.wait_for(
        asyncio.gather(*(repo.add_turn(f"starve{i}", "q", "a") for i in range(8))), timeout=20
    )
    assert all(len(state.turns) == 2 for state in states)
    assert checked_out(repo.engine) == 0


async def test_hot_statements_survive_a_schema_change(
    make_repo: MakeRepo, backend: str, sql: Sql
) -> None:
    """After a migration changes the type of a column the hot statements read, the next
    calls on the fast path still work: asyncpg prepares its cached statement again."""
    if backend != "postgresql":
        pytest.skip("prepared statements are the asyncpg driver's")
    writer, repo = await make_repo(), await make_repo()
    if not repo.fast_path:
        pytest.skip("SQLAlchemy's asyncpg adapter raises once for a stale cached statement")
    await writer.add_turn("prepared", "q1", "a1")
    loaded = await repo.get("prepared")  # a cold load on this repository
    assert loaded is not None
    await repo.add_turn("prepared", "q2", "a2")
    # The view and the search's generated column read turns.content; a migration would
    # recreate them around such a change.
    await sql("DROP VIEW exchanges")
    await sql("DROP VIEW feedback")
    await sql("ALTER TABLE turns DROP COLUMN search_vector")
    await sql("ALTER TABLE turns ALTER COLUMN content TYPE varchar")
    await writer.add_turn("other", "q", "a")
    appended = await repo.add_turn("prepared", "q3", "a3")
    assert [turn.content for turn in appended.turns] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    state = await repo.get("other")
    assert state is not None
    assert [turn.content for turn in state.turns] == ["q", "a"]
