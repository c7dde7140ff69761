"""What ``StoreConfig.max_turns_per_session`` costs an append: ``add_turn`` on sessions held
at the cap (every append takes the oldest exchange out, into the transcript) against
``add_turn`` without a cap on sessions of the same length, in one interleaved run per
backend.

A capped append is one SQLAlchemy transaction (allocate, insert, then the cap's reads and
moves: ``_core/history.HistoryEdits.cap``), not the fast path's single statement or thread
hop, so the ratio is the price of the cap as built. No target: the figure informs the
setting's documentation.
"""

from __future__ import annotations

from ..backends import Server
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..results import Row, figure
from ..timing import Op, interleave
from ..workload import session_ids
from ._util import add_turn, cycling, now_utc, timed, warm_cache

__all__ = ["run"]

CAP = 20
"""Turns a capped session keeps; the sessions start at it, so every append trims."""


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows.append(await _run_backend(ctx, server))
    return rows


async def _run_backend(ctx: Context, server: Server) -> Row:
    sizes = ctx.sizes
    db = await server.database("caps")
    capped_sids, plain_sids = (session_ids(f"{n}cap", sizes.append_sessions) for n in "cp")
    await load_histories(db, capped_sids + plain_sids, CAP, now=now_utc(), ttl=TTL)
    plain, capped = ctx.repository(db.url), ctx.repository(db.url, max_turns_per_session=CAP)
    try:
        async with plain, capped:
            await warm_cache(plain, plain_sids, CAP)
            await warm_cache(capped, capped_sids, CAP)
            ops: dict[str, Op] = {
                "plain": cycling(plain_sids, lambda sid: add_turn(plain, sid)),
                "capped": cycling(capped_sids, lambda sid: add_turn(capped, sid)),
            }
            stats = await timed(
                f"add_turn with and without a cap ({server.label})",
                interleave(ops, sizes.append_iterations, warmup=sizes.warmup, rounds=sizes.rounds),
            )
    finally:
        await server.drop(db)
    with_cap, without = stats["capped"], stats["plain"]
    return Row(
        key=f"caps_append.{server.name}",
        path=f"add_turn at the cap ({CAP} turns kept) vs no cap",
        backend=server.label,
        convostore=figure(f"max_turns_per_session={CAP}", with_cap),
        raw=figure("no cap", without),
        ratio=with_cap.median / without.median,
        ratio_of="capped / uncapped",
        note="no target: a capped append is a SQLAlchemy transaction that also moves an exchange",
    )
