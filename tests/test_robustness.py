"""Failures the core must survive: a failing write, cancelled callers, dropped connections,
stop(), time zones, schema setup races, and the background expiry task.

Each test checks what the database holds afterwards with SQL from outside the repository.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from convostore import (
    ConversationState,
    ConversationTurn,
    ConvostoreError,
    NotRunning,
    SchemaNotReady,
    SessionRepository,
    StatementTimeout,
    StoreConfig,
    StoreError,
    StoreUnavailable,
)
from convostore.migrate import VERSION_TABLE, head_revision

Sql = Callable[..., Awaitable[list[Any]]]
MakeRepo = Callable[..., Awaitable[SessionRepository]]

OTHER_CONNECTIONS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    "mariadb": "SELECT count(*) FROM information_schema.PROCESSLIST "
    "WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
}
"""Connections to the test's database but the one asking, on a server."""
WAITING_FOR_LOCKS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'",
    "mariadb": "SELECT count(*) FROM information_schema.INNODB_TRX AS t "
    "JOIN information_schema.PROCESSLIST AS p ON p.ID = t.trx_mysql_thread_id "
    "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
}
"""Statements on the test's database waiting for a lock, on a server."""


@pytest.fixture
def foreign_tz() -> Iterator[str]:
    """Run the test with the process time zone set to America/New_York (restored after)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield "America/New_York"
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
async def empty_engine(empty_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own on ``empty_url``, for checking what migrations did."""
    engine = create_async_engine(empty_url)
    yield engine
    await engine.dispose()


async def stored_exchanges(sql: Sql, sid: str) -> list[tuple[str, str]]:
    """The stored (question, answer) pairs, after checking seq runs 1..n and that every user
    turn is immediately followed by its assistant turn."""
    rows = await sql(
        "SELECT seq, role, content FROM turns WHERE session_id = :sid ORDER BY seq", sid=sid
    )
    assert [row[0] for row in rows] == list(range(1, len(rows) + 1))
    assert len(rows) % 2 == 0, f"an exchange was split: {len(rows)} turns stored"
    pairs = []
    for k in range(0, len(rows), 2):
        assert (rows[k][1], rows[k + 1][1]) == ("user", "assistant"), rows[k : k + 2]
        pairs.append((str(rows[k][2]), str(rows[k + 1][2])))
    return pairs


def contents(state: ConversationState | None) -> list[tuple[str, str]]:
    assert state is not None
    return [(turn.role, turn.content) for turn in state.turns]


def as_turns(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [turn for q, a in pairs for turn in (("user", q), ("assistant", a))]


async def session_counters(sql: Sql, sid: str) -> list[Any]:
    return await sql("SELECT turn_count, version FROM sessions WHERE session_id = :sid", sid=sid)


async def terminate_other_connections(sql: Sql, backend: str) -> list[Any]:
    """Have the server end every other connection to the test's database."""
    if backend == "postgresql":
        return await sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    ids = await sql(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
        "AND ID <> CONNECTION_ID()"
    )
    for (connection_id,) in ids:
        await sql(f"KILL CONNECTION {int(connection_id)}")
    return ids


async def reject_boom(sql: Sql, backend: str) -> None:
    """Make the database refuse any turn whose content is 'boom'."""
    if backend != "sqlite":
        await sql("ALTER TABLE turns ADD CONSTRAINT no_boom CHECK (content <> 'boom')")
    else:
        await sql(
            "CREATE TRIGGER no_boom BEFORE INSERT ON turns WHEN NEW.content = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )


def wal_exists(url: str) -> bool:
    """Whether the SQLite database at ``url`` has a write-ahead log file."""
    database = make_url(url).database
    assert database is not None
    return Path(database + "-wal").exists()


def queue_pool(repo: SessionRepository) -> QueuePool:
    """The repository's pool: a QueuePool, as for every file-backed database."""
    pool = repo.engine.pool
    assert isinstance(pool, QueuePool), pool
    return pool


def in_use(repo: SessionRepository) -> int:
    """Connections checked out of the pool besides the one the fast path keeps between
    operations."""
    return queue_pool(repo).checkedout() - repo.connections_kept


async def settle(repo: SessionRepository) -> None:
    """Let shielded operations of cancelled callers finish (bounded wait, not a timing test)."""
    for _ in range(200):
        if in_use(repo) == 0:
            return
        await asyncio.sleep(0.01)


async def wait_for_count(sql: Sql, statement: str, expected: int) -> int:
    """Poll ``statement`` (a count) until it gives ``expected`` or ~3 s pass; returns the last
    count. Used where the server updates its view asynchronously (a backend exiting)."""
    count = -1
    for _ in range(60):
        count = (await sql(statement))[0][0]
        if count == expected:
            break
        await asyncio.sleep(0.05)
    return int(count)


@pytest.mark.parametrize("field", ["question", "answer"])
async def test_failed_add_turn_stores_nothing_and_keeps_cache_clean(
    repo: SessionRepository, sql: Sql, backend: str, field: str
) -> None:
    """An add_turn the database rejects raises StoreError (driver error chained), stores
    neither turn, changes no counter, leaves no uncommitted state cached; the next works."""
    sid, _ = await repo.get_or_create()
    await repo.add_turn(sid, "q1", "a1", slots={"place": "Utrecht"}, template_id="t1")
    before = await session_counters(sql, sid)
    assert (await repo.get(sid)) is not None  # cached
    await reject_boom(sql, backend)

    question, answer = ("boom", "a2") if field == "question" else ("q2", "boom")
    with pytest.raises(StoreError) as raised:
        await repo.add_turn(sid, question, answer, slots={"place": "Delft"}, template_id="t2")
    assert isinstance(raised.value, ConvostoreError)
    assert raised.value.__cause__ is not None
    assert "boom" in str(raised.value)

    assert await stored_exchanges(sql, sid) == [("q1", "a1")]
    assert await sql("SELECT count(*) FROM turns WHERE content IN ('q2', 'a2')") == [(0,)]
    assert await session_counters(sql, sid) == before
    state = await repo.get(sid)
    assert state is not None
    assert contents(state) == as_turns([("q1", "a1")])
    assert state.current_slots == {"place": "Utrecht"}
    assert state.current_template_id == "t1"

    state = await repo.add_turn(sid, "q3", "a3")
    assert contents(state) == as_turns([("q1", "a1"), ("q3", "a3")])
    assert await stored_exchanges(sql, sid) == [("q1", "a1"), ("q3", "a3")]


async def test_failed_add_turn_on_new_session_creates_nothing(
    repo: SessionRepository, sql: Sql, backend: str
) -> None:
    """A rejected first add_turn leaves no session row behind and get() still says None."""
    await reject_boom(sql, backend)
    sid = repo.generate_session_id()
    with pytest.raises(StoreError) as raised:
        await repo.add_turn(sid, "q", "boom")
    assert raised.value.__cause__ is not None
    assert await sql("SELECT count(*) FROM sessions WHERE session_id = :sid", sid=sid) == [(0,)]
    assert await sql("SELECT count(*) FROM turns") == [(0,)]
    assert await repo.get(sid) is None
    assert (await repo.get_stats())["sessions_created"] == 0


async def test_failed_update_stores_nothing_and_keeps_cache_clean(
    repo: SessionRepository, sql: Sql, backend: str
) -> None:
    """An update the database rejects stores none of its turns or fields, and the cache still
    holds the committed state."""
    sid, _ = await repo.get_or_create()
    await repo.add_turn(sid, "q1", "a1", slots={"place": "Utrecht"})
    before = await session_counters(sql, sid)
    await reject_boom(sql, backend)

    state = await repo.get(sid)
    assert state is not None
    state.add_turn(ConversationTurn(role="user", content="fine"))
    state.add_turn(ConversationTurn(role="assistant", content="boom"))
    state.current_slots["place"] = "Delft"
    state.language = "en"
    with pytest.raises(StoreError) as raised:
        await repo.update(sid, state)
    assert raised.value.__cause__ is not None

    assert await stored_exchanges(sql, sid) == [("q1", "a1")]
    assert await session_counters(sql, sid) == before
    assert await sql("SELECT language FROM sessions WHERE session_id = :sid", sid=sid) == [(None,)]
    again = await repo.get(sid)
    assert again is not None
    assert contents(again) == as_turns([("q1", "a1")])
    assert again.current_slots == {"place": "Utrecht"}
    assert again.language is None


async def test_cancelled_calls_leave_whole_exchanges_and_no_connection_behind(
    make_repo: MakeRepo, sql: Sql, backend: str
) -> None:
    """Cancelling add_turn (and cold gets) at many points leaves every exchange whole, no
    pooled connection checked out, none idle in a transaction, and the next call works."""
    repo = await make_repo(max_sessions=1)  # every get of the other session is a cold load
    sid, _ = await repo.get_or_create()
    other, _ = await repo.get_or_create()
    await repo.add_turn(other, "other-q", "other-a")

    cancelled = 0
    for attempt in range(30):
        target = (
            repo.get(other)
            if attempt % 4 == 3
            else repo.add_turn(sid, f"q{attempt}", f"a{attempt}")
        )
        task = asyncio.ensure_future(target)
        if attempt % 3 == 1:
            for _ in range(attempt % 7):
                await asyncio.sleep(0)
        elif attempt % 3 == 2:
            await asyncio.sleep(0.0005 * (attempt % 6))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
    assert cancelled > 0

    await settle(repo)
    assert in_use(repo) == 0
    if backend == "postgresql":
        idle = await sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
        assert idle == [(0,)]

    pairs = await stored_exchanges(sql, sid)
    numbers = []
    for question, answer in pairs:
        assert question.startswith("q"), question
        assert answer == "a" + question[1:]
        numbers.append(int(question[1:]))
    assert len(numbers) == len(set(numbers))
    assert await stored_exchanges(sql, other) == [("other-q", "other-a")]

    state = await repo.add_turn(sid, "q-last", "a-last")
    assert contents(state) == as_turns([*pairs, ("q-last", "a-last")])
    assert await stored_exchanges(sql, sid) == [*pairs, ("q-last", "a-last")]
    assert contents(await repo.get(other)) == as_turns([("other-q", "other-a")])


async def test_stop_closes_connections_and_refuses_calls(
    make_repo: MakeRepo, url: str, backend: str, sql: Sql
) -> None:
    """stop() closes every connection the repository opened; afterwards every call, and a
    second start(), raises NotRunning."""
    server = backend != "sqlite"  # on SQLite, `sql` is never used: it would hold the file
    others = OTHER_CONNECTIONS.get(backend, "")
    before = (await sql(others))[0][0] if server else 0

    repo = await make_repo()
    sids = [repo.generate_session_id() for _ in range(6)]
    await asyncio.gather(*(repo.add_turn(sid, "q", "a") for sid in sids))
    if server:
        assert (await sql(others))[0][0] > before
    else:
        assert wal_exists(url)  # WAL mode, and connections are open

    pool = queue_pool(repo)
    await repo.stop()
    assert pool.checkedout() == 0
    assert pool.checkedin() == 0
    if server:
        assert await wait_for_count(sql, others, before) == before
    else:
        # SQLite removes the WAL file when the last connection to the database closes.
        assert not wal_exists(url)

    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: repo.get(sids[0]),
        lambda: repo.get_or_create(sids[0]),
        lambda: repo.get_or_create(),
        lambda: repo.add_turn(sids[0], "q", "a"),
        lambda: repo.update(sids[0], ConversationState()),
        lambda: repo.delete(sids[0]),
        lambda: repo.sweep_expired(),
        lambda: repo.start(),
    ]
    for call in calls:
        with pytest.raises(NotRunning) as raised:
            await call()
        assert isinstance(raised.value, ConvostoreError)
    await repo.stop()  # stopping twice is harmless


@pytest.mark.parametrize("operation", ["add_turn", "cold_get"])
async def test_server_dropping_connections_fails_no_call(
    make_repo: MakeRepo, sql: Sql, backend: str, operation: str
) -> None:
    """After the server terminates the repository's connections (its change listener's too),
    no call fails: each retries on a fresh connection, and nothing is stored twice."""
    if backend == "sqlite":
        pytest.skip("SQLite has no server that could drop connections")
    repo = await make_repo(max_sessions=1)
    sid, other = repo.generate_session_id(), repo.generate_session_id()
    await asyncio.gather(*(repo.add_turn(sid, f"q{n}", f"a{n}") for n in range(4)))
    await repo.add_turn(other, "other-q", "other-a")  # evicts sid: its next get is cold
    expected = await stored_exchanges(sql, sid)
    assert len(expected) == 4

    terminated = await terminate_other_connections(sql, backend)
    assert terminated, "the repository had no connection to drop"
    assert await wait_for_count(sql, OTHER_CONNECTIONS[backend], 0) == 0

    failures: list[tuple[int, StoreError]] = []
    for attempt in range(3):
        state: ConversationState | None
        try:
            if operation == "add_turn":
                state = await repo.add_turn(sid, f"after{attempt}", f"answer{attempt}")
                expected.append((f"after{attempt}", f"answer{attempt}"))
            else:
                state = await repo.get(sid)
        except StoreError as exc:
            failures.append((attempt, exc))
            continue
        assert contents(state) == as_turns(expected)
        if operation == "cold_get":
            break
    assert failures == [], "a call failed although the server was up"
    assert await stored_exchanges(sql, sid) == expected


async def test_a_statement_past_its_time_bound_is_stopped_on_the_server(
    make_repo: MakeRepo, url: str, sql: Sql, backend: str
) -> None:
    """An append that waits for a session row another transaction holds runs past its time
    bound. On MariaDB the server stops it a little before the client's bound
    (``StatementTimeout``, not sent again); on PostgreSQL the client gives up on each attempt
    and has the server cancel it (``StoreUnavailable`` at ``reconnect_timeout``). Either way no
    statement is left waiting for the lock, so none commits once it is freed: the call that
    raised stored nothing, and the session takes appends again."""
    if backend == "sqlite":
        pytest.skip("SQLite bounds no statement: a write waits for the lock at most busy_timeout")
    repo = await make_repo(reconnect_timeout=2)  # each attempt is bounded by 1 s
    sid = repo.generate_session_id()
    await repo.add_turn(sid, "q1", "a1")
    holder = create_async_engine(url)
    try:
        async with holder.connect() as conn:
            held = await conn.begin()
            await conn.execute(
                text("SELECT session_id FROM sessions WHERE session_id = :sid FOR UPDATE"),
                {"sid": sid},
            )
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await repo.add_turn(sid, "q2", "a2")
            waited = time.monotonic() - started
            if backend == "mariadb":
                assert isinstance(raised.value, StatementTimeout), raised.value
                assert waited < 1.0, waited
            else:
                assert not isinstance(raised.value, StatementTimeout), raised.value
                assert waited >= 2.0, waited
            assert await wait_for_count(sql, WAITING_FOR_LOCKS[backend], 0) == 0
            await held.rollback()
    finally:
        await holder.dispose()
    await asyncio.sleep(0.2)  # what was left waiting would commit now
    assert await stored_exchanges(sql, sid) == [("q1", "a1")]
    state = await repo.add_turn(sid, "q3", "a3")
    assert contents(state) == as_turns([("q1", "a1"), ("q3", "a3")])


async def test_a_statement_timeout_of_the_callers_own_ends_the_call_at_once(
    make_repo: MakeRepo, url: str, sql: Sql, backend: str
) -> None:
    """PostgreSQL's ``statement_timeout`` set in the URL (``options=-c ...``) stops an append
    waiting for a locked session row: the call raises ``StatementTimeout`` then, instead of
    sending the statement again until ``reconnect_timeout``, and stores nothing."""
    if backend != "postgresql":
        pytest.skip("a statement_timeout in the URL's options is PostgreSQL's")
    repo = await make_repo(
        database_url=f"{url}?options=-c%20statement_timeout%3D300", reconnect_timeout=10
    )
    sid = repo.generate_session_id()
    await repo.add_turn(sid, "q1", "a1")
    holder = create_async_engine(url)
    try:
        async with holder.begin() as conn:
            await conn.execute(
                text("SELECT session_id FROM sessions WHERE session_id = :sid FOR UPDATE"),
                {"sid": sid},
            )
            started = time.monotonic()
            with pytest.raises(StatementTimeout, match="ran past its time bound"):
                await repo.add_turn(sid, "q2", "a2")
            assert time.monotonic() - started < 2.0
    finally:
        await holder.dispose()
    assert await stored_exchanges(sql, sid) == [("q1", "a1")]


@pytest.mark.usefixtures("foreign_tz")
async def test_timestamps_ignore_process_and_server_time_zones(
    url: str, backend: str, clock: Any, sql: Sql
) -> None:
    """With TZ=America/New_York in the process and TimeZone=Asia/Tokyo on the server,
    timestamps come back UTC-aware and equal to the clock, and expiry still counts right."""
    engine: AsyncEngine | None = None
    if backend == "postgresql":
        engine = create_async_engine(
            url, connect_args={"server_settings": {"TimeZone": "Asia/Tokyo"}}
        )
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW TimeZone"))).scalar() == "Asia/Tokyo"
    elif backend == "mariadb":
        engine = create_async_engine(url, connect_args={"init_command": "SET time_zone = '+09:00'"})
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT @@time_zone"))).scalar() == "+09:00"
    ttl = 1000
    repo = SessionRepository(
        StoreConfig(database_url=url, cleanup_interval=0, session_ttl=ttl),
        engine=engine,
        clock=clock,
    )
    try:
        await repo.start()
        t0 = datetime.fromtimestamp(clock.now, timezone.utc)
        state = await repo.add_turn("early", "q", "a")
        for turn in state.turns:
            assert turn.created_at is not None
            assert turn.created_at.utcoffset() == timedelta(0)
            assert turn.created_at == t0

        rows = await sql("SELECT created_at, expires_at FROM sessions WHERE session_id = 'early'")
        created_at, expires_at = rows[0]
        if backend == "sqlite":  # stored as text: it must be the UTC wall time
            created_at = datetime.fromisoformat(created_at).replace(tzinfo=timezone.utc)
            expires_at = datetime.fromisoformat(expires_at).replace(tzinfo=timezone.utc)
        if backend == "mariadb":  # a DATETIME without zone: it must be the UTC wall time
            created_at = created_at.replace(tzinfo=timezone.utc)
            expires_at = expires_at.replace(tzinfo=timezone.utc)
        assert created_at == t0
        assert expires_at == t0 + timedelta(seconds=ttl)

        clock.advance(ttl / 2)
        await repo.add_turn("late", "q", "a")
        clock.advance(ttl / 2 + 1)  # "early" expired one second ago, "late" has ttl/2 left
        assert await repo.sweep_expired() == 1
        assert await sql("SELECT session_id FROM sessions") == [("late",)]
        assert await repo.get("early") is None

        fresh = SessionRepository(
            StoreConfig(database_url=url, cleanup_interval=0, session_ttl=ttl),
            engine=engine,
            clock=clock,
        )
        async with fresh:
            late = await fresh.get("late")
        assert late is not None
        t_late = t0 + timedelta(seconds=ttl / 2)
        assert [turn.created_at for turn in late.turns] == [t_late, t_late]
        for turn in late.turns:
            assert turn.created_at is not None
            assert turn.created_at.tzinfo is not None
            assert turn.created_at.utcoffset() == timedelta(0)
    finally:
        await repo.stop()
        if engine is not None:
            await engine.dispose()


async def test_start_on_empty_database_needs_migration(
    empty_url: str, empty_engine: AsyncEngine
) -> None:
    """start() on an empty database with auto_migrate=False raises SchemaNotReady naming
    `convostore migrate`; with auto_migrate=True it migrates and works."""
    plain = SessionRepository(
        StoreConfig(database_url=empty_url, cleanup_interval=0, auto_migrate=False)
    )
    with pytest.raises(SchemaNotReady) as raised:
        await plain.start()
    assert isinstance(raised.value, ConvostoreError)
    assert "convostore migrate" in str(raised.value)

    auto = SessionRepository(
        StoreConfig(database_url=empty_url, cleanup_interval=0, auto_migrate=True)
    )
    async with auto:
        state = await auto.add_turn("s", "q", "a")
        assert contents(state) == as_turns([("q", "a")])
    async with empty_engine.connect() as conn:
        versions = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
    assert versions == [(head_revision(),)]


async def test_concurrent_auto_migrating_starts_do_not_race(
    empty_url: str, empty_engine: AsyncEngine
) -> None:
    """Four repositories (four engines) starting at once with auto_migrate=True on one empty
    database all start, and the schema is migrated once."""
    repos = [
        SessionRepository(
            StoreConfig(database_url=empty_url, cleanup_interval=0, auto_migrate=True)
        )
        for _ in range(4)
    ]
    try:
        await asyncio.gather(*(repo.start() for repo in repos))
        await repos[0].add_turn("s", "q", "a")
        for repo in repos[1:]:
            assert contents(await repo.get("s")) == as_turns([("q", "a")])
    finally:
        for repo in repos:
            await repo.stop()
    async with empty_engine.connect() as conn:
        versions = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
    assert versions == [(head_revision(),)]


def migrate_command(url: str) -> list[str]:
    """`convostore migrate --url URL`, or the library call if the CLI is not there yet."""
    script = Path(sys.executable).with_name("convostore")
    if script.exists() and importlib.util.find_spec("convostore._ops.cli") is not None:
        return [str(script), "migrate", "--url", url]
    return [
        sys.executable,
        "-c",
        "import asyncio, sys; from convostore.migrate import upgrade_url; "
        "asyncio.run(upgrade_url(sys.argv[1]))",
        url,
    ]


async def test_two_processes_migrating_at_once_both_succeed(
    empty_url: str, empty_engine: AsyncEngine
) -> None:
    """Two `convostore migrate` processes on one empty database at the same time both exit 0
    and leave the schema at head."""
    command = migrate_command(empty_url)
    processes = [
        await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(process.communicate() for process in processes)), timeout=60
    )
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()

    async with empty_engine.connect() as conn:
        versions = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
    assert versions == [(head_revision(),)]
    repo = SessionRepository(StoreConfig(database_url=empty_url, cleanup_interval=0))
    async with repo:  # no SchemaNotReady: the schema is current
        await repo.add_turn("s", "q", "a")


async def test_background_sweep_deletes_expired_sessions_and_stops_cleanly(
    make_repo: MakeRepo, clock: Any, sql: Sql, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduled sweep deletes expired sessions (turns too) without a call, spares live
    ones, and stop() ends its task cleanly."""
    caplog.set_level(logging.WARNING)
    existing = asyncio.all_tasks()
    repo = await make_repo(cleanup_interval=0.05, session_ttl=10, transcript_retention=0)
    background = asyncio.all_tasks() - existing
    assert background, "start() started no background task"

    old = [repo.generate_session_id() for _ in range(3)]
    for sid in old:
        await repo.add_turn(sid, "q", "a")
    clock.advance(6)
    live = repo.generate_session_id()
    await repo.add_turn(live, "q", "a")
    clock.advance(5)  # the old sessions expired a second ago; `live` has 5 s left

    remaining = -1
    for _ in range(60):
        # A sweep ends the sessions, then deletes their transcripts (retention 0) in a
        # transaction of its own: wait for both.
        remaining = (
            await sql(
                "SELECT (SELECT count(*) FROM sessions WHERE session_id <> :s)"
                " + (SELECT count(*) FROM turns WHERE session_id <> :s)",
                s=live,
            )
        )[0][0]
        if remaining == 0:
            break
        await asyncio.sleep(0.05)
    assert remaining == 0, "the background sweep did not delete the expired sessions"
    assert await sql("SELECT session_id FROM sessions") == [(live,)]
    assert await sql("SELECT DISTINCT session_id FROM turns") == [(live,)]
    stats = await repo.get_stats()
    assert stats["sessions_expired"] == 3
    assert stats["cached_sessions"] == 1

    await repo.stop()
    assert all(task.done() for task in background)
    assert not any(task.done() and not task.cancelled() and task.exception() for task in background)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
