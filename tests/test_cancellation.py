"""Callers cancelled in the middle of a call on PostgreSQL (a client that hung up, a request
timeout): each exchange is stored whole or not at all, nothing is logged, and the pool stays
whole, its connections reused where the driver can (asyncpg cancels the running statement and
the connection serves on), so that right after a burst of cancellations 50 callers are served
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from conftest import Sql
from sqlalchemy import event
from sqlalchemy.engine import make_url

from convostore import SessionRepository, StoreConfig
from convostore._core.engine import create_engine
from convostore.backends._private import asyncpg_cancel_request, sqlalchemy_asyncpg_connector
from convostore.backends.postgresql import connect_asyncpg

pytestmark = pytest.mark.postgresql

CANCELLED = 300
CONCURRENT = 50
SESSIONS = 40
"""Sessions the cancelled calls write to: the first call to each creates it (a transaction of
several statements, shielded from the caller's cancellation), the others append to it."""


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler while the test runs (a future whose
    exception was never retrieved, an unclosed connection...), checked after a collection."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


async def _client_backends(sql: Sql, at_most: int) -> int:
    """How many backends other clients have on the test's database, once there are no more
    than ``at_most`` or a second has passed (a backend whose client left takes a moment to
    exit)."""
    deadline = time.monotonic() + 1.0
    while True:
        (count,) = (
            await sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )[0]
        if count <= at_most or time.monotonic() > deadline:
            return int(count)
        await asyncio.sleep(0.05)


async def _exchanges(sql: Sql) -> list[tuple[str, str]]:
    """The stored (question, answer) pairs, after checking that each session's turns alternate
    user, assistant."""
    turns = await sql("SELECT session_id, role, content FROM turns ORDER BY session_id, seq")
    by_session: dict[str, list[tuple[str, str]]] = {}
    for sid, role, content in turns:
        by_session.setdefault(sid, []).append((role, content))
    pairs = []
    for stored in by_session.values():
        for (role, question), (answer_role, answer) in zip(stored[::2], stored[1::2], strict=True):
            assert (role, answer_role) == ("user", "assistant")
            pairs.append((question, answer))
    return pairs


async def _cancel_midway(repo: SessionRepository, n: int, rng: random.Random) -> None:
    """Start exchange ``n`` and cancel it after a random moment: before it began, during its
    statement, or (rarely) after it ended."""
    call = asyncio.create_task(repo.add_turn(f"s{n % SESSIONS}", f"q{n}", f"a{n}"))
    await asyncio.sleep(rng.choice([0.0, rng.uniform(0.0, 0.004)]))
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "sqlalchemy"])
async def test_a_burst_of_cancelled_calls_leaves_the_pool_whole(
    url: str, sql: Sql, loop_errors: list[dict[str, Any]], fast_path: bool
) -> None:
    config = StoreConfig(database_url=url, cleanup_interval=0, fast_path=fast_path)
    capacity = config.pool_size + config.max_overflow
    async with SessionRepository(config) as repo:
        discarded: list[object] = []
        event.listen(repo.engine.sync_engine, "invalidate", lambda *_: discarded.append(None))
        await repo.add_turn("warm", "q", "a")

        rng = random.Random(15)
        for n in range(CANCELLED):
            await _cancel_midway(repo, n, rng)
        if fast_path:
            # The driver's connections serve on after a cancel; SQLAlchemy's execution closes
            # a connection whose statement was cancelled (its own rule), and opens another.
            assert discarded == [], f"{len(discarded)} connections discarded"

        start = time.monotonic()
        states = await asyncio.gather(
            *(
                repo.add_turn(f"c{n % 10}", f"q{CANCELLED + n}", f"a{CANCELLED + n}")
                for n in range(CONCURRENT)
            )
        )
        assert time.monotonic() - start < 5, "50 callers were not served at once"
        assert len(states) == CONCURRENT
        # the pool's connections and the change listener's
        assert await _client_backends(sql, capacity + 1) <= capacity + 1

    assert await _client_backends(sql, 0) == 0, "connections left open after stop()"
    exchanges = await _exchanges(sql)
    assert all(answer == "a" + question[1:] for question, answer in exchanges), exchanges
    questions = [question for question, _ in exchanges]
    assert len(questions) == len(set(questions)), "an exchange was stored twice"
    assert {f"q{CANCELLED + n}" for n in range(CONCURRENT)} <= set(questions)

    gc.collect()
    await asyncio.sleep(0)
    assert [(c.get("message"), repr(c.get("exception"))) for c in loop_errors] == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_cancelled_connect_logs_nothing_and_leaves_nothing_open(
    url: str, sql: Sql, loop_errors: list[dict[str, Any]]
) -> None:
    """Callers cancelled while convostore's engine opens their connection: asyncpg's connect,
    cancelled while it asks the server for TLS, would leave a future whose exception nobody
    retrieves (asyncio logs it); ``connect_asyncpg`` lets the connect finish on its own and
    closes what it brings."""
    engine = create_engine(StoreConfig(database_url=url))
    rng = random.Random(15)
    try:
        for _ in range(40):
            checkout = asyncio.create_task(engine.raw_connection())
            await asyncio.sleep(rng.uniform(0.0, 0.01))
            checkout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                (await checkout).close()
            await engine.dispose()
    finally:
        await engine.dispose()
    assert await _client_backends(sql, 0) == 0, "a connection opened for a cancelled caller"
    gc.collect()
    await asyncio.sleep(0)
    assert [(c.get("message"), repr(c.get("exception"))) for c in loop_errors] == []


def test_sqlalchemy_opens_connections_through_convostore() -> None:
    """The private keyword by which convostore's engine opens asyncpg connections with
    ``connect_asyncpg`` is there in this SQLAlchemy; where it is missing, none is passed (and
    asyncpg.connect opens them, as SQLAlchemy's default)."""
    assert sqlalchemy_asyncpg_connector(connect_asyncpg) == {"async_creator_fn": connect_asyncpg}

    class Without:
        def connect(self, *args: Any, **kwargs: Any) -> None:
            return None

    assert sqlalchemy_asyncpg_connector(connect_asyncpg, Without) == {}


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_cancel_request_stops_the_statement_of_a_terminated_connection(url: str) -> None:
    """asyncpg's private pieces for a cancel request are there: taken from a connection
    running a long statement, they cancel that statement on the server after the connection
    was terminated (which asyncpg's own cancel would not survive); an object without them
    gets None."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    running = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)

    async def backends(pid: int, state: str, wanted: int) -> int:
        """The server's backends of ``pid`` in ``state`` (% for any), polled ~2 s for
        ``wanted``."""
        statement = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state LIKE $2"
        for _ in range(100):
            count = int(await watcher.fetchval(statement, pid, state))
            if count == wanted:
                break
            await asyncio.sleep(0.02)
        return count

    try:
        pid = running.get_server_pid()
        sleeping = asyncio.ensure_future(running.execute("SELECT pg_sleep(30)"))
        assert await backends(pid, "active", 1) == 1
        send = asyncpg_cancel_request(running)
        assert send is not None
        running.terminate()
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError):
            await sleeping
        await asyncio.wait_for(send(), 5)
        assert await backends(pid, "%", 0) == 0, "the statement ran on after the cancel request"
    finally:
        running.terminate()
        await watcher.close()
    assert asyncpg_cancel_request(object()) is None
