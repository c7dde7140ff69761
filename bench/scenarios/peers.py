"""Row 9 (``--peers``): peer stores against convostore and the raw driver's true floor
(one statement, or one SQLite thread hop): appending one exchange to a session of 1,000
stored turns, and loading a 100-turn session (cold; sessions in random order). A row per peer
and operation, and one "faster than every peer" row per operation."""

from __future__ import annotations

import random
from typing import Any

from ..backends import Server
from ..context import Context
from ..loader import load_histories
from ..options import TTL
from ..peers import Peer, open_peers
from ..raw import open_raw
from ..results import Figure, Row, figure
from ..timing import Op, Stats, interleave
from ..workload import EXCHANGE, session_ids
from ._util import add_turn, cycling, now_utc, timed, warm_cache

__all__ = ["run"]

APPEND_TURNS = 1_000
LOAD_TURNS = 100


async def run(ctx: Context) -> list[Row]:
    if not ctx.options.peers:
        return []
    rows: list[Row] = []
    for server in ctx.servers.values():
        if server.name == "mariadb":
            ctx.note("peers: none on MariaDB (no peer store listed for it), so no rows there")
            continue
        rows += await _run_backend(ctx, server)
    return rows


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    sizes = ctx.sizes
    db = await server.database("peers")
    n = max(2, sizes.append_sessions // 4)
    conv_append, raw_append = session_ids("p-conv", n), session_ids("p-raw", n)
    loads = session_ids("p-load", 2 * n)
    await load_histories(db, conv_append + raw_append, APPEND_TURNS, now=now_utc(), ttl=TTL)
    await load_histories(db, loads, LOAD_TURNS, now=now_utc(), ttl=TTL)
    peers, notes = await open_peers(db)
    for note in notes:
        ctx.note(note)
    repo = ctx.repository(db.url)
    cold_repo = ctx.repository(db.url, max_sessions=1)
    raw = await open_raw(db, TTL)
    try:
        async with repo, cold_repo:
            await warm_cache(repo, conv_append, APPEND_TURNS)
            append_ops: dict[str, Op] = {
                "convostore": cycling(conv_append, lambda sid: add_turn(repo, sid)),
                "raw": cycling(raw_append, lambda sid: raw.append_one(sid, EXCHANGE)),
            }
            order = _random_order(loads, sizes.peer_iterations + sizes.warmup)
            load_ops: dict[str, Op] = {
                "convostore": cycling(order, cold_repo.get),
                "raw": cycling(order, raw.load_one),
            }
            for peer in peers:
                appends = [peer.session_id(f"peer-append-{i}") for i in range(n)]
                peer_loads = [peer.session_id(f"peer-load-{i}") for i in range(2 * n)]
                for sid in appends:
                    await peer.prefill(sid, APPEND_TURNS)
                for sid in peer_loads:
                    await peer.prefill(sid, LOAD_TURNS)
                if await peer.load(peer_loads[0]) != LOAD_TURNS:
                    raise RuntimeError(f"{peer.label}: prefill did not store {LOAD_TURNS} messages")
                append_ops[peer.label] = cycling(appends, _peer_append(peer))
                peer_order = _random_order(peer_loads, sizes.peer_iterations + sizes.warmup)
                load_ops[peer.label] = cycling(peer_order, peer.load)
            appended = await timed(
                f"peers: append at {APPEND_TURNS:,} turns ({server.label})",
                interleave(
                    append_ops, sizes.peer_iterations, warmup=sizes.warmup, rounds=sizes.rounds
                ),
            )
            loaded = await timed(
                f"peers: load {LOAD_TURNS} turns ({server.label})",
                interleave(
                    load_ops, sizes.peer_iterations, warmup=sizes.warmup, rounds=sizes.rounds
                ),
            )
    finally:
        await raw.close()
        for peer in peers:
            await peer.close()
        await server.drop(db)
    labels = [peer.label for peer in peers]
    rows: list[Row] = []
    for op, path, stats in (
        ("append", f"append one exchange at {APPEND_TURNS:,} stored turns", appended),
        ("load", f"load a {LOAD_TURNS}-turn session (cold, random order)", loaded),
    ):
        rows += [_peer_row(server, op, path, stats, label) for label in labels]
        rows.append(_row(server, op, path, stats, labels))
    return rows


def _random_order(sids: list[str], count: int) -> list[str]:
    """``count`` session ids drawn at random (a fixed seed: the same order every run)."""
    return random.Random(len(sids)).choices(sids, k=count)


def _peer_append(peer: Peer) -> Any:
    async def append(sid: str) -> None:
        await peer.append(sid, EXCHANGE)

    return append


def _raw_label(server: Server) -> str:
    if server.name == "postgresql":
        return "raw asyncpg, one statement"
    return "raw sqlite3, one hop"


def _peer_row(server: Server, op: str, path: str, stats: dict[str, Stats], label: str) -> Row:
    conv, peer = stats["convostore"], stats[label]
    return Row(
        key=f"peers.{op}.{label}.{server.name}",
        path=f"peer {label}: {path}",
        backend=server.label,
        convostore=figure("convostore", conv),
        raw=figure(_raw_label(server), stats["raw"]),
        others=[figure(label, peer)],
        ratio=peer.median / conv.median,
        ratio_of=f"{label} / convostore",
    )


def _row(server: Server, op: str, path: str, stats: dict[str, Stats], labels: list[str]) -> Row:
    conv, raw = stats["convostore"], stats["raw"]
    others: list[Figure] = [figure(label, stats[label]) for label in labels]
    row = Row(
        key=f"peers.{op}.{server.name}",
        path=f"peers: {path}",
        backend=server.label,
        convostore=figure("convostore", conv),
        raw=figure(_raw_label(server), raw),
        others=others,
        target="faster than every peer",
        note="; ".join(f"{f.label} {f.median / raw.median:.1f}× raw" for f in others)
        + f"; convostore {conv.median / raw.median:.2f}× raw",
    )
    if others:
        fastest = min(f.median for f in others)
        row.ratio, row.ratio_of = fastest / conv.median, "fastest peer / convostore"
        row.met = row.ratio > 1.0
    return row
