"""Windowed reads: ``get(sid, last_turns=N)`` reads only the newest N turns in SQL, keeps the
session fields whole, caches what it read, and works with ``update`` and ``add_turn``. Both
backends."""

from __future__ import annotations

from typing import Any

import pytest
from _statements import count_statements
from conftest import MakeRepo, Sql

from convostore import ConversationTurn, InvalidPage, SessionRepository

EXCHANGES = 10


async def _long_session(repo: SessionRepository, sid: str = "long") -> list[str]:
    """``EXCHANGES`` exchanges, each about another place; returns every turn's content."""
    for k in range(EXCHANGES):
        await repo.add_turn(sid, f"vraag {k}", f"antwoord {k}", slots={f"slot{k % 3}": f"v{k}"})
    return [text for k in range(EXCHANGES) for text in (f"vraag {k}", f"antwoord {k}")]


async def test_a_windowed_read_returns_the_newest_turns_and_the_whole_context(
    make_repo: MakeRepo,
) -> None:
    """A cold windowed read returns the newest turns with their slots, and the session fields
    of the whole history; a smaller window is then a cache hit, a bigger one or a full read
    goes to the database once."""
    contents = await _long_session(await make_repo())
    repo = await make_repo()
    with count_statements(repo.engine) as cold:
        state = await repo.get("long", last_turns=6)
    assert cold
    assert state is not None
    assert [t.content for t in state.turns] == contents[-6:]
    assert state.turns[0].slots == {"slot1": "v7"}
    assert state.current_slots == {"slot0": "v9", "slot1": "v7", "slot2": "v8"}
    with count_statements(repo.engine) as smaller:
        again = await repo.get("long", last_turns=4)
    assert smaller == []
    assert again is not None
    assert [t.content for t in again.turns] == contents[-4:]
    with count_statements(repo.engine) as whole:
        full = await repo.get("long")
    assert whole
    assert full is not None
    assert [t.content for t in full.turns] == contents
    with count_statements(repo.engine) as after_full:
        window = await repo.get("long", last_turns=8)
        everything = await repo.get("long")
    assert after_full == []
    assert window is not None
    assert everything is not None
    assert [t.content for t in window.turns] == contents[-8:]
    assert len(everything.turns) == len(contents)


async def test_a_window_wider_than_the_history_is_the_whole_history(make_repo: MakeRepo) -> None:
    """Asking for more turns than stored reads them all, and caches the session as complete."""
    contents = await _long_session(await make_repo())
    repo = await make_repo()
    state = await repo.get("long", last_turns=1000)
    assert state is not None
    assert [t.content for t in state.turns] == contents
    with count_statements(repo.engine) as statements:
        assert await repo.get("long") is not None
    assert statements == []


async def test_appends_and_updates_after_a_windowed_read_keep_the_history(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """add_turn after a windowed read extends the cached window; update with a windowed state
    appends the turns added to it and leaves the unread history as it was."""
    contents = await _long_session(await make_repo())
    repo = await make_repo()
    assert await repo.get("long", last_turns=2) is not None
    await repo.add_turn("long", "nog een vraag", "nog een antwoord")
    with count_statements(repo.engine) as statements:
        state = await repo.get("long", last_turns=4)
    assert statements == []
    assert state is not None
    assert [t.content for t in state.turns] == [*contents[-2:], "nog een vraag", "nog een antwoord"]

    state.add_turn(ConversationTurn(role="user", content="laatste vraag"))
    await repo.update("long", state)
    stored = await sql("SELECT content FROM turns WHERE session_id = 'long' ORDER BY seq")
    assert [row[0] for row in stored] == [
        *contents,
        "nog een vraag",
        "nog een antwoord",
        "laatste vraag",
    ]


async def test_a_window_as_long_as_the_history_then_a_full_read(make_repo: MakeRepo) -> None:
    """A window that happens to hold every turn is not known to be complete: the full read
    after it goes to the database once, and is cached as complete."""
    contents = await _long_session(await make_repo())
    repo = await make_repo()
    assert await repo.get("long", last_turns=len(contents)) is not None
    full = await repo.get("long")
    assert full is not None
    assert [t.content for t in full.turns] == contents
    with count_statements(repo.engine) as statements:
        assert await repo.get("long") is not None
    assert statements == []


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, "6", True])
async def test_a_bad_window_is_refused_before_any_sql(make_repo: MakeRepo, bad: Any) -> None:
    """last_turns must be a positive int (or None)."""
    repo = await make_repo()
    with count_statements(repo.engine) as statements, pytest.raises(InvalidPage):
        await repo.get("long", last_turns=bad)
    assert statements == []
