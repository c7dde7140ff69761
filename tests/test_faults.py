"""Faults of a real deployment: a PostgreSQL server that restarts, is killed, is down or stops
answering, and PgBouncer in transaction mode in between.

Restarts, kills and pauses happen on a private server this test starts itself
(``private_postgres``), never on the shared one. Every acknowledged exchange must be stored
exactly once, its two turns adjacent; a call made while the server stays down or silent raises
``StoreUnavailable`` in time, and stores its exchange whole or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from conftest import FakeClock
from servers import PgBouncer, PrivatePostgres
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import SessionRepository, StoreConfig, StoreUnavailable
from convostore.migrate import upgrade_url

pytestmark = pytest.mark.postgresql

RECONNECT_TIMEOUT = 2.0
SLACK = 1.5
"""How much later than ``reconnect_timeout`` a call may give up on a server that does not
answer."""
GIVE_UP = 15.0
"""How long a test waits for what should end in time before it calls it hanging (and resumes
the server, so that the hanging code can end too)."""


async def rows(url: str, statement: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(statement))).all())
    finally:
        await engine.dispose()


async def exchanges(url: str) -> dict[str, list[tuple[str, str]]]:
    """Stored (question, answer) pairs per session, after checking that seq runs 1..n and every
    user turn is followed by its answer."""
    stored: dict[str, list[tuple[int, str, str]]] = {}
    for sid, seq, role, content in await rows(
        url, "SELECT session_id, seq, role, content FROM turns ORDER BY session_id, seq"
    ):
        stored.setdefault(sid, []).append((seq, role, content))
    result: dict[str, list[tuple[str, str]]] = {}
    for sid, turns in stored.items():
        assert [seq for seq, _, _ in turns] == list(range(1, len(turns) + 1))
        pairs = []
        for user, assistant in zip(turns[::2], turns[1::2], strict=True):
            assert (user[1], assistant[1]) == ("user", "assistant"), (user, assistant)
            pairs.append((user[2], assistant[2]))
        result[sid] = pairs
    return result


@pytest.fixture
async def private_url(private_postgres: PrivatePostgres) -> str:
    await upgrade_url(private_postgres.url)
    return private_postgres.url


async def _appender(
    repo: SessionRepository, sid: str, count: int, acknowledged: list[tuple[str, str]]
) -> None:
    for n in range(count):
        await repo.add_turn(sid, f"{sid}-q{n}", f"{sid}-a{n}")
        acknowledged.append((f"{sid}-q{n}", f"{sid}-a{n}"))
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_no_call_fails_through_a_restart_or_a_crash(
    private_postgres: PrivatePostgres, private_url: str, fault: str
) -> None:
    """Four writers append while the server restarts (or is killed and started again half a
    second later): no call fails, and every acknowledged exchange is stored exactly once."""
    config = StoreConfig(database_url=private_url, cleanup_interval=0, reconnect_timeout=30)
    acknowledged: dict[str, list[tuple[str, str]]] = {f"w{k}": [] for k in range(4)}
    async with SessionRepository(config) as repo:
        writers = [
            asyncio.create_task(_appender(repo, sid, 40, done))
            for sid, done in acknowledged.items()
        ]
        await asyncio.sleep(0.15)
        if fault == "restart":
            await asyncio.to_thread(private_postgres.restart)
        else:
            await asyncio.to_thread(private_postgres.kill)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(private_postgres.start)
        await asyncio.gather(*writers)
        assert all(len(done) == 40 for done in acknowledged.values())
        for sid, _done in acknowledged.items():
            state = await repo.get(sid)
            assert state is not None
            assert len(state.turns) == 80
    assert await exchanges(private_url) == acknowledged


async def test_a_server_that_stays_down_gives_store_unavailable_and_stores_nothing(
    private_postgres: PrivatePostgres, private_url: str
) -> None:
    config = StoreConfig(database_url=private_url, cleanup_interval=0, reconnect_timeout=1.5)
    async with SessionRepository(config) as repo:
        await repo.add_turn("down", "before", "ok")
        await asyncio.to_thread(private_postgres.stop)
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await repo.add_turn("down", "while down", "lost")
        waited = time.monotonic() - start
        assert 1.5 <= waited < 6, waited
        assert raised.value.__cause__ is not None
        assert "s3cr3t" not in str(raised.value)

        await asyncio.to_thread(private_postgres.start)
        state = await repo.add_turn("down", "after", "ok")
        assert [turn.content for turn in state.turns] == ["before", "ok", "after", "ok"]
    assert await exchanges(private_url) == {"down": [("before", "ok"), ("after", "ok")]}


async def test_calls_wait_for_a_server_that_comes_back_within_the_timeout(
    private_postgres: PrivatePostgres, private_url: str
) -> None:
    config = StoreConfig(database_url=private_url, cleanup_interval=0, reconnect_timeout=20)
    async with SessionRepository(config) as repo:
        await repo.add_turn("back", "q1", "a1")
        await asyncio.to_thread(private_postgres.stop)
        call = asyncio.create_task(repo.add_turn("back", "q2", "a2"))
        await asyncio.sleep(1.0)
        assert not call.done()
        await asyncio.to_thread(private_postgres.start)
        state = await call
        assert len(state.turns) == 4
    assert await exchanges(private_url) == {"back": [("q1", "a1"), ("q2", "a2")]}


async def test_a_dropped_listener_turns_the_cache_off_until_it_is_back(
    private_postgres: PrivatePostgres, private_url: str
) -> None:
    """After the server terminates every connection (the listener's too), a worker still sees
    the other's next write at once: its cache is off until the listener is back, then on."""
    config = StoreConfig(database_url=private_url, cleanup_interval=0)
    async with SessionRepository(config) as a, SessionRepository(config) as b:
        await a.add_turn("listen", "q1", "a1")
        assert await a.get("listen") is not None
        assert await private_postgres.terminate_backends() > 0
        await b.add_turn("listen", "q2", "a2")
        state = await a.get("listen")
        assert state is not None
        assert len(state.turns) == 4

        deadline = time.monotonic() + 5
        while (await a.get_stats())["cached_sessions"] == 0:
            assert time.monotonic() < deadline, "the cache never came back on"
            await a.get("listen")
            await asyncio.sleep(0.05)
        await b.add_turn("listen", "q3", "a3")
        await asyncio.sleep(0.1)
        state = await a.get("listen")
        assert state is not None
        assert len(state.turns) == 6


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_through_pgbouncer_writers_and_coherent_caches_see_no_error(
    pgbouncer: PgBouncer, url: str
) -> None:
    """Transaction-mode PgBouncer: two repositories (the listener on the direct URL), eight
    concurrent writers of 10 exchanges each, zero errors, and each worker sees the other's
    writes."""
    database = url.rsplit("/", 1)[1]
    config = StoreConfig(
        database_url=pgbouncer.url_for(database),
        pooler="pgbouncer",
        listen_url=url,
        cleanup_interval=0,
    )
    async with SessionRepository(config) as a, SessionRepository(config) as b:
        acknowledged: dict[str, list[tuple[str, str]]] = {f"p{k}": [] for k in range(8)}
        await asyncio.gather(
            *(
                _appender(a if k % 2 else b, sid, 10, done)
                for k, (sid, done) in enumerate(acknowledged.items())
            )
        )
        for sid in acknowledged:
            assert await a.get(sid) is not None
            assert await b.get(sid) is not None
        await a.add_turn("p0", "last", "one")
        await asyncio.sleep(0.1)
        state = await b.get("p0")
        assert state is not None
        assert state.turns[-1].content == "one"
    acknowledged["p0"].append(("last", "one"))
    assert await exchanges(url) == acknowledged


def _config(url: str, **settings: Any) -> StoreConfig:
    """The settings of the tests that pause the server: ``RECONNECT_TIMEOUT``, no sweep."""
    return StoreConfig(
        database_url=url, cleanup_interval=0, reconnect_timeout=RECONNECT_TIMEOUT, **settings
    )


async def _unavailable_after(call: Awaitable[Any]) -> float:
    """Seconds until ``call`` raised ``StoreUnavailable`` (anything else fails the test)."""
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await call
    assert raised.value.__cause__ is not None
    return time.monotonic() - start


async def _unavailable_in_time(server: PrivatePostgres, calls: list[Awaitable[Any]]) -> None:
    """Pause ``server``, make ``calls`` at once, and check that each raises
    ``StoreUnavailable`` within ``reconnect_timeout`` (plus slack); the server is resumed
    whatever happens, so that code that waits for it ends too."""
    await asyncio.to_thread(server.pause)
    tasks = [asyncio.create_task(_unavailable_after(call)) for call in calls]
    try:
        _, waiting = await asyncio.wait(tasks, timeout=GIVE_UP)
    finally:
        await asyncio.to_thread(server.resume)
    assert not waiting, "calls waited for a server that does not answer"
    waited = [task.result() for task in tasks]
    assert all(seconds < RECONNECT_TIMEOUT + SLACK for seconds in waited), waited


@pytest.mark.parametrize("engine", ["own-fast-path", "own-sqlalchemy", "passed-in"])
async def test_a_server_that_stops_answering_fails_calls_in_time_and_they_recover(
    private_postgres: PrivatePostgres, private_url: str, engine: str
) -> None:
    """The server is stopped (SIGSTOP): its connections stay open, new ones are accepted, and
    nothing is answered. An append to a live session, one that must create its session and a
    cold read each raise ``StoreUnavailable`` within ``reconnect_timeout`` (plus slack), not
    when the server comes back: on convostore's own engine (fast path or SQLAlchemy's
    execution), and on an engine passed in with the timeouts the README gives. Once the server
    resumes the repository works again by itself, and each exchange whose call raised was
    stored whole or not at all: sent again with its idempotency key, it is stored once."""
    config = _config(private_url, fast_path=engine != "own-sqlalchemy")
    half = RECONNECT_TIMEOUT / 2
    passed_in = (
        create_async_engine(
            private_url,
            pool_timeout=half,
            connect_args={"timeout": half, "command_timeout": half},
        )
        if engine == "passed-in"
        else None
    )
    try:
        async with SessionRepository(config, engine=passed_in) as repo:
            await repo.add_turn("live", "q1", "a1")
            await _unavailable_in_time(
                private_postgres,
                [
                    repo.add_turn("live", "q2", "a2", idempotency_key="live-2"),
                    repo.add_turn("new", "q1", "a1", idempotency_key="new-1"),
                    repo.get("never-written"),
                ],
            )

            state = await repo.add_turn("live", "q2", "a2", idempotency_key="live-2")
            assert [turn.content for turn in state.turns] == ["q1", "a1", "q2", "a2"]
            state = await repo.add_turn("new", "q1", "a1", idempotency_key="new-1")
            assert [turn.content for turn in state.turns] == ["q1", "a1"]
            assert await repo.get("never-written") is None
    finally:
        if passed_in is not None:
            await passed_in.dispose()
    assert await exchanges(private_url) == {
        "live": [("q1", "a1"), ("q2", "a2")],
        "new": [("q1", "a1")],
    }


async def test_calls_queued_for_a_connection_give_up_in_time_too(
    private_postgres: PrivatePostgres, private_url: str
) -> None:
    """Twelve calls on a pool of two while the server answers nothing: the two that hold the
    connections and the ten queued behind them for one all raise ``StoreUnavailable`` within
    ``reconnect_timeout`` (plus slack), and the pool serves again once the server resumes."""
    config = _config(private_url, pool_size=2, max_overflow=0)
    async with SessionRepository(config) as repo:
        await asyncio.gather(*(repo.add_turn(f"q{n}", "q1", "a1") for n in range(12)))
        await _unavailable_in_time(
            private_postgres, [repo.add_turn(f"q{n}", "q2", "a2") for n in range(12)]
        )
        await asyncio.gather(*(repo.add_turn(f"q{n}", "q3", "a3") for n in range(12)))
    stored = await exchanges(private_url)
    for n in range(12):
        assert stored[f"q{n}"] in (
            [("q1", "a1"), ("q3", "a3")],
            [("q1", "a1"), ("q2", "a2"), ("q3", "a3")],
        )


async def test_stop_during_an_outage_ends_in_time(
    private_postgres: PrivatePostgres, private_url: str
) -> None:
    """``stop()`` while the server answers nothing returns in bounded time: the expiry refresh
    flusher caught mid-write, the change listener and the pool's idle connections each give
    up. The refreshes are lost (they only slide an expiry); nothing else was pending."""
    config = _config(private_url, refresh_delay=0.2, pool_size=2, session_ttl=3600)
    clock = FakeClock()
    repo = SessionRepository(config, clock=clock)
    await repo.start()
    await asyncio.gather(*(repo.add_turn(f"s{n}", "q", "a") for n in range(4)))
    clock.advance(600)
    await asyncio.to_thread(private_postgres.pause)
    for n in range(4):
        # From the cache, due for a refresh: the flusher writes it behind, within 0.2 s,
        # and is still waiting for the server half a second later.
        assert await repo.get(f"s{n}") is not None
    await asyncio.sleep(0.5)
    start = time.monotonic()
    stopping = asyncio.create_task(repo.stop())
    try:
        await asyncio.wait([stopping], timeout=GIVE_UP)
    finally:
        await asyncio.to_thread(private_postgres.resume)
    assert stopping.done(), "stop() waited for a server that does not answer"
    stopping.result()
    assert time.monotonic() - start < 4 * (RECONNECT_TIMEOUT + SLACK)
