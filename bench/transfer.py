"""``python -m bench.transfer``: how fast transcripts export and import, and in how much memory.

Fills a new database with N turns straight through executemany (not the API), then runs each
phase in a fresh process of its own, so its peak RSS is its own: the JSON Lines export, the CSV
export, and the import of that JSON Lines into another new database. Each phase runs twice:
timed, then under tracemalloc for the peak of Python allocations (tracing slows it down).

    python -m bench.transfer --turns 1000000 --url postgresql+asyncpg://postgres@127.0.0.1/test

``--url`` names a PostgreSQL server (databases are created on it and dropped afterwards);
without it the databases are SQLite files in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shlex
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore._core.schema import conversations, sessions, turn_slots, turns
from convostore._ops.transfer import export_conversations, import_conversations

from .backends import Database, PostgresServer, Server, SqliteServer

__all__ = ["fill", "main"]

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)
TEMPLATES = ("archives_in_place", "count_archives", None)
_CHUNK = 10_000
"""Turns inserted per transaction while filling."""


def _conversation_rows(
    number: int, per_conversation: int
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """Conversation ``number``'s rows: every tenth is live (with a session row), the others
    ended; user turns carry a template (two in three conversations), a slot and a result."""
    sid = f"transfer-{number:09d}"
    started = BASE + timedelta(seconds=number)
    live = number % 10 == 0
    language = "en" if number % 5 == 1 else "nl"
    template = TEMPLATES[number % 3]
    key = {"session_id": sid, "conversation_id": number}
    conversation = {
        **key,
        "user_id": f"user-{number % 1000}",
        "started_at": started,
        "ended_at": None if live else started + timedelta(minutes=10),
        "language": None if live else language,
    }
    turn_rows: list[dict[str, Any]] = []
    slot_rows: list[dict[str, Any]] = []
    for seq in range(1, per_conversation + 1):
        place = f"Plaats {number % 500 + seq // 2}"
        user = seq % 2 == 1
        created = started + timedelta(seconds=seq)
        turn_rows.append(
            {
                **key,
                "seq": seq,
                "role": "user" if user else "assistant",
                "content": f"Welke archieven zijn er in {place}?"
                if user
                else f"Er zijn {seq % 17 + 1} archieven in {place}, waaronder het Stadsarchief.",
                "resolved_question": None,
                "template_id": template if user else None,
                "results": [{"name": f"Archief van {place}", "city": place}] if user else [],
                "created_at": created,
                "idempotency_key": f"key-{seq}" if user else None,
            }
        )
        if user:
            slot_rows.append({**key, "seq": seq, "name": "place", "value": place})
    session = (
        {
            **key,
            "user_id": conversation["user_id"],
            "created_at": started,
            "last_accessed": started + timedelta(seconds=per_conversation),
            "expires_at": datetime.now(timezone.utc) + timedelta(days=365),
            "access_count": per_conversation,
            "language": language,
            "current_template_id": template,
            "current_slots": {"place": slot_rows[-1]["value"]} if slot_rows else {},
            "turn_count": per_conversation,
            "version": per_conversation // 2,
        }
        if live
        else None
    )
    return conversation, session, turn_rows, slot_rows


def _chunks(total: int, per_conversation: int, first: int) -> Iterator[range]:
    """Conversation numbers from ``first``, ``_CHUNK`` turns' worth at a time."""
    count = -(-total // per_conversation)
    step = max(1, _CHUNK // per_conversation)
    for start in range(first, first + count, step):
        yield range(start, min(start + step, first + count))


async def fill(url: str, total_turns: int, *, per_conversation: int = 20, first: int = 1) -> int:
    """Insert conversations numbered from ``first`` with ``per_conversation`` turns each, about
    ``total_turns`` turns in all, with executemany; returns how many conversations. On
    PostgreSQL the sequence ``conversation_ids`` is moved past them."""
    engine = create_async_engine(url)
    last = first - 1
    try:
        for numbers in _chunks(total_turns, per_conversation, first):
            rows: dict[str, list[dict[str, Any]]] = {
                "conversations": [],
                "sessions": [],
                "turns": [],
                "turn_slots": [],
            }
            for number in numbers:
                conversation, session, turn_rows, slot_rows = _conversation_rows(
                    number, per_conversation
                )
                rows["conversations"].append(conversation)
                if session is not None:
                    rows["sessions"].append(session)
                rows["turns"] += turn_rows
                rows["turn_slots"] += slot_rows
                last = number
            async with engine.begin() as conn:
                for table in (conversations, sessions, turns, turn_slots):
                    if rows[table.name]:
                        await conn.execute(insert(table), rows[table.name])
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.execute(
                    text("SELECT setval('conversation_ids', GREATEST(:n, 1))"), {"n": last}
                )
    finally:
        await engine.dispose()
    return last - first + 1


def _max_rss() -> int:
    """This process's peak resident set size, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _run(phase: str, url: str, file: TextIO) -> int:
    if phase == "import jsonl":
        counts = await import_conversations(url, file)
        if counts.problems:
            raise RuntimeError(f"import reported problems: {counts.problems[:3]}")
        return counts.turns
    return await export_conversations(url, file, format="csv" if phase == "export csv" else "jsonl")


def _phase(phase: str, url: str, path: str, traced: bool) -> dict[str, float]:
    """Run one phase in this (fresh) process; its time, its result and its memory."""
    before = _max_rss()
    reading = phase.startswith("import")
    with open(
        path, "r" if reading else "w", encoding="utf-8", newline=None if reading else ""
    ) as file:
        if traced:
            tracemalloc.start()
        start = time.perf_counter()
        result = asyncio.run(_run(phase, url, file))
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    return {
        "seconds": seconds,
        "result": result,
        "rss_before": before,
        "rss_peak": _max_rss(),
        "traced": peak,
        "file": os.path.getsize(path),
    }


def _in_process(phase: str, url: str, path: str, traced: bool) -> dict[str, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_phase, phase, url, path, traced).result()


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


async def _measure(server: Server, total: int, per_conversation: int, folder: Path) -> None:
    source = await server.database("transfer_source")
    target: Database | None = None
    try:
        start = time.perf_counter()
        count = await fill(source.url, total, per_conversation=per_conversation)
        seconds = time.perf_counter() - start
        turns_stored = count * per_conversation
        print(
            f"filled {count:,} conversations / {turns_stored:,} turns in {seconds:.1f} s "
            f"({turns_stored / seconds:,.0f} turns/s)",
            flush=True,
        )
        rows: list[tuple[str, ...]] = []
        for phase, suffix in (
            ("export jsonl", "jsonl"),
            ("export csv", "csv"),
            ("import jsonl", ""),
        ):
            path = str(folder / f"transcripts.{suffix or 'jsonl'}")
            runs = []
            for traced in (False, True):
                url = source.url
                if phase.startswith("import"):
                    if target is not None:
                        await server.drop(target)
                    target = await server.database("transfer_target")
                    url = target.url
                runs.append(await asyncio.to_thread(_in_process, phase, url, path, traced))
                print(f"  {phase}{' (tracemalloc)' if traced else ''}: {runs[-1]}", flush=True)
            timed, traced_run = runs
            rows.append(
                (
                    phase,
                    f"{turns_stored:,}",
                    f"{timed['seconds']:.1f}",
                    f"{turns_stored / timed['seconds']:,.0f}",
                    _mib(traced_run["traced"]),
                    f"{_mib(timed['rss_before'])} -> {_mib(timed['rss_peak'])}",
                    _mib(timed["file"]),
                )
            )
        _print_table(rows)
    finally:
        if target is not None:
            await server.drop(target)
        await server.drop(source)
        await server.close()


def _print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("phase", "turns", "seconds", "turns/s", "tracemalloc peak", "max RSS", "file")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print()
    for row in (header, tuple("-" * width for width in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transfer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--turns", type=int, default=100_000, help="turns to fill (default 100000)")
    parser.add_argument(
        "--per-conversation", type=int, default=20, help="turns per conversation (default 20)"
    )
    parser.add_argument(
        "--url", help="a PostgreSQL server to create the databases on (default: SQLite files)"
    )
    args = parser.parse_args(argv)
    if args.turns < 1 or args.per_conversation < 1:
        parser.error("--turns and --per-conversation must be at least 1")
    if args.url and not args.url.startswith("postgresql"):
        parser.error("--url names a PostgreSQL server; leave it out for SQLite")
    print("$ " + shlex.join(["python", "-m", "bench.transfer", *(argv or sys.argv[1:])]))

    async def run() -> None:
        server: Server = await PostgresServer.connect(args.url) if args.url else SqliteServer()
        print(f"{server.label} {server.version}", flush=True)
        with tempfile.TemporaryDirectory(prefix="convostore-transfer-") as folder:
            await _measure(server, args.turns, args.per_conversation, Path(folder))

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
