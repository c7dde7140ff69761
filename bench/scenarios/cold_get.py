"""Row 4: cold ``get`` of a 100-turn session (not cached) against the raw driver reading the
same rows, beside the original manager reading its Redis blob after a restart.

convostore reads through a repository with ``max_sessions=1`` cycling over many sessions, so
every ``get`` misses the cache and loads the session row and its turns with their slots.
"""

from __future__ import annotations

from typing import Any

from ..backends import Server
from ..baselines import original_state, start_original, stop_original
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..raw import open_raw
from ..results import Row, figure
from ..timing import Op, interleave
from ..workload import session_ids
from ._util import cycling, fmt_count, now_utc, timed

__all__ = ["run"]

TARGET = 1.3
ORIGINAL_REDIS = "original + Redis (not in memory)"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows.append(await _run_backend(ctx, server))
    return rows


async def _run_backend(ctx: Context, server: Server) -> Row:
    sizes = ctx.sizes
    db = await server.database("cold")
    turns = sizes.cold_turns
    sids = session_ids("cold", max(20, sizes.append_sessions))
    await load_histories(db, sids, turns, now=now_utc(), ttl=TTL)
    repo = ctx.repository(db.url, max_sessions=1)
    raw = await open_raw(db, TTL)
    original = None
    if ctx.seed is not None:
        original = await start_original(ctx.seed, ttl=TTL, max_sessions=1, redis=True)
    try:
        async with repo:
            ops: dict[str, Op] = {
                "convostore": cycling(sids, _read(repo.get, turns)),
                "raw": cycling(sids, _read_raw(raw.load, turns)),
            }
            if original is not None and ctx.seed is not None:
                for sid in sids:
                    await original.update(sid, original_state(ctx.seed, turns))
                ops[ORIGINAL_REDIS] = cycling(sids, _read(original.get, turns))
            before = (await repo.get_stats())["cache_misses"]
            stats = await timed(
                f"cold get of {turns}-turn sessions ({server.label})",
                interleave(ops, sizes.cold_iterations, warmup=sizes.warmup, rounds=sizes.rounds),
            )
            misses = (await repo.get_stats())["cache_misses"] - before
            expected = sizes.cold_iterations + min(sizes.warmup, sizes.cold_iterations)
            if misses != expected:
                ctx.note(f"cold get ({server.label}): {misses} misses for {expected} reads")
    finally:
        await raw.close()
        if original is not None:
            await stop_original(original)
        await server.drop(db)
    conv, floor = stats["convostore"], stats["raw"]
    ratio = conv.median / floor.median
    raw_label = f"raw {'asyncpg' if server.name == 'postgresql' else 'aiosqlite'}"
    return Row(
        key=f"cold_get.{server.name}",
        path=f"cold get of a {fmt_count(turns)}-turn session",
        backend=server.label,
        convostore=figure("convostore", conv),
        raw=figure(raw_label, floor),
        others=[figure(ORIGINAL_REDIS, stats[ORIGINAL_REDIS])] if ORIGINAL_REDIS in stats else [],
        ratio=ratio,
        ratio_of="convostore / raw",
        target=f"≤ {TARGET}× raw",
        met=ratio <= TARGET,
    )


def _read(get: Any, turns: int) -> Any:
    async def read(sid: str) -> None:
        state = await get(sid)
        if state is None or len(state.turns) != turns:
            raise RuntimeError(f"session {sid}: expected {turns} turns")

    return read


def _read_raw(load: Any, turns: int) -> Any:
    async def read(sid: str) -> None:
        stored = await load(sid)
        if stored is None or len(stored["turns"]) != turns:
            raise RuntimeError(f"session {sid}: expected {turns} turns")

    return read
