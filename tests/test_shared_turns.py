"""States the store builds share the cached ``turns`` and ``current_slots`` until their first
use: every way of reading such a state shows what a state with its own copies shows, no change
to it reaches the cache (or another state), and the original manager's way of adding turns
(append to ``state.turns``, then ``update``) stores them, on both backends."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from convostore import ConversationState, ConversationTurn, SessionRepository
from convostore.backends._private import pydantic_slot_setters
from convostore.models import StateBuilder, StoredSession, builders

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]

BUILDERS = {"slots": builders(pydantic_slot_setters())[1], "fallback": builders(None)[1]}
ORDERED_TURNS = "SELECT seq, role, content FROM turns WHERE session_id = :sid ORDER BY seq"
NEW = ConversationTurn(role="user", content="nieuw", slots={"place": "Delft"}, template_id="n")


def _session() -> StoredSession:
    turns = [
        ConversationTurn(role="user", content="Archieven in Enschede?", slots={"place": "x"}),
        ConversationTurn(role="assistant", content="Drie."),
        ConversationTurn(role="user", content="En in Zwolle?", resolved_question="Zwolle?"),
    ]
    return StoredSession(
        turns=turns,
        current_slots={"place": "Enschede", "type": "archief"},
        current_template_id="archives",
        language="nl",
        version=4,
        user_id=None,
        last_accessed=0.0,
        expires_at=0.0,
    )


def _own(state: ConversationState) -> ConversationState:
    """``state`` after reading its shared fields, which gives it copies of its own."""
    assert state.turns is not None
    assert state.current_slots is not None
    return state


@pytest.fixture(params=list(BUILDERS))
def make_state(request: pytest.FixtureRequest) -> StateBuilder:
    return BUILDERS[request.param]


class Holder(BaseModel):
    state: ConversationState


READS: dict[str, Callable[[ConversationState], Any]] = {
    "model_dump": lambda state: state.model_dump(),
    "model_dump(mode=json)": lambda state: state.model_dump(mode="json"),
    "model_dump_json": lambda state: state.model_dump_json(),
    "model_dump(exclude_unset)": lambda state: state.model_dump(exclude_unset=True),
    "TypeAdapter.dump_json": lambda state: TypeAdapter(ConversationState).dump_json(state),
    "inside another model": lambda state: Holder(state=state).model_dump_json(),
    "repr": repr,
    "str": str,
    "dict()": lambda state: dict(state),
    "copy.copy": lambda state: copy.copy(state).model_dump_json(),
    "copy.deepcopy": lambda state: copy.deepcopy(state).model_dump_json(),
    "model_copy": lambda state: state.model_copy().model_dump_json(),
    "model_copy(update)": lambda state: state.model_copy(update={"language": "en"}).turns,
    "pickle": lambda state: pickle.loads(pickle.dumps(state)).model_dump_json(),
    "attributes": lambda state: (state.turns, state.current_slots, state.language),
    "to_dspy_history": lambda state: state.to_dspy_history(),
    "get_previous_user_turn": lambda state: state.get_previous_user_turn(),
    "== itself built": lambda state: state == _own(copy.copy(state)),
}


@pytest.mark.parametrize("read", list(READS))
def test_every_read_of_a_sharing_state_matches_one_with_its_own_copies(
    make_state: StateBuilder, read: str
) -> None:
    """Whatever reads the state first (pydantic's own methods read ``__dict__`` directly)
    sees the turns and slots it was handed, in the declared field order."""
    session = _session()
    sharing = make_state(session, "sid", session.turns)
    built = _own(make_state(session, "sid", session.turns))
    assert READS[read](sharing) == READS[read](built)
    assert sharing == built
    assert list(sharing.model_dump()) == list(ConversationState.model_fields)


def test_a_store_built_state_shares_until_first_use() -> None:
    """Neither field is copied until it is read; reading the recent history copies nothing;
    then each is a copy of its own."""
    session = _session()
    state = BUILDERS["slots"](session, "sid", session.turns)
    assert "turns" not in vars(state)
    assert "current_slots" not in vars(state)
    assert state.to_dspy_history() == {
        "messages": [
            {"role": "user", "content": "Archieven in Enschede?"},
            {"role": "assistant", "content": "Drie."},
            {"role": "user", "content": "Zwolle?"},
        ]
    }
    assert state.get_previous_user_turn() is session.turns[2]
    assert "turns" not in vars(state)
    assert state.turns == session.turns
    assert state.turns is not session.turns
    assert state.current_slots == session.current_slots
    assert state.current_slots is not session.current_slots
    assert list(vars(state)) == list(ConversationState.model_fields)


def test_serialization_schema_is_the_models_own() -> None:
    """Building the shared fields before a dump does not change the JSON schema a dump
    follows (what FastAPI documents for a response)."""
    assert ConversationState.model_json_schema(
        mode="serialization"
    ) == ConversationState.model_json_schema(mode="validation")


MUTATIONS: dict[str, Callable[[ConversationState], object]] = {
    "turns.append": lambda state: state.turns.append(NEW),
    "turns.extend": lambda state: state.turns.extend([NEW, NEW]),
    "turns +=": lambda state: state.__setattr__("turns", state.turns.__iadd__([NEW])),
    "turns.insert": lambda state: state.turns.insert(0, NEW),
    "turns[0] =": lambda state: state.turns.__setitem__(0, NEW),
    "turns[:] =": lambda state: state.turns.__setitem__(slice(None), [NEW]),
    "del turns[0]": lambda state: state.turns.__delitem__(0),
    "turns.pop": lambda state: state.turns.pop(),
    "turns.remove": lambda state: state.turns.remove(state.turns[1]),
    "turns.clear": lambda state: state.turns.clear(),
    "turns.reverse": lambda state: state.turns.reverse(),
    "turns.sort": lambda state: state.turns.sort(key=lambda turn: turn.content, reverse=True),
    "turns =": lambda state: state.__setattr__("turns", [NEW]),
    "add_turn": lambda state: state.add_turn(NEW),
    "current_slots[k] =": lambda state: state.current_slots.__setitem__("place", "Delft"),
    "current_slots.update": lambda state: state.current_slots.update(extra="x"),
    "del current_slots[k]": lambda state: state.current_slots.__delitem__("place"),
    "current_slots.clear": lambda state: state.current_slots.clear(),
    "current_slots =": lambda state: state.__setattr__("current_slots", {}),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_changing_a_state_changes_neither_the_record_nor_other_states(
    make_state: StateBuilder, mutation: str
) -> None:
    """A change to one state's turns or slots (in place or by assignment) leaves the session
    record, a state handed out beside it and one handed out after it as they were."""
    session = _session()
    turns, slots = list(session.turns), dict(session.current_slots)
    changed = make_state(session, "sid", session.turns)
    beside = make_state(session, "sid", session.turns)
    MUTATIONS[mutation](changed)
    assert (changed.turns, changed.current_slots) != (turns, slots)
    assert session.turns == turns
    assert session.current_slots == slots
    for state in (beside, make_state(session, "sid", session.turns)):
        assert state.turns == turns
        assert state.current_slots == slots


def test_a_state_keeps_what_it_was_handed_when_the_record_grows(make_state: StateBuilder) -> None:
    """The record appends to its turns list and replaces its slots as exchanges are stored;
    a state handed out before keeps its own history and context, however it reads them."""
    session = _session()
    before = make_state(session, "sid", session.turns)
    turns, slots = list(session.turns), dict(session.current_slots)
    session.extend([ConversationTurn(role="user", content="Hengelo?", slots={"place": "Hengelo"})])
    session.extend([ConversationTurn(role="user", content="Met foto's?", slots={"foto": "ja"})])
    assert before.get_previous_user_turn() is turns[2]
    assert before.to_dspy_history()["messages"][-1]["content"] == "Zwolle?"
    assert len(before.model_dump()["turns"]) == 3
    assert before.turns == turns
    assert before.current_slots == slots
    after = make_state(session, "sid", session.turns)
    assert len(after.turns) == 5
    assert after.current_slots == {"foto": "ja", "place": "Hengelo", "type": "archief"}


def test_a_field_deleted_from_a_state_the_store_did_not_build_is_gone() -> None:
    """Only a store-built state builds a missing field; any other raises as pydantic does."""
    state = ConversationState(turns=[NEW])
    del state.turns
    with pytest.raises(AttributeError):
        _ = state.turns


# --- through the repository, on both backends ------------------------------------------------


async def test_changing_a_hits_lists_in_place_reaches_neither_cache_nor_database(
    make_repo: MakeRepo,
) -> None:
    """A cache hit shares the cached turns and slots; changing the lists and dicts it returned
    (not through ``add_turn``) changes no later read, cached or cold."""
    repo = await make_repo()
    sid = "shared-hit"
    await repo.add_turn(sid, "q1", "a1", slots={"place": "Utrecht"})
    await repo.add_turn(sid, "q2", "a2")
    expected = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    for change in MUTATIONS.values():
        state = await repo.get(sid)
        assert state is not None
        change(state)
        again = await repo.get(sid)
        assert again is not None
        assert [(turn.role, turn.content) for turn in again.turns] == expected
        assert again.current_slots == {"place": "Utrecht"}
    cold = await (await make_repo()).get(sid)
    assert cold is not None
    assert [(turn.role, turn.content) for turn in cold.turns] == expected
    assert repo.stats()["cache_hits"] >= len(MUTATIONS)


async def test_a_returned_state_keeps_its_turns_when_the_session_grows(
    repo: SessionRepository,
) -> None:
    """States returned by ``add_turn`` and ``get`` are snapshots: later appends to the same
    session (which extend the cached list) do not show in them."""
    sid = "snapshots"
    first = await repo.add_turn(sid, "q1", "a1", slots={"place": "Delft"})
    got = await repo.get(sid)
    second = await repo.add_turn(sid, "q2", "a2", slots={"place": "Gouda"})
    assert got is not None
    for state in (first, got):
        assert [turn.content for turn in state.turns] == ["q1", "a1"]
        assert state.current_slots == {"place": "Delft"}
    assert [turn.content for turn in second.turns] == ["q1", "a1", "q2", "a2"]
    assert second.current_slots == {"place": "Gouda"}


@pytest.mark.parametrize("source", ["add_turn", "cache hit", "cold load", "get_or_create"])
async def test_appending_to_state_turns_then_update_stores_the_turns(
    make_repo: MakeRepo, sql: Sql, source: str
) -> None:
    """The original manager's habit: append turns to ``state.turns`` (not ``add_turn``),
    then ``update(state)``. The new turns are stored once, after the stored ones, whichever
    call handed the state out, and every later read has them."""
    repo = await make_repo()
    sid = f"habit-{source.replace(' ', '-')}"
    if source != "get_or_create":
        await repo.add_turn(sid, "q1", "a1")
    state: ConversationState | None
    if source == "add_turn":
        state = await repo.add_turn(sid, "q2", "a2")
    elif source == "cache hit":
        state = await repo.get(sid)
    elif source == "cold load":
        state = await (await make_repo()).get(sid)
    else:
        _, state = await repo.get_or_create(sid)
    assert state is not None
    stored = [turn.content for turn in state.turns]
    state.turns.append(ConversationTurn(role="user", content="eigen vraag"))
    state.turns.append(ConversationTurn(role="assistant", content="eigen antwoord"))
    await repo.update(sid, state)
    expected = [*stored, "eigen vraag", "eigen antwoord"]
    rows = await sql(ORDERED_TURNS, sid=sid)
    assert [row[2] for row in rows] == expected
    assert all(turn.created_at is not None for turn in state.turns)
    for reader in (repo, await make_repo()):
        again = await reader.get(sid)
        assert again is not None
        assert [turn.content for turn in again.turns] == expected
    await repo.update(sid, state)
    assert len(await sql(ORDERED_TURNS, sid=sid)) == len(expected)
