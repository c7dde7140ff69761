"""Lifecycle defects that were once reproduced on main, kept as tests against their return:
stop() racing a call that creates a session, the background sweep dying on an unexpected
error, a caller's engine changed or disposed, untranslated driver errors, and the state
returned when the session vanished."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from convostore import NotRunning, SessionRepository, StoreConfig, StoreError
from convostore._core.calls import CallLifecycle
from convostore._core.store import SqlStore
from convostore.backends.sqlite import sqlite_on_close, sqlite_on_connect
from convostore.errors import translate_errors

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]


async def test_stop_waits_for_a_call_that_is_creating_its_session(
    url: str, sql: Sql, clock: Any
) -> None:
    """stop() called while add_turn creates a new session returns only after the write ended
    (nothing runs on a disposed engine); calls after it raise NotRunning."""
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0), clock=clock)
    await repo.start()
    calls = [asyncio.create_task(repo.add_turn(f"new-{k}", "q", "a")) for k in range(5)]
    await asyncio.sleep(0)  # every call has been admitted
    pool = repo.engine.pool
    assert isinstance(pool, QueuePool), pool  # file-backed: pooled, so checkedout() exists
    await repo.stop()
    assert all(call.done() for call in calls), "stop() returned before its calls ended"
    assert [len((await call).turns) for call in calls] == [2] * 5
    assert pool.checkedout() == 0
    assert await sql("SELECT count(*) FROM turns") == [(10,)]
    with pytest.raises(NotRunning):
        await repo.add_turn("late", "q", "a")


async def test_the_background_sweep_survives_any_error(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that fails with an error that is not a ConvostoreError (a bug, say) is logged,
    and the next one still runs."""
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0.02))
    real = repo.sweep_expired
    runs: list[str] = []

    async def flaky() -> int:
        runs.append("run")
        if len(runs) == 1:
            raise KeyError("a bug, not a ConvostoreError")
        return await real()

    monkeypatch.setattr(repo, "sweep_expired", flaky)
    async with repo:
        for _ in range(200):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.02)
    assert len(runs) >= 3, "the sweep ended after its first error"
    assert any("sweep failed" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_callers_sqlite_engine_gets_its_listener_back_off(url: str) -> None:
    engine = create_async_engine(url)
    try:
        first = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0), engine=engine)
        second = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0), engine=engine)
        await first.start()
        await second.start()
        listeners = (("connect", sqlite_on_connect), ("close", sqlite_on_close))
        assert all(event.contains(engine.sync_engine, *listener) for listener in listeners)
        await first.stop()
        assert all(event.contains(engine.sync_engine, *listener) for listener in listeners), (
            "removed while another repository still uses the engine"
        )
        await second.stop()
        assert not any(event.contains(engine.sync_engine, *listener) for listener in listeners)
        async with engine.connect() as conn:  # still the caller's, still open
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_sqlite_connection_closed_with_a_live_statement_gives_up_the_write_lock(
    make_repo: MakeRepo, url: str
) -> None:
    """SQLAlchemy closes a connection it invalidates (a caller cancelled in the middle of a
    statement) while the cancellation's traceback still holds the statement's cursor; sqlite3
    then keeps the connection as a zombie, with its transaction. The repository's engine rolls
    back first, so no write lock outlives the close: one once made the next add_turn wait
    out the busy timeout and fail with "database is locked"."""
    repo = await make_repo()
    async with repo.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute("BEGIN IMMEDIATE")
        cursor = await driver.execute("SELECT 1 UNION ALL SELECT 2")  # its statement stays live
        await conn.invalidate()
    other = sqlite3.connect(str(make_url(url).database), timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" while the zombie holds it
        other.execute("ROLLBACK")
    finally:
        other.close()
    del cursor
    assert len((await repo.add_turn("after", "q", "a")).turns) == 2


async def test_a_cancelled_operation_leaves_nothing_held_by_its_traceback() -> None:
    """What a cancelled operation's frames held (the driver's cursor: on SQLite it keeps a
    connection SQLAlchemy closed open, with its last read, so that the WAL cannot be reset)
    is freed when the call ends, though its caller keeps the cancellation, not whenever the
    garbage collector next runs."""
    calls = CallLifecycle(reconnect_timeout=1.0)
    started = asyncio.Event()
    held: list[weakref.ref[object]] = []

    class Cursor:
        pass

    async def operation() -> None:
        cursor = Cursor()
        held.append(weakref.ref(cursor))
        started.set()
        await asyncio.Event().wait()

    call = asyncio.ensure_future(calls.run("testing", operation))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await call
    kept = cancelled.value  # the caller keeps the cancellation, as a task that ended does
    assert held[0]() is None, kept


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_callers_engine_is_not_disposed_when_its_connections_die(
    url: str, sql: Sql
) -> None:
    engine = create_async_engine(url)
    try:
        config = StoreConfig(database_url=url, cleanup_interval=0, max_sessions=1)
        async with SessionRepository(config, engine=engine) as repo:
            await repo.add_turn("mine", "q", "a")
            pool = engine.sync_engine.pool
            await sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            state = await repo.add_turn("mine", "q2", "a2")
            assert len(state.turns) == 4
            assert engine.sync_engine.pool is pool, "convostore disposed the caller's pool"
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "error",
    [ValueError("Connection closed"), asyncio.TimeoutError(), ConnectionResetError()],
)
def test_driver_errors_that_escaped_before_are_translated(error: Exception) -> None:
    with pytest.raises(StoreError) as raised, translate_errors("loading a session"):
        raise error
    assert raised.value.__cause__ is error


def test_other_value_errors_are_not_mistaken_for_driver_errors() -> None:
    with pytest.raises(ValueError, match="a bug"), translate_errors("loading a session"):
        raise ValueError("a bug")


async def test_a_session_deleted_between_append_and_reload_returns_just_the_exchange(
    make_repo: MakeRepo, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented choice: if the session is gone by the time the state is re-read, the
    returned state holds only the exchange just stored, with the context it carries."""
    a = await make_repo(cache_coherence="local")
    b = await make_repo(cache_coherence="local")
    await a.add_turn("vanish", "q1", "a1")
    await b.add_turn("vanish", "q2", "a2")  # a's cached copy is now behind: a must reload
    real_load = SqlStore.load

    async def deleted_first(store: SqlStore, sid: str, window: int | None = None) -> Any:
        await b.delete(sid)
        return await real_load(store, sid, window)

    monkeypatch.setattr(SqlStore, "load", deleted_first)  # a's reload after its append
    state = await a.add_turn("vanish", "q3", "a3", slots={"place": "Utrecht"}, template_id="t")
    assert [turn.content for turn in state.turns] == ["q3", "a3"]
    assert state.current_slots == {"place": "Utrecht"}
    assert state.current_template_id == "t"
    assert await sql("SELECT count(*) FROM sessions WHERE session_id = 'vanish'") == [(0,)]


async def test_logging_stays_quiet_on_a_normal_workload(
    repo: SessionRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="convostore")
    await repo.add_turn("quiet", "q", "a")
    await repo.get("quiet")
    assert [r for r in caplog.records if r.name == "convostore"] == []
