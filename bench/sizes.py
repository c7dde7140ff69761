"""``python -m bench sizes``: how much PostgreSQL disk a conversation takes.

Fills a database of its own through the API (``add_turn``, so the rows are what a service
writes) with sessions of five exchanges (ten turns) of typical RAG content, vacuums it, and
reads ``pg_total_relation_size`` (table, its indexes and TOAST) of each table. docs/scaling.md
quotes the result.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import asyncpg

from convostore import SessionRepository, StoreConfig

from .backends import PostgresServer, open_server

__all__ = ["EXCHANGES", "Sizes", "fill", "main", "measure"]

EXCHANGES = 5
"""Exchanges per session: ten turns."""
TABLES = ("sessions", "conversations", "turns", "turn_slots", "turn_feedback")

_PLACES = ("Utrecht", "Enschede", "Zwolle", "Leiden", "Groningen")


@dataclass(frozen=True)
class Sizes:
    """Bytes per table (``pg_total_relation_size``, and of that the indexes), and the rows."""

    sessions: int
    turns: int
    total: dict[str, int]
    indexes: dict[str, int]

    def per_session(self) -> float:
        """Bytes of every table per live session (its ten turns included)."""
        return sum(self.total.values()) / self.sessions

    def per_turn(self) -> float:
        """Bytes of ``turns`` and ``turn_slots`` per turn."""
        return (self.total["turns"] + self.total["turn_slots"]) / self.turns

    def per_conversation_header(self) -> float:
        """Bytes of ``sessions`` and ``conversations`` per session, turns left out."""
        return (self.total["sessions"] + self.total["conversations"]) / self.sessions

    def table(self) -> str:
        """The sizes as a Markdown table."""
        lines = [
            "| table | rows | total bytes | of which indexes | bytes per row |",
            "|---|---|---|---|---|",
        ]
        rows = {"sessions": self.sessions, "conversations": self.sessions, "turns": self.turns}
        rows["turn_slots"] = self.sessions * EXCHANGES  # one slot per question
        rows["turn_feedback"] = self.sessions  # one rated answer per session
        for name in TABLES:
            lines.append(
                f"| {name} | {rows[name]:,} | {self.total[name]:,} | {self.indexes[name]:,} "
                f"| {self.total[name] / rows[name]:,.0f} |"
            )
        return "\n".join(lines)


async def fill(url: str, sessions: int, concurrency: int = 16) -> None:
    """``sessions`` sessions of ``EXCHANGES`` exchanges each, written through the API; the
    user rates the first answer of each (a thumbs up, without a comment)."""
    config = StoreConfig(database_url=url, cleanup_interval=0, max_sessions=1_000)
    async with SessionRepository(config) as repo:
        queue = iter(range(sessions))

        async def worker() -> None:
            for n in queue:
                sid = repo.generate_session_id()
                for turn in range(EXCHANGES):
                    place = _PLACES[(n + turn) % len(_PLACES)]
                    await repo.add_turn(
                        sid,
                        f"En welke archieven zijn er in {place}, met openingstijden?",
                        f"In {place} zijn er drie archieven: het gemeentearchief, het "
                        "regionaal historisch centrum en het waterschapsarchief. Ze zijn op "
                        "werkdagen open van 9 tot 17 uur; de studiezaal vraagt een afspraak.",
                        resolved_question=f"Welke archieven zijn er in {place}?",
                        template_id="archives_in_place",
                        slots={"place": place},
                        results=[
                            {"name": f"Gemeentearchief {place}", "score": 0.91},
                            {"name": f"Historisch centrum {place}", "score": 0.84},
                            {"name": f"Waterschapsarchief {place}", "score": 0.77},
                        ],
                        user_id=f"user-{n % 997}",
                    )
                await repo.add_feedback(sid, 2, 1, user_id=f"user-{n % 997}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(dsn: str, sessions: int, turns: int, *, full: bool = False) -> Sizes:
    """Vacuum the database at ``dsn`` and read every table's size. A plain ``VACUUM`` leaves
    the space of the rows that appends updated away in the tables, for reuse, as autovacuum
    would on a live store; ``full`` compacts them (``VACUUM FULL``), the floor."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM FULL ANALYZE" if full else "VACUUM ANALYZE")
        total, indexes = {}, {}
        for name in TABLES:
            total[name] = int(await conn.fetchval("SELECT pg_total_relation_size($1)", name))
            indexes[name] = int(await conn.fetchval("SELECT pg_indexes_size($1)", name))
        stored = await conn.fetchval("SELECT count(*) FROM turns")
        if stored != turns:
            raise RuntimeError(f"{stored} turns stored, {turns} written")
    finally:
        await conn.close()
    return Sizes(sessions, turns, total, indexes)


async def run(sessions: int) -> tuple[Sizes, Sizes]:
    """A database of its own, filled, measured after ``VACUUM`` and after ``VACUUM FULL``,
    and dropped."""
    server = await open_server("postgresql")
    assert isinstance(server, PostgresServer)
    turns = sessions * EXCHANGES * 2
    try:
        database = await server.database("sizes")
        await fill(database.url, sessions)
        vacuumed = await measure(database.target, sessions, turns)
        return vacuumed, await measure(database.target, sessions, turns, full=True)
    finally:
        await server.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sizes", description=__doc__)
    parser.add_argument("--sessions", type=int, default=20_000, help="sessions to write")
    args = parser.parse_args(argv)
    measured = asyncio.run(run(args.sessions))
    for title, sizes in zip(("VACUUM", "VACUUM FULL"), measured, strict=True):
        print(f"after {title}:\n\n{sizes.table()}\n")
        print(
            f"per turn: {sizes.per_turn():,.0f} B; per session with its ten turns: "
            f"{sizes.per_session():,.0f} B; of which session and conversation rows: "
            f"{sizes.per_conversation_header():,.0f} B\n"
        )
    return 0
