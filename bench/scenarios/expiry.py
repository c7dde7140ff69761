"""Row 7: the expiry sweep on PostgreSQL. 100,000 expired sessions x 10 turns (fewer with
``--quick``) are loaded with COPY and swept in batches the way ``SessionRepository`` sweeps:
``SqlStore.sweep_batch`` in a loop until a batch comes back short, each
batch timed. Meanwhile one task keeps calling ``add_turn`` on live sessions; its p95 is
compared with the same task's p95 without a sweep (measured before and after). The raw floor
then sweeps an equal second load with asyncpg."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..context import Context
from ..loader import load_histories, vacuum_analyze
from ..options import TTL
from ..raw import connect_postgres, raw_sweep
from ..results import Figure, Row, figure
from ..timing import Stats
from ..workload import session_ids
from ._util import add_turn, fmt_count, now_utc, timed, warm_cache

__all__ = ["run"]

RATE_TARGET = 20_000.0
BATCH_TARGET = 0.100
P95_FACTOR = 2.0


async def run(ctx: Context) -> list[Row]:
    server = ctx.servers.get("postgresql")
    if server is None:
        return []
    sizes = ctx.sizes
    count, turns = sizes.expiry_sessions, sizes.expiry_turns
    db = await server.database("expiry")
    writers = session_ids("live", 4)
    try:
        await load_histories(db, writers, 10, now=now_utc(), ttl=TTL)
        await timed(
            f"load {fmt_count(count)} expired sessions x {turns} turns",
            load_histories(
                db, session_ids("expired-a", count), turns, now=now_utc(), ttl=TTL, expired=True
            ),
        )
        await vacuum_analyze(db)
        repo = ctx.repository(db.url)
        async with repo:
            await warm_cache(repo, writers, 10)
            with _no_gc_pauses():
                without = await _writer_for(repo, writers, sizes.expiry_baseline)
                during, deleted, seconds, batches = await _sweep_with_writer(repo, writers)
                without += await _writer_for(repo, writers, sizes.expiry_baseline)
        if deleted != count or await _expired_left(db.target):
            ctx.note(f"expiry: convostore deleted {deleted} of {count} expired sessions")
        await timed(
            f"load {fmt_count(count)} expired sessions x {turns} turns (raw floor)",
            load_histories(
                db, session_ids("expired-b", count), turns, now=now_utc(), ttl=TTL, expired=True
            ),
        )
        await vacuum_analyze(db)
        start = time.perf_counter()
        with _no_gc_pauses():
            raw_deleted, raw_batches = await raw_sweep(
                db.target, now_utc(), repo.config.sweep_batch_size
            )
        raw_seconds = time.perf_counter() - start
    finally:
        await server.drop(db)
    return _rows(
        count,
        turns,
        repo.config.sweep_batch_size,
        (deleted / seconds, batches),
        (raw_deleted / raw_seconds, raw_batches),
        Stats.of(during),
        Stats.of(without),
    )


async def _writer_for(repo: Any, sids: list[str], count: int) -> list[float]:
    latencies: list[float] = []
    for index in range(count):
        start = time.perf_counter()
        await add_turn(repo, sids[index % len(sids)])
        latencies.append(time.perf_counter() - start)
    return latencies


async def _sweep_with_writer(
    repo: Any, sids: list[str]
) -> tuple[list[float], int, float, list[float]]:
    """Sweep like ``SessionRepository._sweep`` while a task appends; returns the appends'
    latencies, sessions deleted, the sweep's seconds and each batch's seconds."""
    done = asyncio.Event()
    latencies: list[float] = []

    async def writer() -> None:
        index = 0
        while not done.is_set():
            start = time.perf_counter()
            await add_turn(repo, sids[index % len(sids)])
            latencies.append(time.perf_counter() - start)
            index += 1

    task = asyncio.create_task(writer())
    await asyncio.sleep(0)
    batch_size = repo.config.sweep_batch_size
    store = repo._ops.store if repo._ops else None  # the sweep's batches, timed one by one
    assert store is not None
    now = now_utc()
    batches: list[float] = []
    total = 0
    start = time.perf_counter()
    try:
        while True:
            batch_start = time.perf_counter()
            deleted = await store.sweep_batch(now, batch_size)
            batches.append(time.perf_counter() - batch_start)
            total += len(deleted)
            if len(deleted) < batch_size:
                break
        seconds = time.perf_counter() - start
    finally:
        done.set()
        await task
    return latencies, total, seconds, batches


async def _expired_left(dsn: str) -> int:
    conn = await connect_postgres(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM sessions WHERE expires_at <= now()"))
    finally:
        await conn.close()


def _rows(
    count: int,
    turns: int,
    batch_size: int,
    conv: tuple[float, list[float]],
    raw: tuple[float, list[float]],
    during: Stats,
    without: Stats,
) -> list[Row]:
    (conv_rate, conv_batches), (raw_rate, raw_batches) = conv, raw
    conv_b, raw_b = Stats.of(conv_batches), Stats.of(raw_batches)
    sweep = f"expiry sweep of {fmt_count(count)} expired sessions x {turns} turns"
    p95_ratio = during.p95 / without.p95
    return [
        Row(
            key="expiry.rate",
            path=sweep,
            backend="PostgreSQL",
            convostore=Figure("convostore", conv_rate, None, 1, "rate"),
            raw=Figure("raw asyncpg", raw_rate, None, 1, "rate"),
            ratio=conv_rate / raw_rate,
            ratio_of="convostore / raw sessions/s",
            target=f"≥ {RATE_TARGET:,.0f} sessions/s",
            met=conv_rate >= RATE_TARGET,
        ),
        Row(
            key="expiry.batch",
            path=f"{sweep}: longest batch transaction ({fmt_count(batch_size)} sessions)",
            backend="PostgreSQL",
            convostore=Figure("convostore", conv_b.maximum, None, conv_b.n),
            raw=Figure("raw asyncpg", raw_b.maximum, None, raw_b.n),
            ratio=conv_b.maximum / raw_b.maximum,
            ratio_of="convostore / raw longest batch",
            target=f"≤ {BATCH_TARGET * 1e3:.0f} ms",
            met=conv_b.maximum <= BATCH_TARGET,
            note=f"longest of {conv_b.n} batches; median batch convostore "
            f"{conv_b.median * 1e3:.1f} ms, raw {raw_b.median * 1e3:.1f} ms",
        ),
        Row(
            key="expiry.add_turn_p95",
            path="add_turn p95 during the sweep vs without",
            backend="PostgreSQL",
            convostore=figure("convostore during the sweep", during),
            others=[figure("convostore without a sweep", without)],
            ratio=p95_ratio,
            ratio_of="p95 during / p95 without",
            target=f"≤ {P95_FACTOR:g}×",
            met=p95_ratio <= P95_FACTOR,
        ),
    ]


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Keep Python's garbage collector out of the timed sweep: a full pass over this process's
    heap (large after the earlier scenarios) takes about 0.1 s, and it would be charged to
    whichever batch it interrupted, though the database transaction had long finished."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
