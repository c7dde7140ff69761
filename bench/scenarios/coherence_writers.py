"""What coherence costs writers: appends per second at 8, 32 and 64 concurrent writers with
the change feed on, against the same schema without any change notification, on each backend.

Each writer runs convostore's own append on the raw driver (``RawStore.append_one``,
``bench.raw``) on sessions drawn at random from 1,000, so that the ratio is the feed's cost
to the database alone, without the library's own work around it. On PostgreSQL and MariaDB
each writer has a connection of its own. SQLite commits one writer at a time whatever the
connections, and 32 or 64 connections waiting on its lock measure its busy handler's sleeps:
there the writers share one connection (each append is one hop to its thread, one transaction).

- **on**: the schema as migrated. PostgreSQL: the append statement inserts the feed's row
  (migration 0007) and a trigger records deletions; SQLite and MariaDB: their triggers write
  the feed.
- **followed**: the same, and another worker follows the feed meanwhile: a process of its
  own with a ``"bounded"`` repository, whose poller reads every change (in the writers'
  process, its thread would compete with them for the interpreter lock: that would measure
  the client, not the database).
- **off**: the same database with its change triggers dropped and, on PostgreSQL, the append
  without the feed's row (``Statements(feed=False)``); nobody polls.

The target is judged on on / off: what recording changes costs the server's writes, as the
issue measured NOTIFY's cost (writers alone, no listener). followed / off is shown beside
it: on a machine as small as the benchmark's (two cores for writers, server and follower),
the follower's own work (an idle extra process already costs a few percent) weighs in too.

One database per backend; the variant is switched between rounds (triggers dropped and made
again from their stored definitions), each round of three in a rotated order so that none
always runs first. Figures: appends/s, median of the rounds; a ratio is the median of each
round's variant / off (a neighbour's load shifts a round's variants alike). Target (issue 15,
1b): at least 0.95 on PostgreSQL; SQLite's row is for the record (one writer at a time there),
and so is MariaDB's (its feed is the triggers', as SQLite's, which the target did not judge).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import statistics
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection

from ..backends import Database, Server
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..raw import (
    RawPostgres,
    RawStore,
    connect_mariadb,
    connect_postgres,
    connect_sqlite,
    open_raw,
)
from ..results import Figure, Row
from ..workload import EXCHANGE, session_ids
from ._util import now_utc, timed

__all__ = ["run"]

WRITERS = (8, 32, 64)
SESSIONS = 1_000
TURNS = 10
TARGET = 0.95
VARIANTS = ("on", "followed", "off")

_PG_TRIGGERS = """
SELECT pg_get_triggerdef(oid) FROM pg_trigger
WHERE tgrelid = 'sessions'::regclass AND tgname LIKE 'convostore_session_%'"""
_SQLITE_TRIGGERS = """
SELECT sql FROM sqlite_master
WHERE type = 'trigger' AND tbl_name = 'sessions' AND name LIKE 'convostore_session_%'"""
_MARIADB_TRIGGERS = """
SELECT trigger_name FROM information_schema.triggers
WHERE trigger_schema = DATABASE() AND event_object_table = 'sessions'
    AND trigger_name LIKE 'convostore_session_%'"""
_PG_DROP = "DROP TRIGGER {name} ON sessions"
_SQLITE_DROP = "DROP TRIGGER {name}"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        db = await server.database("writers")
        try:
            rows += await _writers(ctx, server, db)
        finally:
            await server.drop(db)
    return rows


async def _writers(ctx: Context, server: Server, db: Database) -> list[Row]:
    sizes = ctx.sizes
    sids = session_ids("writers", SESSIONS)
    await load_histories(db, sids, TURNS, now=now_utc(), ttl=TTL)
    switch = await _Switch.read(db)
    rates: dict[int, dict[str, list[float]]] = {n: {v: [] for v in VARIANTS} for n in WRITERS}
    ratios: dict[int, dict[str, list[float]]] = {n: {"on": [], "followed": []} for n in WRITERS}
    connections = 1 if db.backend == "sqlite" else max(WRITERS)
    stores = [await open_raw(db, TTL) for _ in range(connections)]
    try:

        async def measure() -> None:
            for n in WRITERS:
                # A short first pair warms the pages and statements; it is not counted.
                for index in range(sizes.writers_rounds + 1):
                    turn = index % len(VARIANTS)
                    order = VARIANTS[turn:] + VARIANTS[:turn]
                    seconds = sizes.writers_seconds if index else sizes.writers_seconds / 4
                    got = {}
                    for variant in order:
                        feed = variant != "off"
                        await switch.set(feed)
                        async with _follower(db.url, variant == "followed"):
                            writers = [stores[index % len(stores)] for index in range(n)]
                            got[variant] = await _round(writers, feed, sids, seconds)
                    if index:
                        for variant in VARIANTS:
                            rates[n][variant].append(got[variant])
                        for variant in ("on", "followed"):
                            ratios[n][variant].append(got[variant] / got["off"])
            await switch.set(True)

        await timed(f"appends/s, coherence on and off ({server.label})", measure())
    finally:
        for store in stores:
            await store.close()
    return [_row(server, n, rates[n], ratios[n]) for n in WRITERS]


class _Switch:
    """Turns a database's change notification off (its ``convostore_session_*`` triggers
    dropped) and on again (made again as they were stored)."""

    def __init__(self, db: Database, triggers: list[tuple[str, str]]) -> None:
        self._db = db
        self._triggers = triggers
        """(name, definition) of each trigger."""
        self._on = True

    @classmethod
    async def read(cls, db: Database) -> _Switch:
        if db.backend == "postgresql":
            pg = await connect_postgres(db.target)
            try:
                definitions = [row[0] for row in await pg.fetch(_PG_TRIGGERS)]
            finally:
                await pg.close()
        elif db.backend == "mariadb":
            definitions = await _mariadb_triggers(db)
        else:
            lite = await connect_sqlite(db.target)
            try:
                definitions = [row[0] for row in await lite.execute_fetchall(_SQLITE_TRIGGERS)]
            finally:
                await lite.close()
        if not definitions:
            raise RuntimeError("no change trigger on sessions: is the database migrated?")
        return cls(db, [(_trigger_name(sql), sql) for sql in definitions])

    async def set(self, on: bool) -> None:
        if on == self._on:
            return
        if on:
            statements = [sql for _, sql in self._triggers]
        else:
            drop = _PG_DROP if self._db.backend == "postgresql" else _SQLITE_DROP
            statements = [drop.format(name=name) for name, _ in self._triggers]
        if self._db.backend == "postgresql":
            pg = await connect_postgres(self._db.target)
            try:
                async with pg.transaction():
                    for statement in statements:
                        await pg.execute(statement)
            finally:
                await pg.close()
        elif self._db.backend == "mariadb":  # each DDL statement commits by itself there
            maria = await connect_mariadb(self._db.target, autocommit=True)
            try:
                async with maria.cursor() as cursor:
                    for statement in statements:
                        await cursor.execute(statement)
            finally:
                await maria.ensure_closed()
        else:
            lite = await connect_sqlite(self._db.target)
            try:
                for statement in statements:
                    await lite.execute(statement)
                await lite.commit()
            finally:
                await lite.close()
        self._on = on


async def _mariadb_triggers(db: Database) -> list[str]:
    """The ``CREATE TRIGGER`` statements of MariaDB's change triggers, as the server keeps
    them (``SHOW CREATE TRIGGER``: with their definer)."""
    maria = await connect_mariadb(db.target, autocommit=True)
    try:
        async with maria.cursor() as cursor:
            await cursor.execute(_MARIADB_TRIGGERS)
            definitions = []
            for (name,) in await cursor.fetchall():
                await cursor.execute(f"SHOW CREATE TRIGGER `{name}`")
                definitions.append((await cursor.fetchone())[2])
            return definitions
    finally:
        await maria.ensure_closed()


def _trigger_name(definition: str) -> str:
    """The name in ``CREATE [DEFINER=...] TRIGGER <name> ...``."""
    words = definition.split()
    return words[words.index("TRIGGER") + 1].strip("`")


@contextlib.asynccontextmanager
async def _follower(url: str, on: bool) -> AsyncIterator[None]:
    """``on``: another worker following the feed meanwhile, a process of its own (as a worker
    is) with a ``"bounded"`` repository, whose poller reads every change."""
    if not on:
        yield
        return
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    worker = spawn.Process(target=_follow, args=(url, theirs), name="coherence-follower")
    worker.start()
    try:
        await asyncio.to_thread(ours.recv)  # its repository is open: the poller follows
        yield
    finally:
        ours.send(None)
        await asyncio.to_thread(worker.join, 10)
        if worker.is_alive():
            worker.terminate()
            worker.join()
        ours.close()
        theirs.close()


def _follow(url: str, conn: Connection) -> None:
    """The follower process: open a repository, say so, and keep it open until told."""

    async def follow() -> None:
        async with Context.repository(url, cache_coherence="bounded"):
            conn.send(None)
            await asyncio.to_thread(conn.recv)

    asyncio.run(follow())


async def _round(stores: list[RawStore], feed: bool, sids: list[str], seconds: float) -> float:
    """Each store appends to random sessions for ``seconds``; returns appends per second."""
    for store in stores:
        if isinstance(store, RawPostgres):
            store.feed = feed
    end = time.perf_counter() + seconds
    done = 0

    async def writer(store: RawStore, rng: random.Random) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await store.append_one(rng.choice(sids), EXCHANGE)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(
        *(writer(store, random.Random(index)) for index, store in enumerate(stores))
    )
    return done / (time.perf_counter() - start)


def _row(
    server: Server, n: int, rates: dict[str, list[float]], ratios: dict[str, list[float]]
) -> Row:
    ratio = statistics.median(ratios["on"])
    followed = statistics.median(ratios["followed"])
    rounds = len(ratios["on"])
    postgres = server.name == "postgresql"
    connections = "one connection" if server.name == "sqlite" else "a connection per writer"
    feed = "the feed row from the append's statement" if postgres else "the feed triggers"
    return Row(
        key=f"coherence.writers.{server.name}.{n}",
        path=f"appends/s, {n} concurrent writers, 1,000 sessions: coherence on vs no change "
        "notification",
        backend=server.label,
        convostore=Figure("coherence on", statistics.median(rates["on"]), None, rounds, "rate"),
        raw=Figure("no change notification", statistics.median(rates["off"]), None, rounds, "rate"),
        others=[
            Figure(
                "coherence on, a worker following on the same machine",
                statistics.median(rates["followed"]),
                None,
                rounds,
                "rate",
            )
        ],
        ratio=ratio,
        ratio_of="on / off appends/s (median of rounds)",
        target=f"≥ {TARGET}×" if postgres else "",
        met=ratio >= TARGET if postgres else None,
        note=f"raw driver, convostore's append, {connections}; on: {feed}; {rounds} rounds, "
        f"on/off per round {min(ratios['on']):.2f} to {max(ratios['on']):.2f}; with a worker "
        f"following the feed in a process of its own on the same two cores: {followed:.2f}x "
        f"({min(ratios['followed']):.2f} to {max(ratios['followed']):.2f})",
    )
