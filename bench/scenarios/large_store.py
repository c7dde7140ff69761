"""Row 6: a large store. N sessions x 10 turns (``--scale N``) are loaded into PostgreSQL with
COPY; ``add_turn`` and cold ``get`` there are compared with the same on a 1,000-session store,
both measured in alternating blocks, with the raw floor on each store beside them."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from convostore import SessionRepository

from ..backends import Database
from ..context import Context
from ..loader import load_histories, vacuum_analyze
from ..options import TTL
from ..raw import RawStore, open_raw
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import EXCHANGE, session_ids
from ._util import add_turn, cycling, fmt_count, now_utc, timed, warm_cache

__all__ = ["run"]

TARGET = 1.2
TURNS = 10


async def run(ctx: Context) -> list[Row]:
    if "mariadb" in ctx.servers:
        ctx.note(
            "large store: PostgreSQL's row (COPY of --scale sessions), not run on MariaDB, "
            "whose bulk load is multi-row INSERTs and would add minutes at 1,000,000 sessions"
        )
    server = ctx.servers.get("postgresql")
    if server is None:
        return []
    sizes = ctx.sizes
    stores = {"small": sizes.store_small, "large": sizes.store_large}
    dbs: dict[str, Database] = {}
    sids: dict[str, list[str]] = {}
    try:
        for name, count in stores.items():
            dbs[name] = await server.database(f"store_{name}")
            sids[name] = session_ids("store", count)
            start = time.perf_counter()
            await load_histories(dbs[name], sids[name], TURNS, now=now_utc(), ttl=TTL)
            seconds = time.perf_counter() - start
            print(
                f"  loaded {fmt_count(count)} sessions / {fmt_count(count * TURNS)} turns "
                f"with COPY in {seconds:.1f} s ({count * TURNS / seconds:,.0f} turns/s)",
                flush=True,
            )
            await timed("VACUUM ANALYZE", vacuum_analyze(dbs[name]))
        stats = await _measure(ctx, dbs, sids)
    finally:
        for db in dbs.values():
            await server.drop(db)
    return _rows(stats, stores)


async def _measure(
    ctx: Context, dbs: dict[str, Database], sids: dict[str, list[str]]
) -> dict[str, Stats]:
    sizes = ctx.sizes
    picks_needed = sizes.store_iterations + sizes.warmup
    ops: dict[str, Op] = {}
    repos: list[SessionRepository] = []
    raws: list[RawStore] = []
    try:
        for name, db in dbs.items():
            rng = random.Random(name)
            pool = sids[name]
            hot = rng.sample(pool, min(len(pool) // 4, 2 * sizes.append_sessions))
            conv_hot, raw_hot = hot[: len(hot) // 2], hot[len(hot) // 2 :]
            rest = sorted(set(pool) - set(hot))
            conv_cold = _pick(rng, rest, picks_needed)
            raw_cold = _pick(rng, rest, picks_needed)
            repo = ctx.repository(db.url)
            cold_repo = ctx.repository(db.url, max_sessions=1)
            raw = await open_raw(db, TTL)
            raws.append(raw)
            for started in (repo, cold_repo):
                await started.start()
                repos.append(started)
            await warm_cache(repo, conv_hot, TURNS)
            ops[f"convostore add_turn@{name}"] = cycling(conv_hot, _appender(repo))
            ops[f"raw add_turn@{name}"] = cycling(raw_hot, _raw_appender(raw))
            ops[f"convostore get@{name}"] = cycling(conv_cold, cold_repo.get)
            ops[f"raw get@{name}"] = cycling(raw_cold, raw.load)
        return await timed(
            "add_turn and cold get on both stores",
            interleave(ops, sizes.store_iterations, warmup=sizes.warmup, rounds=sizes.rounds),
        )
    finally:
        for repo in repos:
            await repo.stop()
        for raw in raws:
            await raw.close()


def _appender(repo: SessionRepository) -> Callable[[str], Awaitable[object]]:
    return lambda sid: add_turn(repo, sid)


def _raw_appender(raw: RawStore) -> Callable[[str], Awaitable[object]]:
    return lambda sid: raw.append(sid, EXCHANGE)


def _pick(rng: random.Random, pool: list[str], count: int) -> list[str]:
    """Distinct sessions when the store has enough, else with repeats."""
    return rng.sample(pool, count) if len(pool) >= count else rng.choices(pool, k=count)


def _rows(stats: dict[str, Stats], stores: dict[str, int]) -> list[Row]:
    small, large = fmt_count(stores["small"]), fmt_count(stores["large"])
    rows = []
    for op, path in (("add_turn", "add_turn"), ("get", f"cold get of a {TURNS}-turn session")):
        conv, conv_small = stats[f"convostore {op}@large"], stats[f"convostore {op}@small"]
        raw, raw_small = stats[f"raw {op}@large"], stats[f"raw {op}@small"]
        ratio = conv.median / conv_small.median
        rows.append(
            Row(
                key=f"large_store.{op}",
                path=f"{path}, {large}-session store vs {small}",
                backend="PostgreSQL",
                convostore=figure(f"convostore, {large} sessions", conv),
                raw=figure(f"raw asyncpg, {large} sessions", raw),
                others=[
                    figure(f"convostore, {small} sessions", conv_small),
                    figure(f"raw asyncpg, {small} sessions", raw_small),
                ],
                ratio=ratio,
                ratio_of=f"convostore at {large} / at {small} sessions",
                target=f"≤ {TARGET}×",
                met=ratio <= TARGET,
                note=f"raw at {large} / at {small}: {raw.median / raw_small.median:.2f}×",
            )
        )
    return rows
