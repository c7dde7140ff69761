"""The fault and pooler test infrastructure (``servers.py``) works, and its faults are
real: a private server keeps committed data across a restart and a crash, drops its clients
when told to, and PgBouncer in transaction mode serves asyncpg without its statement cache
(and breaks it with one)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from servers import PgBouncer, PrivatePostgres, StopMode

pytestmark = pytest.mark.postgresql


async def _connect(dsn: str, **options: object) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, **options)


# What asyncpg raises on a connection whose server is gone. InternalClientError ("cannot
# switch to state ...; another operation (2) is in progress") is its answer when the server's
# farewell FATAL arrived while the connection sat idle: a lost connection all the same.
CUT_OFF = (asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError)


async def _assert_cut_off(conn: asyncpg.Connection) -> None:
    """The connection's server side is gone: its next query fails and it counts as closed."""
    with pytest.raises(CUT_OFF):
        await conn.fetchval("SELECT 1")
    assert conn.is_closed()


async def _rows(dsn: str) -> list[int]:
    conn = await _connect(dsn)
    try:
        return [row["n"] for row in await conn.fetch("SELECT n FROM t ORDER BY n")]
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_restart_keeps_committed_rows(
    private_postgres: PrivatePostgres, mode: StopMode
) -> None:
    conn = await _connect(private_postgres.dsn)
    await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")

    private_postgres.restart(mode)

    await _assert_cut_off(conn)
    assert await _rows(private_postgres.dsn) == [1, 2]


@pytest.mark.parametrize("backends", [True, False], ids=["power-cut", "postmaster-only"])
async def test_kill_then_start_recovers_committed_rows_only(
    private_postgres: PrivatePostgres, backends: bool
) -> None:
    conn = await _connect(private_postgres.dsn)
    await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
    open_transaction = await _connect(private_postgres.dsn)
    await open_transaction.execute("BEGIN; INSERT INTO t VALUES (2)")

    private_postgres.kill(backends=backends)

    await _assert_cut_off(conn)
    await _assert_cut_off(open_transaction)
    with pytest.raises(ConnectionRefusedError):
        await _connect(private_postgres.dsn)
    private_postgres.start()
    assert await _rows(private_postgres.dsn) == [1]


async def test_terminate_backends_cuts_off_every_client(private_postgres: PrivatePostgres) -> None:
    clients = [await _connect(private_postgres.dsn) for _ in range(3)]

    assert await private_postgres.terminate_backends() == 3

    for conn in clients:
        await _assert_cut_off(conn)
    fresh = await _connect(private_postgres.dsn)
    assert await fresh.fetchval("SELECT 1") == 1
    await fresh.close()


async def test_pgbouncer_serves_asyncpg_without_statement_cache(pgbouncer: PgBouncer) -> None:
    """More clients than server connections, each running parameterised queries and
    transactions: without named prepared statements, transaction pooling is transparent."""

    async def client(number: int) -> list[int]:
        conn = await _connect(pgbouncer.dsn, statement_cache_size=0)
        try:
            results = []
            for step in range(10):
                results.append(await conn.fetchval("SELECT $1::int * 100 + $2::int", number, step))
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.001)")
            return results
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(number) for number in range(30)))

    assert results == [[number * 100 + step for step in range(10)] for number in range(30)]


async def test_pgbouncer_breaks_asyncpg_statement_cache(pgbouncer: PgBouncer) -> None:
    """asyncpg's cached statements are named and live on one server connection; the pooler
    may send the next execution to another. Forced here: ``first`` prepares on the only server
    connection, ``other`` then holds that one in a transaction, so ``first``'s next execution
    lands on a new server connection that has never seen the statement."""
    first = await _connect(pgbouncer.dsn)
    other = await _connect(pgbouncer.dsn)
    try:
        assert await first.fetchval("SELECT 1") == 1
        async with other.transaction():
            await other.execute("SELECT 1")
            with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
                await first.fetchval("SELECT 1")
    finally:
        await first.close()
        await other.close()


async def test_pgbouncer_reconnects_after_its_server_restarts(
    private_postgres: PrivatePostgres, pgbouncer_on: PgBouncer
) -> None:
    conn = await _connect(pgbouncer_on.dsn, statement_cache_size=0)
    assert await conn.fetchval("SELECT 1") == 1

    private_postgres.restart()

    fresh = await _connect(pgbouncer_on.dsn, statement_cache_size=0)
    assert await fresh.fetchval("SELECT 2") == 2
    await fresh.close()
    await conn.close()
