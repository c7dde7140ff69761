"""Rows 2 and 3: ``add_turn`` (one exchange) against the raw driver, and its cost at 10, 100
and 1,000 stored turns, beside the original manager in memory and with Redis.

Two raw floors: the naive transaction (one statement at a time), and the true floor, the same
work in one statement on asyncpg (convostore's own one-statement append, prepared) or in one
thread hop of sqlite3, storing the same rows as convostore, idempotency key included; the true
floor without the key (as it was before) is shown beside it. The core path
(``StoreConfig(fast_path=False)``: SQLAlchemy's execution) appends beside the fast path.

MariaDB has no fast path: convostore's append there is SQLAlchemy's execution of the UPDATE,
the read of the counters and the inserts, and its true floor the same statements on asyncmy
(``raw.RawMariaDB``). Its rows against the raw driver are shown without the targets the other
backends' fast paths are held to, and it has no separate core-path variant (the same path);
the flatness target (1,000 stored turns against 10) is the same for every backend.

Each variant appends to sessions of its own (round robin over a few, so a session grows by
only a few dozen turns while it is measured); convostore's sessions are cached first, as they
are when one worker serves a conversation.
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
from ..timing import Op, Stats, interleave
from ..workload import EXCHANGE, session_ids
from ._util import (
    DRIVERS,
    NO_FAST_PATH,
    add_turn,
    cycling,
    fast_path,
    floor_rows,
    fmt_count,
    now_utc,
    timed,
    warm_cache,
)

__all__ = ["run"]

ADD_TURN_TARGET = {"postgresql": 1.0, "sqlite": 1.2}
"""By backend with a fast path (``_util.fast_path``)."""
FLOOR_LABELS = {
    "postgresql": "raw asyncpg, one statement",
    "sqlite": "raw sqlite3, one hop",
    "mariadb": "raw asyncmy, allocate + executemany",
}
TRUE_FLOOR_TARGET = 1.2
FLAT_FACTOR = 1.05
ORIGINAL_MEMORY = "original (memory)"
ORIGINAL_REDIS = "original + Redis"
KEYLESS = "without the key (the earlier floor)"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _run_backend(ctx, server)
    return rows


async def _originals(ctx: Context) -> dict[str, Any]:
    """The original manager in memory and with Redis (whichever can run)."""
    managers: dict[str, Any] = {}
    if ctx.seed is None:
        return managers
    managers[ORIGINAL_MEMORY] = await start_original(ctx.seed, ttl=TTL, max_sessions=100_000)
    redis = await start_original(ctx.seed, ttl=TTL, max_sessions=100_000, redis=True)
    if redis is None:
        ctx.note("Redis is not reachable: the original manager's Redis baseline is skipped")
    else:
        managers[ORIGINAL_REDIS] = redis
    return managers


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    sizes = ctx.sizes
    db = await server.database("append")
    histories = sizes.histories
    conv = {h: session_ids(f"conv{h}", sizes.append_sessions) for h in histories}
    raw_sids = {h: session_ids(f"raw{h}", sizes.append_sessions) for h in histories}
    floor_sids = {h: session_ids(f"floor{h}", sizes.append_sessions) for h in histories}
    core_sids = {h: session_ids(f"core{h}", sizes.append_sessions) for h in histories}
    keyless_sids = {h: session_ids(f"keyless{h}", sizes.append_sessions) for h in histories}
    for h in histories:
        every = conv[h] + raw_sids[h] + floor_sids[h] + core_sids[h] + keyless_sids[h]
        await load_histories(db, every, h, now=now_utc(), ttl=TTL)
    repo = ctx.repository(db.url)
    core = ctx.repository(db.url, fast_path=False)
    with_core = fast_path(server)  # else fast_path=False is the path convostore takes anyway
    # Each raw variant on a connection of its own, as convostore's repository has its own: a
    # server backend that serves more of the interleaved blocks stays warmer and measured
    # up to a fifth faster on PostgreSQL.
    raw, floor, keyless = [await open_raw(db, TTL) for _ in range(3)]
    originals = await _originals(ctx)
    try:
        async with repo, core:
            ops: dict[str, Op] = {}
            for h in histories:
                await warm_cache(repo, conv[h], h)
                ops[f"convostore@{h}"] = cycling(conv[h], lambda sid: add_turn(repo, sid))
                if with_core:
                    await warm_cache(core, core_sids[h], h)
                    ops[f"core@{h}"] = cycling(core_sids[h], lambda sid: add_turn(core, sid))
                ops[f"raw@{h}"] = cycling(raw_sids[h], lambda sid: raw.append(sid, EXCHANGE))
                ops[f"floor@{h}"] = cycling(
                    floor_sids[h], lambda sid: floor.append_one(sid, EXCHANGE)
                )
                ops[f"keyless@{h}"] = cycling(
                    keyless_sids[h], lambda sid: keyless.append_one(sid, EXCHANGE, keyed=False)
                )
                for label, manager in originals.items():
                    assert ctx.seed is not None  # originals run only with the seed loaded
                    sids = session_ids(f"orig{h}", sizes.append_sessions)
                    for sid in sids:
                        await manager.update(sid, original_state(ctx.seed, h))
                    ops[f"{label}@{h}"] = cycling(sids, _original_append(manager))
            stats = await timed(
                f"add_turn at {', '.join(fmt_count(h) for h in histories)} turns ({server.label})",
                interleave(ops, sizes.append_iterations, warmup=sizes.warmup, rounds=sizes.rounds),
            )
            await _check(repo, raw, conv[histories[0]][0])
            await _check(repo, raw, floor_sids[histories[0]][0])
    finally:
        for store in (raw, floor, keyless):
            await store.close()
        for manager in originals.values():
            await stop_original(manager)
        await server.drop(db)
    return _rows(ctx, server, stats, list(originals))


def _original_append(manager: Any) -> Any:
    async def append(sid: str) -> None:
        await manager.add_turn_to_session(
            sid,
            EXCHANGE.question,
            EXCHANGE.answer,
            None,
            EXCHANGE.template_id,
            EXCHANGE.slots,
            EXCHANGE.results,
        )

    return append


async def _check(repo: Any, raw: Any, sid: str) -> None:
    """convostore's state and the stored rows agree after the appends."""
    state = await repo.get(sid)
    stored = await raw.load(sid)
    if state is None or stored is None or len(state.turns) != len(stored["turns"]):
        raise RuntimeError(f"session {sid}: cached state and stored rows disagree")


def _rows(ctx: Context, server: Server, stats: dict[str, Stats], originals: list[str]) -> list[Row]:
    histories = ctx.sizes.histories
    labels = ["convostore", "raw", *originals]
    ctx.series.setdefault("append_vs_history", {})[server.label] = {
        "x": list(histories),
        "series": {label: [stats[f"{label}@{h}"].median for h in histories] for label in labels},
    }
    raw_label = f"raw {DRIVERS[server.name]}, naive transaction"
    floor_label = FLOOR_LABELS[server.name]
    first = histories[0]

    def others(h: int) -> list[Any]:
        return [figure(label, stats[f"{label}@{h}"]) for label in originals]

    conv0, raw0 = stats[f"convostore@{first}"], stats[f"raw@{first}"]
    bound = ADD_TURN_TARGET.get(server.name)
    rows = [
        Row(
            key=f"add_turn.{server.name}",
            path=f"add_turn, one exchange ({fmt_count(first)} stored turns)",
            backend=server.label,
            convostore=figure("convostore", conv0),
            raw=figure(raw_label, raw0),
            others=others(first),
            ratio=conv0.median / raw0.median,
            ratio_of="convostore / raw",
            target=f"≤ {bound}× raw" if bound else "",
            met=conv0.median / raw0.median <= bound if bound else None,
            note="" if bound else NO_FAST_PATH,
        )
    ]
    for h in histories[1:]:
        conv, raw = stats[f"convostore@{h}"], stats[f"raw@{h}"]
        flat = conv.median / conv0.median
        last = h == histories[-1]
        rows.append(
            Row(
                key=f"append_history.{h}.{server.name}",
                path=f"add_turn at {fmt_count(h)} stored turns",
                backend=server.label,
                convostore=figure("convostore", conv),
                raw=figure(raw_label, raw),
                others=others(h),
                ratio=flat,
                ratio_of=f"convostore at {fmt_count(h)} / at {fmt_count(first)} turns",
                target=f"≤ {FLAT_FACTOR}× of at {fmt_count(first)}" if last else "",
                met=flat <= FLAT_FACTOR if last else None,
                note=f"convostore / raw {conv.median / raw.median:.2f}×; "
                f"raw at {fmt_count(h)} / at {fmt_count(first)} {raw.median / raw0.median:.2f}×",
            )
        )
    for h in (first, histories[-1]):
        measured = {
            "convostore": stats[f"convostore@{h}"],
            "floor": stats[f"floor@{h}"],
            "naive": stats[f"raw@{h}"],
        }
        if f"core@{h}" in stats:
            measured["core"] = stats[f"core@{h}"]
        pair = floor_rows(
            server,
            (f"add_turn_floor.{h}", f"add_turn_core.{h}"),
            (
                f"add_turn vs the true floor ({fmt_count(h)} stored turns)",
                f"add_turn, core path (fast_path=False), {fmt_count(h)} stored turns",
            ),
            measured,
            (floor_label, raw_label),
            TRUE_FLOOR_TARGET,
        )
        keyless = stats[f"keyless@{h}"]
        pair[0].others.append(figure(f"{floor_label}, {KEYLESS}", keyless))
        pair[0].note = "; ".join(
            filter(
                None,
                (
                    pair[0].note,
                    f"the floor stores an idempotency key, as add_turn does; convostore / the "
                    f"floor {KEYLESS}: {measured['convostore'].median / keyless.median:.2f}×",
                ),
            )
        )
        rows += pair
    return rows
