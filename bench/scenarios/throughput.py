"""Row 5: concurrent throughput on PostgreSQL: 16 tasks appending to distinct sessions,
convostore with a pool of 10 (no overflow) against an asyncpg pool of 10 running the naive
transaction. Rounds alternate; the figure is the median of the rounds' exchanges per second."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..raw import RawPostgresPool
from ..results import Figure, Row
from ..timing import Stats
from ..workload import EXCHANGE, session_ids
from ._util import add_turn, now_utc, timed, warm_cache

__all__ = ["run"]

TARGET = 1.0
Append = Callable[[str], Awaitable[object]]


async def run(ctx: Context) -> list[Row]:
    if "mariadb" in ctx.servers:
        ctx.note(
            "concurrent throughput (16 tasks, pool 10) is PostgreSQL's row against asyncpg's "
            "pool: not run on MariaDB, whose concurrency shows in the concurrency sweep"
        )
    server = ctx.servers.get("postgresql")
    if server is None:
        return []
    sizes = ctx.sizes
    db = await server.database("concurrency")
    tasks, pool = sizes.concurrency_tasks, sizes.concurrency_pool
    conv_sids, raw_sids = session_ids("conc-conv", tasks), session_ids("conc-raw", tasks)
    await load_histories(db, conv_sids + raw_sids, 10, now=now_utc(), ttl=TTL)
    repo = ctx.repository(db.url, pool_size=pool, max_overflow=0)
    raw = await RawPostgresPool.open(db.target, pool, TTL)
    rates: dict[str, list[float]] = {"convostore": [], "raw": []}
    latencies: dict[str, list[float]] = {"convostore": [], "raw": []}
    try:
        async with repo:
            await warm_cache(repo, conv_sids, 10)
            variants: dict[str, tuple[Append, list[str]]] = {
                "convostore": (lambda sid: add_turn(repo, sid), conv_sids),
                "raw": (lambda sid: raw.append(sid, EXCHANGE), raw_sids),
            }
            for append, sids in variants.values():  # warm-up: open every pooled connection
                await _burst(append, sids, max(2, sizes.concurrency_per_task // 4), [])

            async def measure() -> None:
                for index in range(sizes.concurrency_rounds):
                    order = list(variants) if index % 2 == 0 else list(reversed(variants))
                    for name in order:
                        append, sids = variants[name]
                        rates[name].append(
                            await _burst(append, sids, sizes.concurrency_per_task, latencies[name])
                        )

            await timed(f"{tasks} tasks, pool {pool} ({server.label})", measure())
    finally:
        await raw.close()
        await server.drop(db)
    conv, floor = statistics.median(rates["convostore"]), statistics.median(rates["raw"])
    conv_p95, raw_p95 = Stats.of(latencies["convostore"]).p95, Stats.of(latencies["raw"]).p95
    return [
        Row(
            key="throughput.postgresql",
            path=f"concurrent add_turn, {tasks} tasks, distinct sessions, pool {pool}",
            backend=server.label,
            convostore=Figure("convostore", conv, None, len(rates["convostore"]), "rate"),
            raw=Figure(f"raw asyncpg pool of {pool}", floor, None, len(rates["raw"]), "rate"),
            ratio=conv / floor,
            ratio_of="convostore / raw exchanges/s",
            target=f"≥ {TARGET}× raw",
            met=conv / floor >= TARGET,
            note=f"exchanges/s, median of {len(rates['raw'])} rounds; latency p95 convostore "
            f"{conv_p95 * 1e3:.2f} ms, raw {raw_p95 * 1e3:.2f} ms",
        )
    ]


async def _burst(append: Append, sids: list[str], per_task: int, latencies: list[float]) -> float:
    """Every session's task appends ``per_task`` exchanges; returns exchanges per second."""

    async def worker(sid: str) -> None:
        for _ in range(per_task):
            start = time.perf_counter()
            await append(sid)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(sid) for sid in sids))
    return len(sids) * per_task / (time.perf_counter() - start)
