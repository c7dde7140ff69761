"""The change feed that keeps workers' caches coherent, polled from a thread of each
repository's own: no NOTIFY on PostgreSQL, ids that commit out of order, a write in flight
while a worker starts, a busy event loop, PgBouncer without a direct URL, and pruning.

Two repositories stand for two worker processes, as in ``test_workers``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from servers import PgBouncer
from sqlalchemy.engine import make_url
from test_concurrency import WRITER
from test_workers import BOUND, contents, eventually

import convostore._core.store
from convostore import SessionRepository, StoreConfig

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]
postgresql_only = pytest.mark.parametrize("backend", ["postgresql"])


@pytest.fixture
async def raw(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to this test's PostgreSQL database."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    yield connection
    await connection.close()


async def _is_gone(repo: SessionRepository, sid: str) -> bool:
    return await repo.get(sid) is None


@postgresql_only
async def test_writes_send_no_notify_and_still_reach_the_other_workers(
    make_repo: MakeRepo, raw: asyncpg.Connection
) -> None:
    """No trigger on ``sessions`` calls pg_notify (whose commit-time lock made writers commit
    one at a time), a listener on the old channel hears nothing of an append and a delete,
    and the other worker still sees both within the bound."""
    functions = await raw.fetch(
        "SELECT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'sessions'::regclass AND p.prosrc ILIKE '%notify%'"
    )
    assert functions == []
    heard: list[str] = []
    await raw.add_listener("convostore_changes", lambda *args: heard.append(args[-1]))
    a, b = await make_repo(), await make_repo()
    await a.add_turn("told", "q1", "a1")
    assert contents(await a.get("told")) == ["q1", "a1"]

    await b.add_turn("told", "q2", "a2")
    await eventually(lambda: _has_turns(a, "told", 4))
    assert await b.delete("told")
    await eventually(lambda: _is_gone(a, "told"))
    await asyncio.sleep(0.1)
    assert heard == []


async def _has_turns(repo: SessionRepository, sid: str, count: int) -> bool:
    state = await repo.get(sid)
    return state is not None and len(state.turns) == count


@postgresql_only
async def test_a_change_committed_after_a_later_one_is_still_seen(
    make_repo: MakeRepo, raw: asyncpg.Connection
) -> None:
    """A delete takes its feed id, then waits to commit while another worker's append takes
    and commits a later one, which the first worker sees. The earlier id, missing below a
    seen one for many polls, is still asked for: once it commits, the first worker drops the
    session within the bound. An aborted one costs the cache nothing."""
    a, b = await make_repo(), await make_repo()
    for sid in ("late", "early", "aborted", "kept"):
        await a.add_turn(sid, "q1", "a1")
        assert await a.get(sid) is not None

    late = raw.transaction()
    await late.start()
    await raw.execute("DELETE FROM sessions WHERE session_id = 'late'")
    await b.add_turn("early", "q2", "a2")
    await eventually(lambda: _has_turns(a, "early", 4))
    await asyncio.sleep(0.3)  # many polls, the lock holders read, the gap still open
    assert await a.get("late") is not None
    await late.commit()
    await eventually(lambda: _is_gone(a, "late"))

    aborted = raw.transaction()
    await aborted.start()
    await raw.execute("UPDATE sessions SET version = version + 1 WHERE session_id = 'aborted'")
    await b.add_turn("early", "q3", "a3")
    await eventually(lambda: _has_turns(a, "early", 6))
    await aborted.rollback()
    await asyncio.sleep(0.3)
    misses = (await a.get_stats())["cache_misses"]
    assert contents(await a.get("kept")) == ["q1", "a1"]
    assert (await a.get_stats())["cache_misses"] == misses, "the cache was cleared"


@postgresql_only
async def test_a_write_in_flight_while_a_worker_starts_is_seen(
    make_repo: MakeRepo, raw: asyncpg.Connection
) -> None:
    """A delete took its feed id, and a later one committed, before a worker started: its
    cache stays off (reads go to the database) until that transaction ends, then comes on,
    and the session is gone from it."""
    writer = await make_repo()
    await writer.add_turn("pending", "q1", "a1")
    await writer.add_turn("other", "q1", "a1")

    pending = raw.transaction()
    await pending.start()
    await raw.execute("DELETE FROM sessions WHERE session_id = 'pending'")
    await writer.add_turn("other", "q2", "a2")
    a = await make_repo()
    assert await a.get("pending") is not None
    assert await a.get("pending") is not None
    assert (await a.get_stats())["cache_enabled"] == 0
    await pending.commit()

    async def cache_on() -> bool:
        return (await a.get_stats())["cache_enabled"] == 1

    await eventually(cache_on)
    assert await a.get("pending") is None
    assert contents(await a.get("other")) == ["q1", "a1", "q2", "a2"]
    hits = (await a.get_stats())["cache_hits"]
    await a.get("other")
    assert (await a.get_stats())["cache_hits"] == hits + 1


async def test_a_write_is_not_served_stale_after_the_event_loop_was_busy(url: str) -> None:
    """Another process appends while this worker's event loop is busy and never yields (here
    it waits for that process, as a long computation in a request handler would hold it).
    The watcher runs in a thread of its own, so the first cache read afterwards already has
    the append. (Both use the real clock.)"""
    async with SessionRepository(StoreConfig(database_url=url, cleanup_interval=0)) as a:
        await a.add_turn("busy", "q1", "a1")
        assert contents(await a.get("busy")) == ["q1", "a1"]
        subprocess.run(  # noqa: ASYNC221 -- the point: the event loop does not run meanwhile
            [sys.executable, str(WRITER), url, "busy", "other", "1"],
            input="go\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        time.sleep(0.2)  # noqa: ASYNC251
        assert contents(await a.get("busy")) == ["q1", "a1", "other-0", "other-0-answer"]


@postgresql_only
async def test_through_pgbouncer_the_poller_needs_no_direct_url(
    pgbouncer: PgBouncer, url: str
) -> None:
    """Transaction-mode PgBouncer and no ``listen_url``: each worker polls through the pooler,
    keeps its cache on, and sees the other's append and delete within the bound."""
    config = StoreConfig(
        database_url=pgbouncer.url_for(url.rsplit("/", 1)[1]),
        pooler="pgbouncer",
        cleanup_interval=0,
    )
    async with SessionRepository(config) as a, SessionRepository(config) as b:
        await a.add_turn("pooled", "q1", "a1")
        assert await a.get("pooled") is not None
        assert (await a.get_stats())["cache_enabled"] == 1
        hits = (await a.get_stats())["cache_hits"]
        await a.get("pooled")
        assert (await a.get_stats())["cache_hits"] == hits + 1

        await b.add_turn("pooled", "q2", "a2")
        await eventually(lambda: _has_turns(a, "pooled", 4))
        await b.delete("pooled")
        await eventually(lambda: _is_gone(a, "pooled"))


async def test_the_sweep_prunes_the_change_feed(
    make_repo: MakeRepo, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep keeps the newest ``CHANGES_KEPT`` rows of the feed, and the watchers carry
    on: another worker's next write is seen."""
    monkeypatch.setattr(convostore._core.store, "CHANGES_KEPT", 5)
    a, b = await make_repo(), await make_repo()
    for k in range(12):
        await b.add_turn("pruned", f"q{k}", f"a{k}")
    assert (await sql("SELECT count(*) FROM convostore_changes"))[0][0] >= 12
    assert len(contents(await a.get("pruned"))) == 24

    await b.sweep_expired()
    (newest,) = (await sql("SELECT max(id) FROM convostore_changes"))[0]
    kept = await sql("SELECT id FROM convostore_changes ORDER BY id")
    assert [row[0] for row in kept] == list(range(newest - 4, newest + 1))

    await b.add_turn("pruned", "q12", "a12")
    await eventually(lambda: _has_turns(a, "pruned", 26), within=BOUND)


@postgresql_only
async def test_each_write_records_one_change_from_its_own_statement(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """Since 0007 a write inserts its feed row itself and the trigger records deletions only:
    an append, an update and a delete each leave exactly one row (a trigger still firing on
    UPDATE would leave two), and a version moved by SQL outside convostore leaves none."""
    repo = await make_repo(cache_coherence="local")
    await repo.add_turn("one", "q", "a")  # creates the session, then appends
    before = (await sql("SELECT count(*) FROM convostore_changes"))[0][0]

    await repo.add_turn("one", "q2", "a2")
    state = await repo.get("one")
    assert state is not None
    state.current_template_id = "t"
    await repo.update("one", state)
    assert await repo.delete("one")
    rows = await sql(
        "SELECT session_id, version FROM convostore_changes ORDER BY id OFFSET :skip",
        skip=before,
    )
    assert [row[0] for row in rows] == ["one"] * 3
    assert rows[-1][1] == -1  # the deletion, recorded by the trigger

    await repo.add_turn("two", "q", "a")
    count = (await sql("SELECT count(*) FROM convostore_changes"))[0][0]
    await sql("UPDATE sessions SET version = version + 1 WHERE session_id = 'two'")
    assert (await sql("SELECT count(*) FROM convostore_changes"))[0][0] == count
