"""What ``StoreConfig.encryption_keys`` costs: ``add_turn`` (10 stored turns, cached) and a
cold ``get`` of a session of ``cold_turns`` turns, each with a key against without, in one
interleaved run per backend.

The encrypted sessions' histories are loaded as plaintext and then encrypted in place by
``rekey`` (as an operator turning encryption on would); the plain sessions are loaded after
it, so they stay plaintext. Both repositories read and write the same tables, so the ratio
is the cost of sealing (append: two turns' content, resolved question and results) and
opening (cold load: every turn's) alone. No target: the figures inform
docs/encryption.md's Costs.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet

from convostore._ops.rekey import rekey

from ..backends import Server
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import session_ids
from ._util import add_turn, cycling, fmt_count, now_utc, timed, warm_cache

__all__ = ["run"]

APPEND_HISTORY = 10


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _run_backend(ctx, server)
    return rows


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    sizes = ctx.sizes
    db = await server.database("encryption")
    key = Fernet.generate_key().decode()
    turns = sizes.cold_turns
    count = max(20, sizes.append_sessions)
    sealed_append, plain_append = (session_ids(f"{n}a", sizes.append_sessions) for n in "sp")
    sealed_cold, plain_cold = (session_ids(f"{n}c", count) for n in "sp")
    await load_histories(db, sealed_append, APPEND_HISTORY, now=now_utc(), ttl=TTL)
    await load_histories(db, sealed_cold, turns, now=now_utc(), ttl=TTL)
    await timed(f"rekey ({server.label})", rekey(db.url, [key], batch_size=5_000))
    await load_histories(db, plain_append, APPEND_HISTORY, now=now_utc(), ttl=TTL)
    await load_histories(db, plain_cold, turns, now=now_utc(), ttl=TTL)
    writer, sealed_writer = ctx.repository(db.url), ctx.repository(db.url, encryption_keys=[key])
    reader = ctx.repository(db.url, max_sessions=1)
    sealed_reader = ctx.repository(db.url, max_sessions=1, encryption_keys=[key])
    try:
        async with writer, sealed_writer, reader, sealed_reader:
            await warm_cache(writer, plain_append, APPEND_HISTORY)
            await warm_cache(sealed_writer, sealed_append, APPEND_HISTORY)
            appends: dict[str, Op] = {
                "plain": cycling(plain_append, lambda sid: add_turn(writer, sid)),
                "sealed": cycling(sealed_append, lambda sid: add_turn(sealed_writer, sid)),
            }
            append_stats = await timed(
                f"add_turn with and without a key ({server.label})",
                interleave(
                    appends, sizes.append_iterations, warmup=sizes.warmup, rounds=sizes.rounds
                ),
            )
            loads: dict[str, Op] = {
                "plain": cycling(plain_cold, _read(reader, turns)),
                "sealed": cycling(sealed_cold, _read(sealed_reader, turns)),
            }
            load_stats = await timed(
                f"cold get with and without a key ({server.label})",
                interleave(loads, sizes.cold_iterations, warmup=sizes.warmup, rounds=sizes.rounds),
            )
    finally:
        await server.drop(db)
    return [
        _row(
            server, "encryption_append", f"add_turn ({APPEND_HISTORY} stored turns)", append_stats
        ),
        _row(
            server, "encryption_cold", f"cold get of a {fmt_count(turns)}-turn session", load_stats
        ),
    ]


def _row(server: Server, key: str, what: str, stats: dict[str, Stats]) -> Row:
    sealed, plain = stats["sealed"], stats["plain"]
    return Row(
        key=f"{key}.{server.name}",
        path=f"{what}, encryption_keys set vs not",
        backend=server.label,
        convostore=figure("with a key (Fernet)", sealed),
        raw=figure("without keys", plain),
        ratio=sealed.median / plain.median,
        ratio_of="with / without",
        note="no target: what encryption at rest costs",
    )


def _read(repo: Any, turns: int) -> Any:
    async def read(sid: str) -> None:
        state = await repo.get(sid)
        if state is None or len(state.turns) != turns:
            raise RuntimeError(f"session {sid}: expected {turns} turns")

    return read
