"""Row 4: cold ``get`` of a 100-turn session (not cached) against the raw driver reading the
same rows, beside the original manager reading its Redis blob after a restart.

convostore reads through a repository with ``max_sessions=1`` cycling over many sessions, so
every ``get`` misses the cache and loads the session row and its turns with their slots.

Beside it, in the same interleaved run: the true floor (convostore's own load run on the raw
driver: on asyncpg its one statement, on SQLite its three-part read in one thread hop; rows
folded into plain dicts), the core path (``fast_path=False``), cold gets
that need an expiry refresh (stored ``last_accessed`` older than TTL/10; each session read
once, so each read needs one), and windowed reads (``last_turns=6`` of 1,000-turn sessions)
against cold gets of 10-turn sessions.

On MariaDB convostore reads on SQLAlchemy's execution (no fast path), so its rows against the
raw driver are shown without the targets the fast paths are held to, and it has no separate
core-path variant; the expiry refresh and the windowed read keep their targets, which compare
convostore with itself on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from ..backends import Server
from ..baselines import original_state, start_original, stop_original
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..raw import open_raw
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import session_ids
from ._util import DRIVERS, NO_FAST_PATH, cycling, fast_path, floor_rows, fmt_count, now_utc, timed

__all__ = ["run"]

TARGET = 1.3
TRUE_FLOOR_TARGET = 1.1
REFRESH_TARGET = 1.1
WINDOW_TARGET = 1.2
WINDOW = 6
LONG_TURNS = 1_000
SHORT_TURNS = 10
ORIGINAL_REDIS = "original + Redis (not in memory)"
FLOOR_LABELS = {
    "postgresql": "raw asyncpg, one-statement load",
    "sqlite": "raw sqlite3, three-part load in one hop",
    "mariadb": "raw asyncmy, three-part load",
}


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _run_backend(ctx, server)
    return rows


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    sizes = ctx.sizes
    db = await server.database("cold")
    turns = sizes.cold_turns
    count = max(20, sizes.append_sessions)
    sids = session_ids("cold", count)
    stale = session_ids("stale", sizes.cold_iterations + sizes.warmup)
    longs, shorts = session_ids("long", count), session_ids("short", count)
    await load_histories(db, sids, turns, now=now_utc(), ttl=TTL)
    old = now_utc() - timedelta(seconds=TTL / 5)  # older than TTL/10: a read refreshes it
    await timed(
        f"load {fmt_count(len(stale))} sessions read {TTL / 5 / 3600:g} h ago",
        load_histories(db, stale, turns, now=old, ttl=TTL),
    )
    await load_histories(db, longs, LONG_TURNS, now=now_utc(), ttl=TTL)
    await load_histories(db, shorts, SHORT_TURNS, now=now_utc(), ttl=TTL)
    repo = ctx.repository(db.url, max_sessions=1)
    core = ctx.repository(db.url, max_sessions=1, fast_path=False)
    stale_repo = ctx.repository(db.url, max_sessions=1)
    window_repo = ctx.repository(db.url, max_sessions=1)
    raw, floor = await open_raw(db, TTL), await open_raw(db, TTL)  # a connection each
    original = None
    if ctx.seed is not None:
        original = await start_original(ctx.seed, ttl=TTL, max_sessions=1, redis=True)
    try:
        async with repo, core, stale_repo, window_repo:
            ops: dict[str, Op] = {
                "convostore": cycling(sids, _read(repo.get, turns)),
                "raw": cycling(sids, _read_raw(raw.load, turns)),
                "floor": cycling(sids, _read_raw(floor.load_one, turns)),
                "stale": _once_each(stale, _read(stale_repo.get, turns)),
                "window": cycling(longs, _read(_windowed(window_repo), WINDOW)),
                "short": cycling(shorts, _read(window_repo.get, SHORT_TURNS)),
            }
            if fast_path(server):  # else fast_path=False is the path convostore takes anyway
                ops["core"] = cycling(sids, _read(core.get, turns))
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
        await floor.close()
        if original is not None:
            await stop_original(original)
        await server.drop(db)
    return _rows(server, stats, turns)


def _rows(server: Server, stats: dict[str, Stats], turns: int) -> list[Row]:
    conv, naive, floor = stats["convostore"], stats["raw"], stats["floor"]
    raw_label = f"raw {DRIVERS[server.name]}, naive (two statements)"
    floor_label = FLOOR_LABELS[server.name]
    judged = fast_path(server)
    ratio = conv.median / naive.median
    rows = [
        Row(
            key=f"cold_get.{server.name}",
            path=f"cold get of a {fmt_count(turns)}-turn session",
            backend=server.label,
            convostore=figure("convostore", conv),
            raw=figure(raw_label, naive),
            others=[figure(ORIGINAL_REDIS, stats[ORIGINAL_REDIS])]
            if ORIGINAL_REDIS in stats
            else [],
            ratio=ratio,
            ratio_of="convostore / raw",
            target=f"≤ {TARGET}× raw" if judged else "",
            met=ratio <= TARGET if judged else None,
            note="" if judged else NO_FAST_PATH,
        )
    ]
    measured = {"convostore": conv, "floor": floor, "naive": naive}
    if "core" in stats:
        measured["core"] = stats["core"]
    rows += floor_rows(
        server,
        ("cold_get_floor", "cold_get_core"),
        (
            f"cold get of a {fmt_count(turns)}-turn session vs the true floor",
            f"cold get of a {fmt_count(turns)}-turn session, core path (fast_path=False)",
        ),
        measured,
        (floor_label, raw_label),
        TRUE_FLOOR_TARGET,
    )
    stale = stats["stale"]
    ratio = stale.median / conv.median
    rows.append(
        Row(
            key=f"cold_get_refresh.{server.name}",
            path=f"cold get needing an expiry refresh vs not ({fmt_count(turns)} turns)",
            backend=server.label,
            convostore=figure("convostore, refresh needed", stale),
            raw=figure("convostore, no refresh", conv),
            ratio=ratio,
            ratio_of="refresh / no refresh",
            target=f"≤ {REFRESH_TARGET}×",
            met=ratio <= REFRESH_TARGET,
            note="last_accessed older than TTL/10, each session read once; refresh_delay 1 s",
        )
    )
    window, short = stats["window"], stats["short"]
    ratio = window.median / short.median
    rows.append(
        Row(
            key=f"cold_get_window.{server.name}",
            path=f"cold get(last_turns={WINDOW}) of a {fmt_count(LONG_TURNS)}-turn session vs "
            f"cold get of a {fmt_count(SHORT_TURNS)}-turn session",
            backend=server.label,
            convostore=figure(f"last {WINDOW} of {fmt_count(LONG_TURNS)}", window),
            raw=figure(f"whole {fmt_count(SHORT_TURNS)}-turn session", short),
            ratio=ratio,
            ratio_of="windowed / 10-turn",
            target=f"≤ {WINDOW_TARGET}×",
            met=ratio <= WINDOW_TARGET,
        )
    )
    return rows


def _once_each(sids: list[str], action: Any) -> Op:
    """An op that applies ``action`` to each item once, in order (it fails when they run
    out, so a count mistake cannot reuse a session)."""
    source: Iterator[str] = iter(sids)

    async def op() -> None:
        await action(next(source))

    return op


def _windowed(repo: Any) -> Any:
    async def get(sid: str) -> Any:
        return await repo.get(sid, last_turns=WINDOW)

    return get


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
