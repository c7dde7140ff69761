"""Row 1: cache-hit ``get`` latency at 100 … 100,000 cached sessions (no SQL), beside an
OrderedDict LRU floor and the original manager's in-memory ``get`` (its LRU is a list: O(n)).
At 10,000 the floor also runs over the turn lists the repository caches, to show what copying
out a list of distinct turn objects (rather than of one object) costs at random access.

Every level has a repository (and an original manager) of its own, all filled first and then
measured together in alternating blocks, so the level-to-level ratio is a same-time ratio.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from convostore import SessionRepository

from ..baselines import original_state, start_original, stop_original
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import session_ids
from ._util import fmt_count, now_utc, timed

__all__ = ["run"]

HIT_TARGET = 3e-6
ORIGINAL_FACTOR = 50.0
FLAT_FACTOR = 1.3
FLOOR_FACTOR = 2.0
FLOOR_LEVEL = 10_000
CONVOSTORE = "convostore"
FLOOR_LABEL = "OrderedDict LRU floor"
ORIGINAL_LABEL = "original (memory)"
TURNS_FLOOR_LABEL = "OrderedDict LRU floor over the cached turn objects"
FILL_CONCURRENCY = 4


@dataclass(slots=True)
class Level:
    """The caches holding one number of sessions."""

    size: int
    repo: SessionRepository
    original: Any | None = None
    floor: OrderedDict[str, list[object]] = field(default_factory=OrderedDict)
    floor_of_turns: OrderedDict[str, list[object]] | None = None
    """The floor over the very turn objects the repository caches (at ``FLOOR_LEVEL``)."""


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.sizes
    server = ctx.servers.get("sqlite") or next(iter(ctx.servers.values()))
    db = await server.database("hits")
    sids = session_ids("hit", max(sizes.hit_levels))
    await timed(
        f"load {fmt_count(len(sids))} sessions x {sizes.hit_turns} turns ({server.label})",
        load_histories(db, sids, sizes.hit_turns, now=now_utc(), ttl=TTL),
    )
    shared = original_state(ctx.seed, sizes.hit_turns) if ctx.seed is not None else None
    levels: list[Level] = []
    try:
        for size in sizes.hit_levels:
            start = time.perf_counter()
            level = Level(size, ctx.repository(db.url, max_sessions=size + 10))
            await level.repo.start()
            levels.append(level)
            await _fill(level.repo, sids[:size])
            for sid in sids[:size]:
                level.floor[sid] = [object()] * sizes.hit_turns
            if size == FLOOR_LEVEL:
                level.floor_of_turns = OrderedDict(
                    [(sid, await _cached_turns(level.repo, sid)) for sid in sids[:size]]
                )
            if ctx.seed is not None:
                original = await start_original(ctx.seed, ttl=TTL, max_sessions=size + 10)
                assert original is not None  # memory only: it always starts
                level.original = original
                for sid in sids[:size]:
                    await original.update(sid, shared)
            print(f"  cached {fmt_count(size)} sessions ({time.perf_counter() - start:.1f} s)")
        stats = await timed("cache-hit get at every level", _measure(ctx, levels, sids))
    finally:
        for level in levels:
            await level.repo.stop()
            if level.original is not None:
                await stop_original(level.original)
        await server.drop(db)
    return _rows(ctx, stats)


async def _fill(repo: SessionRepository, sids: list[str]) -> None:
    """Read each session once, a few at a time (setup only: overlaps the driver's thread)."""
    for start in range(0, len(sids), FILL_CONCURRENCY):
        batch = sids[start : start + FILL_CONCURRENCY]
        states = await asyncio.gather(*(repo.get(sid) for sid in batch))
        if any(state is None for state in states):
            raise RuntimeError("a stored session could not be read")


def _picks(sids: list[str], count: int, seed: int) -> Any:
    """An endless supply of random cached session ids."""
    picks = random.Random(seed).choices(sids, k=count)
    while True:
        yield from picks


async def _cached_turns(repo: SessionRepository, sid: str) -> list[object]:
    """The turns the repository's cache holds for ``sid`` (a hit returns the cached turn
    objects themselves)."""
    hits = repo.stats()["cache_hits"]
    state = await repo.get(sid)
    if state is None or repo.stats()["cache_hits"] != hits + 1:
        raise RuntimeError(f"session {sid} is not cached")
    return list(state.turns)


def _lru_floor(floor: OrderedDict[str, list[object]], picks: Any) -> Op:
    """An LRU hit at its barest: look up, mark most recently used, copy the list out."""

    async def hit() -> None:
        sid = next(picks)
        turns = floor[sid]
        floor.move_to_end(sid)
        list(turns)

    return hit


def _level_ops(level: Level, sids: list[str], count: int) -> dict[str, Op]:
    cached = sids[: level.size]
    conv_picks, floor_picks, orig_picks, turns_picks = (
        _picks(cached, count, level.size + k) for k in range(4)
    )
    repo, original = level.repo, level.original

    async def convostore() -> None:
        await repo.get(next(conv_picks))

    ops: dict[str, Op] = {CONVOSTORE: convostore, FLOOR_LABEL: _lru_floor(level.floor, floor_picks)}
    if level.floor_of_turns is not None:
        ops[TURNS_FLOOR_LABEL] = _lru_floor(level.floor_of_turns, turns_picks)
    if original is not None:
        manager = original

        async def original_get() -> None:
            await manager.get(next(orig_picks))

        ops[ORIGINAL_LABEL] = original_get
    return ops


async def _measure(
    ctx: Context, levels: list[Level], sids: list[str]
) -> dict[int, dict[str, Stats]]:
    sizes = ctx.sizes
    ops: dict[str, Op] = {}
    counts: dict[str, int] = {}
    for level in levels:
        for label, op in _level_ops(level, sids, sizes.hit_iterations + sizes.warmup).items():
            key = f"{label}@{level.size}"
            ops[key] = op
            counts[key] = sizes.hit_iterations
            if label == ORIGINAL_LABEL:  # O(n) per get: as many samples as its budget allows
                start = time.perf_counter()
                for _ in range(10):
                    await op()
                cost = (time.perf_counter() - start) / 10
                affordable = int(sizes.original_hit_budget / cost)
                counts[key] = max(20, min(sizes.hit_iterations, affordable))
    misses = [(await level.repo.get_stats())["cache_misses"] for level in levels]
    stats = await interleave(ops, counts, warmup=sizes.warmup, rounds=sizes.rounds)
    for level, before in zip(levels, misses, strict=True):
        if (await level.repo.get_stats())["cache_misses"] != before:
            ctx.note(f"cache-hit get at {fmt_count(level.size)}: some reads missed the cache")
    return {
        level.size: {
            label: stats[f"{label}@{level.size}"]
            for label in (CONVOSTORE, FLOOR_LABEL, ORIGINAL_LABEL, TURNS_FLOOR_LABEL)
            if f"{label}@{level.size}" in stats
        }
        for level in levels
    }


def _rows(ctx: Context, results: dict[int, dict[str, Stats]]) -> list[Row]:
    levels = sorted(results)
    ctx.series["hit_vs_cached"] = {
        "x": levels,
        "series": {
            label: [results[level][label].median for level in levels]
            for label in results[levels[0]]
            if label != TURNS_FLOOR_LABEL
        },
    }
    base = results[levels[0]][CONVOSTORE].median
    rows = []
    for level in levels:
        stats = results[level]
        conv = stats[CONVOSTORE]
        orig = stats.get(ORIGINAL_LABEL)
        row = Row(
            key=f"hit.{level}",
            path=f"cache-hit get, {fmt_count(level)} cached sessions",
            backend="any (no SQL)",
            convostore=figure(CONVOSTORE, conv),
            raw=figure(FLOOR_LABEL, stats[FLOOR_LABEL]),
            others=[figure(ORIGINAL_LABEL, orig)] if orig else [],
            target="median ≤ 3 µs",
            met=conv.median <= HIT_TARGET,
        )
        if orig is not None:
            row.ratio, row.ratio_of = orig.median / conv.median, "original / convostore"
        if level == 10_000 and orig is not None:
            row.target += f"; ≥ {ORIGINAL_FACTOR:g}× faster than the original"
            row.met = bool(row.met and row.ratio is not None and row.ratio >= ORIGINAL_FACTOR)
        if level == max(levels) and level >= 100 * levels[0]:
            flat = conv.median / base
            floor_flat = stats[FLOOR_LABEL].median / results[levels[0]][FLOOR_LABEL].median
            row.ratio = flat
            row.ratio_of = f"convostore at {fmt_count(level)} / at {fmt_count(levels[0])}"
            row.target += f"; ≤ {FLAT_FACTOR}× of at {fmt_count(levels[0])} (O(1))"
            row.met = bool(row.met and flat <= FLAT_FACTOR)
            row.note = f"floor at {fmt_count(level)} / at {fmt_count(levels[0])}: {floor_flat:.2f}×"
            if orig is not None:
                row.note += f"; original / convostore: {orig.median / conv.median:,.0f}×"
        rows.append(row)
        if level == FLOOR_LEVEL:
            floor = stats[FLOOR_LABEL]
            over_turns = stats.get(TURNS_FLOOR_LABEL)
            rows.append(
                Row(
                    key=f"hit_floor.{level}",
                    path=f"cache-hit get vs the OrderedDict floor, {fmt_count(level)} cached "
                    "sessions, random access",
                    backend="any (no SQL)",
                    convostore=figure(CONVOSTORE, conv),
                    raw=figure(FLOOR_LABEL, floor),
                    others=[figure(TURNS_FLOOR_LABEL, over_turns)] if over_turns else [],
                    ratio=conv.median / floor.median,
                    ratio_of="convostore / floor",
                    target=f"≤ {FLOOR_FACTOR:g}× floor",
                    met=conv.median / floor.median <= FLOOR_FACTOR,
                    note=(
                        "the floor's lists hold one object 100 times; copying the cached lists "
                        "of distinct turns costs that floor "
                        f"{over_turns.median / floor.median:.2f}× (convostore / it "
                        f"{conv.median / over_turns.median:.2f}×)"
                        if over_turns
                        else ""
                    ),
                )
            )
    return rows
