"""Summaries: ``set_summary`` stores the caller's summary of the turns up to one of them; a
read returns it with its window, ``to_dspy_history`` puts it first when turns came before
the window, and no turn is ever deleted for it. Every backend."""

from __future__ import annotations

import pytest
from conftest import FakeClock, MakeRepo, Sql

from convostore import InvalidTurn, NotSessionOwner, SessionRepository
from convostore.models import SUMMARY_PREFIX


async def _talk(repo: SessionRepository, sid: str, exchanges: int, user: str | None = None) -> None:
    for number in range(1, exchanges + 1):
        await repo.add_turn(sid, f"Vraag {number}?", f"Antwoord {number}.", user_id=user)


def _messages(history: object) -> list[dict[str, str]]:
    messages = history["messages"] if isinstance(history, dict) else history.messages  # type: ignore[attr-defined]
    return list(messages)


async def test_a_windowed_read_returns_the_summary_with_its_window(
    make_repo: MakeRepo, sql: Sql
) -> None:
    repo = await make_repo()
    await _talk(repo, "s", 10)
    assert await repo.set_summary("s", "Tien vragen over archieven.", upto_seq=14)
    for reader in (repo, await make_repo()):  # cached, then cold
        state = await reader.get("s", last_turns=4)
        assert state is not None
        assert [turn.content for turn in state.turns] == [
            "Vraag 9?",
            "Antwoord 9.",
            "Vraag 10?",
            "Antwoord 10.",
        ]
        assert (state.summary, state.summary_upto) == ("Tien vragen over archieven.", 14)
        messages = _messages(state.to_dspy_history())
        assert messages[0] == {
            "role": "system",
            "content": SUMMARY_PREFIX + "Tien vragen over archieven.",
        }
        assert [m["content"] for m in messages[1:]] == [t.content for t in state.turns]
        whole = await reader.get("s")
        assert whole is not None
        assert len(whole.turns) == 20  # a summary deletes no turn
        assert _messages(whole.to_dspy_history())[0]["role"] == "system"
    assert (await sql("SELECT COUNT(*) FROM turns"))[0][0] == 20


async def test_no_summary_message_when_the_window_holds_every_turn(repo: SessionRepository) -> None:
    """Three turns fit in the history's window: the summary would repeat them."""
    await repo.add_turn("kort", "Vraag?", "Antwoord.")
    assert await repo.set_summary("kort", "Een vraag.", upto_seq=2)
    state = await repo.get("kort")
    assert state is not None
    assert state.summary == "Een vraag."
    assert [m["role"] for m in _messages(state.to_dspy_history())] == ["user", "assistant"]
    await _talk(repo, "kort", 3)
    state = await repo.get("kort")
    assert state is not None
    assert _messages(state.to_dspy_history())[0]["role"] == "system"


async def test_summaries_are_replaced_removed_and_checked(
    repo: SessionRepository, clock: FakeClock
) -> None:
    await _talk(repo, "s", 2, user="u")
    assert await repo.set_summary("s", "Eerst.", upto_seq=2, user_id="u")
    assert await repo.set_summary("s", "Dan.", upto_seq=4, user_id="u")
    state = await repo.get("s")
    assert state is not None
    assert (state.summary, state.summary_upto) == ("Dan.", 4)
    with pytest.raises(InvalidTurn, match="beyond the turns"):
        await repo.set_summary("s", "Te ver.", upto_seq=5, user_id="u")
    for text, upto in (("", 2), ("Zonder grens.", None), ("Nul.", 0), (None, 2), (7, 2)):
        with pytest.raises(InvalidTurn):
            await repo.set_summary("s", text, upto_seq=upto, user_id="u")  # type: ignore[arg-type]
    with pytest.raises(NotSessionOwner):
        await repo.set_summary("s", "Van een ander.", upto_seq=2, user_id="v")
    state = await repo.get("s")
    assert state is not None
    assert (state.summary, state.summary_upto) == ("Dan.", 4)
    assert await repo.set_summary("s", None, upto_seq=None, user_id="u")
    state = await repo.get("s")
    assert state is not None
    assert (state.summary, state.summary_upto) == (None, None)
    assert not await repo.set_summary("nobody", "Niets.", upto_seq=1)


async def test_update_stores_the_summary_of_the_state(make_repo: MakeRepo) -> None:
    repo = await make_repo()
    await _talk(repo, "s", 4)
    state = await repo.get("s")
    assert state is not None
    state.summary, state.summary_upto = "Vier vragen.", 8
    await repo.update("s", state)
    cold = await (await make_repo()).get("s", last_turns=2)
    assert cold is not None
    assert (cold.summary, cold.summary_upto) == ("Vier vragen.", 8)
