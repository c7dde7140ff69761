"""The OpenAI Agents SDK's session operations through convostore's adapter
(``ConvostoreSession``) against the SDK's own SQL stores: ``SQLiteSession`` on SQLite,
``SQLAlchemySession`` (asyncpg) on PostgreSQL, in the same database, timed interleaved.

What a run of an agent does to its session: ``add_items`` of one tool-using turn (a user
message, a function call, its output and the assistant's message) at 10 and 1,000 stored
items; ``get_items()`` at 10 and 1,000; ``get_items(limit=10)`` at 10, 1,000 and 10,000;
and ``get_items()`` of a 100-item conversation read cold (convostore through a repository
that caches one session, cycling over many in random order; the SDK's stores cache
nothing, so each of their reads is one). convostore's warm reads are cache hits, as for a
worker that served the conversation's last turn. The appends go round the sessions of
their level (as many at 10 items as at 1,000, so each store keeps as many session objects
at both), each growing by a few runs' items over the run; the path says how many. The SDK's
``SQLiteSession`` opens a connection per session object in each worker thread: those are
opened before timing. A row per operation: the SDK's store's median / convostore's (above
1: convostore is faster), and one row on whether ``get_items(limit=10)`` stays flat from 10
to 10,000 items.

Runs with ``--peers`` or ``--only openai_agents``; needs ``pip install
'openai-agents[sqlalchemy]'`` (the ``peers`` extra), and is skipped with a note without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from ..backends import Server
from ..context import Context
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import EXCHANGE, session_ids
from ._util import cycling, fmt_count, timed

__all__ = ["run"]

APPEND_LEVELS = (10, 1_000)
READ_LEVELS = (10, 1_000)
WINDOW = 10
WINDOW_LEVELS = (10, 1_000, 10_000)
COLD_ITEMS = 100
ITEMS_PER_RUN = 4
CHUNK = 1_000
"""Items per ``add_items`` call when filling a long conversation."""
FLAT_TARGET = 1.2
WARM_READS = 2 * min(32, (os.cpu_count() or 1) + 4)
"""Concurrent reads that reach every thread of asyncio's default executor (its size is
``min(32, cpus + 4)``)."""
PEERS = {"sqlite": "SDK SQLiteSession", "postgresql": "SDK SQLAlchemySession (asyncpg)"}

Open = Callable[[str], Any]
"""A session of one store for a session id (an object with the SDK's session methods)."""


def turn_items(index: int) -> list[dict[str, Any]]:
    """The four items one tool-using run of an agent stores, as the SDK's runner makes them
    (the benchmark's question and answer texts, its results as the tool's output)."""
    call_id = f"call_{index}"
    return [
        {"content": EXCHANGE.question, "role": "user"},
        {
            "arguments": json.dumps(EXCHANGE.slots),
            "call_id": call_id,
            "name": "count_archives",
            "type": "function_call",
            "id": f"fc_{index}",
            "status": "completed",
        },
        {
            "call_id": call_id,
            "output": json.dumps(EXCHANGE.results),
            "type": "function_call_output",
        },
        {
            "id": f"msg_{index}",
            "content": [
                {"annotations": [], "text": EXCHANGE.answer, "type": "output_text", "logprobs": []}
            ],
            "role": "assistant",
            "status": "completed",
            "type": "message",
        },
    ]


def history(count: int) -> list[dict[str, Any]]:
    """``count`` items of consecutive runs."""
    items: list[dict[str, Any]] = []
    index = 0
    while len(items) < count:
        items += turn_items(index)
        index += 1
    return items[:count]


async def run(ctx: Context) -> list[Row]:
    if not (ctx.options.peers or "openai_agents" in ctx.options.only):
        return []
    try:
        from agents import SQLiteSession  # noqa: F401 -- only whether it is installed
        from agents.extensions.memory import SQLAlchemySession  # noqa: F401
    except ImportError as exc:
        ctx.note(
            f"openai_agents: skipped ({exc}); install it with "
            "`pip install 'openai-agents[sqlalchemy]'`"
        )
        return []
    rows: list[Row] = []
    for server in ctx.servers.values():
        if server.name not in PEERS:
            ctx.note(f"openai_agents: no SDK store to compare with on {server.label}")
            continue
        rows += await _run_backend(ctx, server)
    return rows


class _Sessions:
    """One session object per id, opened on first use and kept, as an application keeps
    them."""

    def __init__(self, open_session: Open) -> None:
        self._open = open_session
        self._sessions: dict[str, Any] = {}

    def __call__(self, sid: str) -> Any:
        session = self._sessions.get(sid)
        if session is None:
            session = self._sessions[sid] = self._open(sid)
        return session

    def all(self) -> list[Any]:
        return list(self._sessions.values())


async def _fill(sessions: _Sessions, sids: list[str], count: int) -> None:
    items = history(count)
    for sid in sids:
        for start in range(0, count, CHUNK):
            await sessions(sid).add_items(items[start : start + CHUNK])


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    from agents import SQLiteSession
    from agents.extensions.memory import SQLAlchemySession

    from convostore.integrations.openai_agents import ConvostoreSession

    sizes = ctx.sizes
    iterations, warmup, rounds = sizes.peer_iterations, sizes.warmup, sizes.rounds
    db = await server.database("openai_agents")
    repo = ctx.repository(db.url)
    cold_repo = ctx.repository(db.url, max_sessions=1)
    engine = create_async_engine(db.url) if server.name == "postgresql" else None

    def open_peer(sid: str) -> Any:
        if engine is not None:
            return SQLAlchemySession(sid, engine=engine, create_tables=True)
        return SQLiteSession(sid, db.target, "agent_sqlite_sessions", "agent_sqlite_messages")

    ours = _Sessions(lambda sid: ConvostoreSession(sid, repo))
    cold = _Sessions(lambda sid: ConvostoreSession(sid, cold_repo))
    peer = _Sessions(open_peer)
    label = PEERS[server.name]
    appended = max(2, sizes.append_sessions)
    grown = ITEMS_PER_RUN * math.ceil((iterations + min(warmup, iterations)) / appended)
    groups = {
        ("append", 10): session_ids("oa-append-10", appended),
        ("append", 1_000): session_ids("oa-append-1000", appended),
        ("read", 10): session_ids("oa-read-10", max(2, sizes.append_sessions)),
        ("read", 1_000): session_ids("oa-read-1000", max(2, sizes.append_sessions)),
        ("read", 10_000): session_ids("oa-read-10000", 1 if ctx.options.quick else 2),
        ("cold", COLD_ITEMS): session_ids("oa-cold", 2 * max(2, sizes.append_sessions)),
    }
    measured: dict[str, dict[str, Stats]] = {}
    try:
        async with repo, cold_repo:
            for (_, count), sids in groups.items():
                for sessions in (ours, peer):
                    await _fill(sessions, sids, count)
            for (_, count), sids in groups.items():  # an agent reads before it appends
                for sid in sids:
                    if len(await ours(sid).get_items()) != count:
                        raise RuntimeError(f"{sid}: expected {count} stored items")
                    await _warm(peer(sid), count, label)
            plans: dict[str, dict[str, Op]] = {}
            for count in APPEND_LEVELS:
                sids = groups["append", count]
                plans[f"append.{count}"] = {
                    "convostore": cycling(sids, _append(ours)),
                    label: cycling(sids, _append(peer)),
                }
            for count in READ_LEVELS:
                sids = groups["read", count]
                plans[f"get.{count}"] = {
                    "convostore": cycling(sids, _get(ours, None, count)),
                    label: cycling(sids, _get(peer, None, count)),
                }
            for count in WINDOW_LEVELS:
                sids = groups["read", count]
                plans[f"window.{count}"] = {
                    "convostore": cycling(sids, _get(ours, WINDOW, WINDOW)),
                    label: cycling(sids, _get(peer, WINDOW, WINDOW)),
                }
            order = random.Random(7).choices(groups["cold", COLD_ITEMS], k=iterations + warmup)
            plans["cold.100"] = {
                "convostore": cycling(order, _get(cold, None, COLD_ITEMS)),
                label: cycling(order, _get(peer, None, COLD_ITEMS)),
            }
            for key, ops in plans.items():
                measured[key] = await timed(
                    f"openai_agents: {key} ({server.label})",
                    interleave(ops, iterations, warmup=warmup, rounds=rounds),
                )
    finally:
        for session in peer.all():
            if isinstance(session, SQLiteSession):
                session.close()
        if engine is not None:
            await engine.dispose()
        await server.drop(db)
    return _rows(server, label, measured, grown)


async def _warm(session: Any, count: int, label: str) -> None:
    """Read ``session`` from every worker thread at once: ``SQLiteSession`` opens a
    connection per session object in each thread that first uses it, and that opening
    belongs to no operation timed here (it would make the SDK's figures worse)."""
    read = await asyncio.gather(*(session.get_items() for _ in range(WARM_READS)))
    if any(len(items) != count for items in read):
        raise RuntimeError(f"{label} {session.session_id}: expected {count} stored items")


def _append(sessions: _Sessions) -> Callable[[str], Awaitable[None]]:
    counter = iter(range(10**9))

    async def append(sid: str) -> None:
        await sessions(sid).add_items(turn_items(next(counter)))

    return append


def _get(sessions: _Sessions, limit: int | None, expected: int) -> Callable[[str], Awaitable[None]]:
    async def get(sid: str) -> None:
        session = sessions(sid)
        items = await (session.get_items() if limit is None else session.get_items(limit=limit))
        if len(items) != expected:
            raise RuntimeError(f"{sid}: read {len(items)} items, expected {expected}")

    return get


PATHS = {
    "append": "add_items of a tool-using run (4 items) at {} stored items",
    "get": "get_items() of {} items (convostore: cached)",
    "window": f"get_items(limit={WINDOW}) of {{}} items (convostore: cached)",
    "cold": "get_items() of {} items, cold (convostore: not cached)",
}


def _rows(
    server: Server, label: str, measured: dict[str, dict[str, Stats]], grown: int
) -> list[Row]:
    rows: list[Row] = []
    for key, stats in measured.items():
        op, count = key.split(".")
        conv, peer = stats["convostore"], stats[label]
        ratio = peer.median / conv.median
        path = PATHS[op].format(fmt_count(int(count)))
        if op == "append":
            path += f" (+{grown} by the session's last append)"
        rows.append(
            Row(
                key=f"openai_agents.{key}.{server.name}",
                path=f"OpenAI Agents: {path}",
                backend=server.label,
                convostore=figure("convostore (ConvostoreSession)", conv),
                others=[figure(label, peer)],
                ratio=ratio,
                ratio_of=f"{label} / convostore",
                target="faster than the SDK's store",
                met=ratio > 1.0,
            )
        )
    low, high = measured[f"window.{WINDOW_LEVELS[0]}"], measured[f"window.{WINDOW_LEVELS[-1]}"]
    ratio = high["convostore"].median / low["convostore"].median
    rows.append(
        Row(
            key=f"openai_agents.window_flat.{server.name}",
            path=f"OpenAI Agents: get_items(limit={WINDOW}) at {fmt_count(WINDOW_LEVELS[-1])} "
            f"items vs at {fmt_count(WINDOW_LEVELS[0])}",
            backend=server.label,
            convostore=figure(f"at {fmt_count(WINDOW_LEVELS[-1])}", high["convostore"]),
            raw=figure(f"at {fmt_count(WINDOW_LEVELS[0])}", low["convostore"]),
            others=[
                figure(f"{label} at {fmt_count(WINDOW_LEVELS[-1])}", high[label]),
                figure(f"{label} at {fmt_count(WINDOW_LEVELS[0])}", low[label]),
            ],
            ratio=ratio,
            ratio_of=f"at {fmt_count(WINDOW_LEVELS[-1])} / at {fmt_count(WINDOW_LEVELS[0])}",
            target=f"≤ {FLAT_TARGET}×",
            met=ratio <= FLAT_TARGET,
        )
    )
    return rows
