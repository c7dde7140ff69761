"""Edits of a conversation's history that keep what they take out: ``rewind`` (edit and
regenerate), ``fork`` and ``StoreConfig.max_turns_per_session``. The turns taken out stay in
the transcript as superseded, the catalog and the views say where a fork came from, and
other workers' caches follow. Every backend."""

from __future__ import annotations

import pytest
from conftest import FakeClock, MakeRepo, Sql

from convostore import (
    ConversationState,
    ConversationTurn,
    InvalidTurn,
    NotSessionOwner,
    SessionRepository,
)

TTL = 100


async def _talk(
    repo: SessionRepository, sid: str, numbers: range, user: str | None = None
) -> ConversationState:
    state = None
    for number in numbers:
        state = await repo.add_turn(
            sid,
            f"Vraag {number}?",
            f"Antwoord {number}.",
            template_id=f"t{number}",
            slots={"n": str(number), f"s{number}": "x"},
            user_id=user,
        )
    assert state is not None
    return state


def _contents(state: ConversationState | None) -> list[str]:
    assert state is not None
    return [turn.content for turn in state.turns]


async def _superseded(sql: Sql, sid: str) -> list[tuple[str, int, str]]:
    """(reason, seq, content) of every turn of ``sid`` taken out of a live conversation."""
    rows = await sql(
        "SELECT c.superseded_reason, t.seq, t.content FROM turns t JOIN conversations c "
        "ON c.session_id = t.session_id AND c.conversation_id = t.conversation_id "
        "WHERE t.session_id = :sid AND c.superseded_by IS NOT NULL "
        "ORDER BY c.conversation_id, t.seq",
        sid=sid,
    )
    return [tuple(row) for row in rows]


async def test_rewind_then_regenerate(make_repo: MakeRepo, sql: Sql) -> None:
    """A rewind keeps the turns up to one; the next append follows it; the turns taken out
    stay in the transcript as superseded; the context is the kept turns'; cached and cold
    reads agree."""
    repo = await make_repo(transcript_retention=10 * TTL)
    await _talk(repo, "s", range(1, 4), user="u")
    state = await repo.rewind("s", 2, user_id="u")
    assert _contents(state) == ["Vraag 1?", "Antwoord 1."]
    assert state is not None
    assert state.current_slots == {"n": "1", "s1": "x"}
    assert state.current_template_id == "t1"
    state = await repo.add_turn("s", "Vraag 2 anders?", "Antwoord 2 anders.", user_id="u")
    assert _contents(state)[2:] == ["Vraag 2 anders?", "Antwoord 2 anders."]
    cold = await (await make_repo()).get("s")
    assert cold is not None
    assert cold.turns == state.turns
    assert cold.current_slots == state.current_slots
    assert await _superseded(sql, "s") == [
        ("rewind", 3, "Vraag 2?"),
        ("rewind", 4, "Antwoord 2."),
        ("rewind", 5, "Vraag 3?"),
        ("rewind", 6, "Antwoord 3."),
    ]
    # A second rewind over reused numbers gets a conversation of its own.
    await repo.rewind("s", 0)
    assert _contents(await repo.get("s")) == []
    assert len(await _superseded(sql, "s")) == 8
    (summary,) = await repo.list_sessions("u")  # the superseded turns are not in the catalog
    assert summary.session_id == "s"
    assert summary.turns == 0


async def test_rewind_is_idempotent_and_checked(repo: SessionRepository) -> None:
    await _talk(repo, "s", range(1, 3), user="u")
    first = await repo.rewind("s", 2, user_id="u")
    again = await repo.rewind("s", 2, user_id="u")
    assert first is not None
    assert again is not None
    assert _contents(again) == _contents(first) == ["Vraag 1?", "Antwoord 1."]
    assert _contents(await repo.rewind("s", 40, user_id="u")) == _contents(first)
    with pytest.raises(InvalidTurn, match="split an exchange"):
        await repo.rewind("s", 1, user_id="u")
    for bad in (-1, 1.0, "2", None):
        with pytest.raises(InvalidTurn):
            await repo.rewind("s", bad, user_id="u")  # type: ignore[arg-type]
    with pytest.raises(NotSessionOwner):
        await repo.rewind("s", 0, user_id="v")
    assert await repo.rewind("nobody", 0) is None
    assert _contents(await repo.get("s")) == ["Vraag 1?", "Antwoord 1."]


async def test_a_summary_of_removed_turns_goes_with_them(repo: SessionRepository) -> None:
    await _talk(repo, "s", range(1, 4))
    await repo.set_summary("s", "Drie vragen.", upto_seq=6)
    state = await repo.rewind("s", 4)
    assert state is not None
    assert (state.summary, state.summary_upto) == (None, None)
    await repo.set_summary("s", "Twee vragen.", upto_seq=2)
    state = await repo.rewind("s", 2)
    assert state is not None
    assert state.summary == "Twee vragen."


async def test_other_workers_see_a_rewind(make_repo: MakeRepo) -> None:
    writer = await make_repo()
    reader = await make_repo(cache_coherence="strict")
    await _talk(writer, "s", range(1, 3))
    assert len(_contents(await reader.get("s"))) == 4
    await writer.rewind("s", 2)
    assert len(_contents(await reader.get("s"))) == 2


async def test_fork_copies_the_history_and_records_its_source(
    make_repo: MakeRepo, sql: Sql
) -> None:
    repo = await make_repo()
    await _talk(repo, "bron", range(1, 4), user="u")
    await repo.set_title("bron", "Archieven", user_id="u")
    await repo.set_metadata("bron", {"project": "a"}, user_id="u")
    new_sid = await repo.fork("bron", 4, user_id="u")
    assert new_sid is not None
    assert new_sid != "bron"
    forked = await repo.get(new_sid, user_id="u")
    original = await repo.get("bron")
    assert forked is not None
    assert original is not None
    assert forked.turns == original.turns[:4]
    assert (forked.title, forked.metadata) == ("Archieven", {"project": "a"})
    assert forked.current_slots == {"n": "2", "s1": "x", "s2": "x"}
    state = await repo.add_turn(new_sid, "Anders?", "Ja.", user_id="u")
    assert len(state.turns) == 6
    assert len((await repo.get("bron")).turns) == 6  # type: ignore[union-attr]

    (listed,) = [c for c in await repo.list_sessions("u") if c.session_id == new_sid]
    source_cid = await sql("SELECT conversation_id FROM sessions WHERE session_id = 'bron'")
    assert (listed.forked_from, listed.forked_from_conversation, listed.forked_upto) == (
        "bron",
        source_cid[0][0],
        4,
    )
    rows = await sql(
        "SELECT forked_from, forked_upto FROM conversation_status WHERE session_id = :sid",
        sid=new_sid,
    )
    assert [tuple(row) for row in rows] == [("bron", 4)]
    whole = await repo.fork("bron")
    assert whole is not None
    assert _contents(await repo.get(whole)) == _contents(await repo.get("bron"))


async def test_fork_is_checked_and_owned(repo: SessionRepository) -> None:
    await _talk(repo, "bron", range(1, 3), user="u")
    with pytest.raises(InvalidTurn, match="split an exchange"):
        await repo.fork("bron", 3, user_id="u")
    with pytest.raises(InvalidTurn, match="beyond the newest turn"):
        await repo.fork("bron", 5, user_id="u")
    with pytest.raises(NotSessionOwner):
        await repo.fork("bron", user_id="v")
    assert await repo.fork("nobody") is None
    empty = await repo.fork("bron", 0)  # no user given: the original's owner's
    assert empty is not None
    assert _contents(await repo.get(empty, user_id="u")) == []
    with pytest.raises(NotSessionOwner):
        await repo.add_turn(empty, "Van een ander?", "Nee.", user_id="v")


async def test_the_cap_keeps_the_newest_exchanges(make_repo: MakeRepo, sql: Sql) -> None:
    """Beyond ``max_turns_per_session`` an append takes the oldest exchanges out, never
    splitting one; a cold load reads only what is left; what went stays in the transcript."""
    repo = await make_repo(max_turns_per_session=4, transcript_retention=10 * TTL)
    state = await _talk(repo, "s", range(1, 6))
    assert _contents(state) == ["Vraag 4?", "Antwoord 4.", "Vraag 5?", "Antwoord 5."]
    cold = await (await make_repo(max_turns_per_session=4)).get("s")
    assert cold is not None
    assert cold.turns == state.turns
    assert [seq for _, seq, _ in await _superseded(sql, "s")] == list(range(1, 7))
    assert {reason for reason, _, _ in await _superseded(sql, "s")} == {"cap"}
    count = await sql("SELECT COUNT(*) FROM conversations WHERE superseded_reason = 'cap'")
    assert count[0][0] == 1  # one conversation holds all the cap took
    # update() appends are capped too, whole exchanges only.
    state.turns += [
        ConversationTurn(role="user", content="Vraag a?"),
        ConversationTurn(role="user", content="Vraag b?"),
        ConversationTurn(role="assistant", content="Antwoord b."),
    ]
    await repo.update("s", state)
    assert _contents(await repo.get("s")) == ["Vraag a?", "Vraag b?", "Antwoord b."]
    assert _contents(await repo.rewind("s", 10)) == []  # just before the oldest turn left


async def test_a_rewind_cannot_reach_what_the_cap_took(make_repo: MakeRepo) -> None:
    repo = await make_repo(max_turns_per_session=2)
    await _talk(repo, "s", range(1, 4))
    with pytest.raises(InvalidTurn, match="no longer in the live conversation"):
        await repo.rewind("s", 2)
    assert _contents(await repo.rewind("s", 4)) == []


async def test_retention_removes_what_was_taken_out(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    repo = await make_repo(session_ttl=TTL, transcript_retention=TTL)
    await _talk(repo, "s", range(1, 3))
    await repo.rewind("s", 2)
    clock.advance(TTL + 1)
    await _talk(repo, "t", range(1, 2))
    await repo.sweep_expired()
    assert await _superseded(sql, "s") == []


async def test_feedback_moves_with_the_answer_it_rates(repo: SessionRepository, sql: Sql) -> None:
    """A rewound answer keeps its feedback, in the transcript; the answer that takes its
    number starts without any."""
    await _talk(repo, "s", range(1, 3))
    assert await repo.add_feedback("s", 4, -1, comment="Fout.")
    await repo.rewind("s", 2)
    await repo.add_turn("s", "Vraag 2 opnieuw?", "Beter.")
    rows = await sql(
        "SELECT f.score, c.superseded_reason FROM turn_feedback f JOIN conversations c "
        "ON c.session_id = f.session_id AND c.conversation_id = f.conversation_id"
    )
    assert [tuple(row) for row in rows] == [(-1, "rewind")]
    assert await repo.add_feedback("s", 4, 2)
