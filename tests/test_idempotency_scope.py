"""The idempotency key's scope, as the code has it and as every document states it: unique per
conversation (the partial unique index on ``turns (session_id, conversation_id,
idempotency_key)``), so a key is remembered while its conversation lives under the session id,
and a later conversation under the same id starts without keys."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import MakeRepo, Sql

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "convostore").rglob("*.py")),
]
"""Everything that describes the current code (migration scripts describe their revision)."""
SCOPE = re.compile(
    r"(?:unique|same key)\s+(?:per|on the same|in the same|within the)\s+(session|conversation)"
)


async def test_a_key_is_remembered_per_conversation(make_repo: MakeRepo, sql: Sql) -> None:
    """In one conversation a repeated key stores nothing; after the session ended, the same
    key stores the exchange in the new conversation under the same session id, once."""
    repo = await make_repo()
    await repo.add_turn("scoped", "Archieven in Utrecht?", "Twaalf.", idempotency_key="req-1")
    again = await repo.add_turn(
        "scoped", "Archieven in Utrecht?", "Twaalf.", idempotency_key="req-1"
    )
    assert len(again.turns) == 2
    assert await repo.delete("scoped")

    fresh = await repo.add_turn(
        "scoped", "Archieven in Utrecht?", "Twaalf.", idempotency_key="req-1"
    )
    assert len(fresh.turns) == 2
    retried = await repo.add_turn(
        "scoped", "Archieven in Utrecht?", "Twaalf.", idempotency_key="req-1"
    )
    assert len(retried.turns) == 2
    rows = await sql(
        "SELECT conversation_id, COUNT(*) FROM turns WHERE idempotency_key = 'req-1' "
        "GROUP BY conversation_id"
    )
    assert [count for _, count in rows] == [1, 1]


def test_every_document_gives_the_same_scope() -> None:
    """The README, docs and docstrings state the key's scope as the code has it: per
    conversation (the README said "unique per session" in one place and "per conversation"
    in another)."""
    stated = {
        (path.name, match[0]): match[1]
        for path in DOCUMENTS
        for match in SCOPE.finditer(" ".join(path.read_text(encoding="utf-8").split()))
    }
    assert len(stated) >= 4, stated
    assert set(stated.values()) == {"conversation"}, stated
