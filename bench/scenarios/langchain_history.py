"""LangChain's own chat-history operations through convostore's adapter
(``ConvostoreChatMessageHistory``) against LangChain's ``SQLChatMessageHistory``
(langchain-community) on an async engine of the same database, interleaved: ``aadd_messages``
of a human and an AI message at 10 and 1,000 stored messages, ``aget_messages`` of 10 and
1,000 messages, and ``aget_messages`` of 100 messages cold (convostore's cache holds one
session; sessions in random order). convostore's sessions are read once before the warm rows,
as ``RunnableWithMessageHistory`` reads a history before it appends to it.

SQLite and PostgreSQL; not MariaDB (the issue asks for those two)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from ..backends import Server
from ..context import Context
from ..results import Row, figure
from ..timing import Op, Stats, interleave
from ..workload import history_exchanges, session_ids
from ._util import cycling, timed

__all__ = ["COLD", "LARGE", "SMALL", "comparison_rows", "run"]

SMALL = 10
LARGE = 1_000
COLD = 100
TABLE = "bench_lc_adapter_messages"


async def run(ctx: Context) -> list[Row]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package announces its own sunset on import
            from langchain_community.chat_message_histories import SQLChatMessageHistory

        from convostore.integrations.langchain import ConvostoreChatMessageHistory
    except ImportError as exc:
        ctx.note(f"langchain: skipped ({exc}); pip install '.[langchain]' langchain-community")
        return []
    rows: list[Row] = []
    for server in ctx.servers.values():
        if server.name == "mariadb":
            ctx.note("langchain: SQLite and PostgreSQL only, so no rows on MariaDB")
            continue
        rows += await _run_backend(ctx, server, SQLChatMessageHistory, ConvostoreChatMessageHistory)
    return rows


def _messages(question: str, answer: str, results: list[dict[str, Any]]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    return [
        HumanMessage(content=question, additional_kwargs={"results": results}),
        AIMessage(content=answer),
    ]


def _history(n_messages: int) -> list[Any]:
    return [m for q, a, r in history_exchanges(n_messages) for m in _messages(q, a, r)]


async def _run_backend(ctx: Context, server: Server, sql_cls: Any, conv_cls: Any) -> list[Row]:
    sizes = ctx.sizes
    calls = sizes.peer_iterations + sizes.warmup
    db = await server.database("langchain")
    engine = create_async_engine(db.url)
    repo = ctx.repository(db.url)
    cold_repo = ctx.repository(db.url, max_sessions=1)
    sets = {
        "append-small": (session_ids("lc-as", calls), SMALL),
        "append-large": (session_ids("lc-al", max(2, sizes.append_sessions // 4)), LARGE),
        "get-small": (session_ids("lc-gs", 4), SMALL),
        "get-large": (session_ids("lc-gl", 2), LARGE),
        "cold": (session_ids("lc-c", max(4, sizes.append_sessions)), COLD),
    }
    try:
        async with repo, cold_repo:
            conv: dict[str, Any] = {}
            cold: dict[str, Any] = {}
            peer: dict[str, Any] = {}

            def histories(cls: Callable[[str], Any], into: dict[str, Any]) -> None:
                for sids, _ in sets.values():
                    into.update((sid, cls(sid)) for sid in sids)

            histories(lambda sid: conv_cls(sid, repo), conv)
            histories(lambda sid: conv_cls(sid, cold_repo), cold)
            histories(
                lambda sid: sql_cls(session_id=sid, connection=engine, table_name=TABLE), peer
            )

            async def prefill() -> None:
                for sids, size in sets.values():
                    messages = _history(size)
                    for sid in sids:
                        await conv[sid].aadd_messages(messages)
                        await peer[sid].aadd_messages(messages)
                        await conv[sid].aget_messages()  # cached, as a chain reads before it adds

            await timed(f"langchain: prefill ({server.label})", prefill())
            pair = _messages("En in Enschede?", "Er zijn 3 archieven in Enschede.", [])

            def add(store: dict[str, Any]) -> Callable[[str], Any]:
                return lambda sid: store[sid].aadd_messages(pair)

            def get(store: dict[str, Any]) -> Callable[[str], Any]:
                return lambda sid: store[sid].aget_messages()

            order = random.Random(7).choices(sets["cold"][0], k=calls)
            measured: list[tuple[str, str, dict[str, Stats]]] = []
            for op, path, sids, conv_op, peer_op in (
                ("aadd_messages.10", f"aadd_messages (human + ai) at {SMALL} stored",
                 sets["append-small"][0], add(conv), add(peer)),
                ("aadd_messages.1000", f"aadd_messages (human + ai) at {LARGE:,} stored",
                 sets["append-large"][0], add(conv), add(peer)),
                ("aget_messages.10", f"aget_messages of {SMALL}",
                 sets["get-small"][0], get(conv), get(peer)),
                ("aget_messages.1000", f"aget_messages of {LARGE:,}",
                 sets["get-large"][0], get(conv), get(peer)),
                ("aget_messages.cold100", f"aget_messages of {COLD}, cold (random order)",
                 order, get(cold), get(peer)),
            ):  # fmt: skip
                ops: dict[str, Op] = {
                    "convostore": cycling(sids, conv_op),
                    "peer": cycling(sids, peer_op),
                }
                stats = await timed(
                    f"langchain: {path} ({server.label})",
                    interleave(
                        ops, sizes.peer_iterations, warmup=sizes.warmup, rounds=sizes.rounds
                    ),
                )
                measured.append((op, path, stats))
    finally:
        await engine.dispose()
        await server.drop(db)
    return comparison_rows(
        "langchain", server, measured, {"peer": "LangChain SQLChatMessageHistory"}, "LangChain: "
    )


def comparison_rows(
    prefix: str,
    server: Server,
    measured: list[tuple[str, str, dict[str, Stats]]],
    peers: dict[str, str],
    path_prefix: str,
    shown: dict[str, tuple[str, str]] | None = None,
) -> list[Row]:
    """A row per operation and peer (``peers``: the key of its stats, and its label):
    convostore's adapter against the framework's own store or a baseline, ratio peer /
    convostore (> 1: convostore is faster), target: faster. ``shown``: the same for figures
    shown without a target: label and note (e.g. a bare table on the raw driver)."""
    shown = shown or {}
    labels = {**peers, **{key: label for key, (label, _) in shown.items()}}
    rows = []
    for op, path, stats in measured:
        conv = stats["convostore"]
        for key, label in labels.items():
            ratio = stats[key].median / conv.median
            row = Row(
                key=f"{prefix}.{op}.{key}.{server.name}",
                path=path_prefix + path,
                backend=server.label,
                convostore=figure("convostore adapter", conv),
                others=[figure(label, stats[key])],
                ratio=ratio,
                ratio_of=f"{label} / convostore",
            )
            if key in peers:
                row.target, row.met = "faster", ratio > 1.0
            else:
                row.note = shown[key][1]
            rows.append(row)
    return rows
