"""Row 8: memory per cached session with 20 turns, measured with tracemalloc: what the cache
keeps after reading sessions from the store, against the original manager holding the same
content (built through its own models, with fresh strings as a request would bring)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Awaitable, Callable

from ..baselines import original_state, start_original, stop_original
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..results import Figure, Row
from ..workload import session_ids
from ._util import now_utc, warm_cache

__all__ = ["run"]

ORIGINAL_LABEL = "original (memory)"


async def _retained(count: int, fill: Callable[[], Awaitable[object]]) -> float:
    """Bytes still allocated after ``fill()`` (objects it left behind), per session."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await fill()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    server = ctx.servers.get("sqlite") or next(iter(ctx.servers.values()))
    db = await server.database("memory")
    count, turns = sizes.memory_sessions, sizes.memory_turns
    warm, sids = session_ids("mem-warm", 5), session_ids("mem", count)
    try:
        await load_histories(db, warm + sids, turns, now=now_utc(), ttl=TTL)
        repo = ctx.repository(db.url, max_sessions=count + 100)
        async with repo:
            await warm_cache(repo, warm, turns)  # statement caches and pools exist before tracing
            conv = await _retained(count, lambda: warm_cache(repo, sids, turns))
            if (await repo.get_stats())["cached_sessions"] != count + len(warm):
                ctx.note("memory: the cache did not keep every session read")
    finally:
        await server.drop(db)
    others = []
    if ctx.seed is not None:
        seed = ctx.seed
        manager = await start_original(seed, ttl=TTL, max_sessions=count + 100)
        assert manager is not None  # memory only: it always starts
        orig_sids = session_ids("orig-mem", count)
        try:
            await manager.update("warm", original_state(seed, turns))

            async def fill() -> None:
                for sid in orig_sids:
                    await manager.update(sid, original_state(seed, turns))

            others.append(
                Figure(ORIGINAL_LABEL, await _retained(count, fill), None, count, "bytes")
            )
        finally:
            await stop_original(manager)
    row = Row(
        key="memory",
        path=f"memory per cached session ({turns} turns, tracemalloc)",
        backend="any",
        convostore=Figure("convostore", conv, None, count, "bytes"),
        others=others,
        target="≤ the original's",
        note=f"{count:,} sessions; no raw floor (this is the cache's own memory)",
    )
    if others:
        row.ratio = conv / others[0].median
        row.ratio_of = "convostore / original"
        row.met = row.ratio <= 1.0
    return [row]
