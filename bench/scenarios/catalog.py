"""Row 11: the catalog, ``list_sessions`` page after page through the conversations of one
user, on every backend.

One user owns ``catalog_conversations`` conversations of one exchange each: half live, half
ended (loaded expired, then ended by ``sweep_expired()``, whose trigger copies their last
activity into the catalog), so every page merges the live sessions' index with the ended
conversations' (``_core/owners._by_activity``). The benchmark follows ``next_cursor`` from the
first page to the last, 20 conversations a page, timing each call, and reads the same pages
once more in ``order="started"``.

The issue's target is absolute: at most 5 ms a page (median) on PostgreSQL and SQLite, and
flat: the last 100 pages' median within 1.5x the first 100 pages'. A keyset page reads at
most 21 rows of each index wherever its cursor is; OFFSET paging would read every row before
the page. MariaDB (SQLAlchemy's execution) is shown with the same target.
"""

from __future__ import annotations

import time

from convostore import SessionRepository

from ..backends import Database, Server
from ..context import Context
from ..loader import load_histories, vacuum_analyze
from ..options import TTL
from ..results import Row, figure
from ..timing import Stats
from ..workload import session_ids
from ._util import fmt_count, now_utc, timed

__all__ = ["run"]

PAGE = 20
PAGE_TARGET = 0.005
FLAT_TARGET = 1.5
EDGE_PAGES = 100
USER = "catalog-user"


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _run_backend(ctx, server)
    return rows


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    count = ctx.sizes.catalog_conversations
    db = await server.database("catalog")
    try:
        live, ended = session_ids("listed", count // 2), session_ids("ended", count - count // 2)
        await timed(
            f"load {fmt_count(count)} conversations of one user ({server.label})",
            _load(ctx, db, live, ended),
        )
        repo = ctx.repository(db.url, max_sessions=1)
        async with repo:
            pages = {
                order: await timed(
                    f"page through them by {order} ({server.label})", _page_through(repo, order)
                )
                for order in ("last_activity", "started")
            }
    finally:
        await server.drop(db)
    return [_row(server, order, seconds, count) for order, seconds in pages.items()]


async def _load(ctx: Context, db: Database, live: list[str], ended: list[str]) -> None:
    """The ended half first (loaded expired, then swept), then the live half."""
    now = now_utc()
    await load_histories(db, ended, 2, now=now, ttl=TTL, expired=True, user=USER)
    async with ctx.repository(db.url) as sweeper:
        await sweeper.sweep_expired()
    await load_histories(db, live, 2, now=now, ttl=TTL, user=USER)
    await vacuum_analyze(db)


async def _page_through(repo: SessionRepository, order: str) -> list[float]:
    """Each page's seconds, first to last."""
    seconds: list[float] = []
    cursor: str | None = None
    clock = time.perf_counter
    while True:
        started = clock()
        page = await repo.list_sessions(USER, limit=PAGE, cursor=cursor, order=order)
        seconds.append(clock() - started)
        cursor = page.next_cursor
        if cursor is None:
            return seconds


def _row(server: Server, order: str, seconds: list[float], count: int) -> Row:
    everything = Stats.of(seconds)
    edge = min(EDGE_PAGES, max(1, len(seconds) // 4))
    first, last = Stats.of(seconds[:edge]), Stats.of(seconds[-edge:])
    flat = last.median / first.median
    met = everything.median <= PAGE_TARGET and flat <= FLAT_TARGET
    return Row(
        key=f"catalog.{order}.{server.name}",
        path=f"list_sessions by {order}: {fmt_count(len(seconds))} pages of {PAGE} "
        f"through {fmt_count(count)} conversations of one user",
        backend=server.label,
        convostore=figure("convostore, every page", everything),
        others=[
            figure(f"first {edge} pages", first),
            figure(f"last {edge} pages", last),
        ],
        ratio=flat,
        ratio_of="last pages / first pages",
        target=f"≤ {PAGE_TARGET * 1e3:.0f} ms a page, ≤ {FLAT_TARGET}× first pages",
        met=met,
    )
