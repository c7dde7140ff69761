"""Concurrency sweep: 1, 10, 50 and 200 callers in one process appending to 1,000 sessions,
convostore with its default settings (pool 5 + overflow 10, fast path on) against a pool of as
many raw driver connections running the true floor's append (``RawStore.append_one``), on
each backend.

Each caller appends to a session drawn at random, again and again, for a few seconds; the
variants alternate over the rounds. Figures: exchanges per second (median of the rounds) and
every call's latency (p50, p99, max, pooled over the rounds), and failed calls. Targets (issue
15's): no call fails and none waits more than 1 s at any concurrency; at 50 callers,
convostore's throughput at least the raw pool's, where convostore has a fast path (on MariaDB,
SQLAlchemy's execution, that ratio is shown)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from ..backends import Server
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..raw import RawPool
from ..results import Figure, Row
from ..workload import EXCHANGE, session_ids
from ._util import NO_FAST_PATH, add_turn, fast_path, now_utc, timed, warm_cache

__all__ = ["run"]

CALLERS = (1, 10, 50, 200)
SESSIONS = 1_000
POOL = 15
"""Connections: convostore's default pool size plus overflow, and the raw pool's size."""
MAX_WAIT = 1.0
THROUGHPUT_AT = 50

Append = Callable[[str], Awaitable[object]]


class _Series:
    """One variant's rounds at one concurrency."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.latencies: list[float] = []
        self.failures = 0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def describe(self) -> str:
        return (
            f"p50 {self.quantile(0.5) * 1e3:.2f} ms, p99 {self.quantile(0.99) * 1e3:.1f} ms, "
            f"max {max(self.latencies) * 1e3:.0f} ms, {self.failures} failed"
        )


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _sweep(ctx, server)
    return rows


async def _sweep(ctx: Context, server: Server) -> list[Row]:
    sizes = ctx.sizes
    db = await server.database("callers")
    conv_sids = session_ids("callers-conv", SESSIONS)
    raw_sids = session_ids("callers-raw", SESSIONS)
    await load_histories(db, conv_sids + raw_sids, 10, now=now_utc(), ttl=TTL)
    repo = ctx.repository(db.url, max_sessions=10_000)
    raw = await RawPool.open(db, POOL, TTL)
    results: dict[int, dict[str, _Series]] = {}
    try:
        async with repo:
            await warm_cache(repo, conv_sids, 10)
            variants: dict[str, tuple[Append, list[str]]] = {
                "convostore": (lambda sid: add_turn(repo, sid), conv_sids),
                "raw": (lambda sid: raw.append(sid, EXCHANGE), raw_sids),
            }
            for append, sids in variants.values():  # warm-up: open every pooled connection
                await _burst(append, sids, POOL * 2, sizes.sweep_seconds / 4, _Series())

            async def measure() -> None:
                for callers in CALLERS:
                    series = results[callers] = {name: _Series() for name in variants}
                    for index in range(sizes.sweep_rounds):
                        order = list(variants) if index % 2 == 0 else list(reversed(variants))
                        for name in order:
                            append, sids = variants[name]
                            await _burst(append, sids, callers, sizes.sweep_seconds, series[name])

            await timed(f"callers {', '.join(map(str, CALLERS))} ({server.label})", measure())
    finally:
        await raw.close()
        await server.drop(db)
    return [_row(server, callers, series) for callers, series in results.items()]


def _row(server: Server, callers: int, series: dict[str, _Series]) -> Row:
    conv, raw = series["convostore"], series["raw"]
    conv_rate, raw_rate = statistics.median(conv.rates), statistics.median(raw.rates)
    ratio = conv_rate / raw_rate
    bounded = conv.failures == 0 and max(conv.latencies) <= MAX_WAIT
    target = f"0 failed, max ≤ {MAX_WAIT:g} s"
    met = bounded
    note = ""
    if callers == THROUGHPUT_AT and fast_path(server):
        target += ", ≥ 1× raw exchanges/s"
        met = bounded and ratio >= 1.0
    elif callers == THROUGHPUT_AT:
        note = f"the raw pool's exchanges/s not a target: {NO_FAST_PATH}; "
    return Row(
        key=f"callers.{server.name}.{callers}",
        path=f"add_turn, {callers} concurrent callers, 1,000 sessions, default pool",
        backend=server.label,
        convostore=Figure("convostore", conv_rate, None, len(conv.rates), "rate"),
        raw=Figure(f"raw pool of {POOL}, true floor", raw_rate, None, len(raw.rates), "rate"),
        ratio=ratio,
        ratio_of="convostore / raw exchanges/s",
        target=target,
        met=met,
        note=f"{note}exchanges/s, median of {len(conv.rates)} rounds; convostore "
        f"{conv.describe()}; raw {raw.describe()}",
    )


async def _burst(
    append: Append, sids: list[str], callers: int, seconds: float, series: _Series
) -> None:
    """``callers`` tasks append to random sessions for ``seconds``."""
    rng = random.Random(callers)
    end = time.perf_counter() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                await append(rng.choice(sids))
                done += 1
            except Exception:
                series.failures += 1
            series.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    series.rates.append(done / (time.perf_counter() - start))
