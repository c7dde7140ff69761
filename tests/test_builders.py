"""The store's model builders (``make_turn``/``make_state``, no validation) against models built
by validation, on pydantic's private slots and on the public fallback used without them."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from convostore import ConversationState, ConversationTurn
from convostore._core.schema import sessions
from convostore.backends._private import pydantic_slot_setters
from convostore.models import (
    SESSION_COLUMNS,
    STATE_FIELDS,
    StateBuilder,
    StoredSession,
    TurnBuilder,
    builders,
)

TURN: dict[str, Any] = {
    "role": "user",
    "content": "En in Enschede?",
    "resolved_question": "Welke archieven zijn er in Enschede?",
    "template_id": "archives_in_place",
    "slots": {"place": "Enschede"},
    "results": [{"name": "Historisch Centrum Overijssel", "score": 0.5}],
    "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "span_id": "00f067aa0ba902b7",
    "tool_name": "search_archives",
    "tool_call_id": "call_1",
    "tool_arguments": {"place": "Enschede"},
    "data": {"type": "message", "content": "En in Enschede?"},
}
BUILDERS = {"slots": builders(pydantic_slot_setters()), "fallback": builders(None)}


@pytest.fixture(params=list(BUILDERS))
def built(request: pytest.FixtureRequest) -> tuple[TurnBuilder, StateBuilder]:
    return BUILDERS[request.param]


def test_slot_setters_are_found_and_a_missing_slot_is_noticed() -> None:
    """This pydantic has the slots; a model class without them gives None (the fallback)."""
    assert pydantic_slot_setters() is not None
    assert pydantic_slot_setters(type("Moved", (), {})) is None
    assert pydantic_slot_setters(type("Plain", (BaseModel,), {})) is None


def test_built_turn_equals_a_validated_turn(built: tuple[TurnBuilder, StateBuilder]) -> None:
    """==, model_dump, model_fields_set, model_copy, pickling and frozenness match."""
    make_turn, _ = built
    turn = make_turn(**TURN)
    validated = ConversationTurn(**TURN)
    assert turn == validated
    assert validated == turn
    assert repr(turn) == repr(validated)
    assert turn.model_dump() == validated.model_dump()
    assert turn.model_dump_json() == validated.model_dump_json()
    assert turn.model_fields_set == validated.model_fields_set
    assert turn.model_copy() == validated.model_copy()
    assert turn.model_copy(update={"content": "x"}) == validated.model_copy(update={"content": "x"})
    assert pickle.loads(pickle.dumps(turn)) == validated
    with pytest.raises(ValidationError):
        turn.content = "changed"
    assert turn.content == TURN["content"]


def test_built_state_equals_a_validated_state(built: tuple[TurnBuilder, StateBuilder]) -> None:
    """A built state equals the validated one, copies and pickles alike, and keeps the
    private attributes the store gave it."""
    make_turn, make_state = built
    turns = [make_turn(**TURN)]
    session = StoredSession(
        turns=turns,
        current_slots={"place": "Enschede"},
        current_template_id="archives_in_place",
        language="nl",
        title="Archives",
        metadata={"tags": ["utrecht"]},
        summary="Archives in Utrecht.",
        summary_upto=1,
        version=7,
        turn_count=1,
        user_id=None,
        last_accessed=0.0,
        expires_at=0.0,
    )
    state = make_state(session, "sid", turns)
    validated = ConversationState(
        turns=[ConversationTurn(**TURN)],
        current_slots={"place": "Enschede"},
        current_template_id="archives_in_place",
        language="nl",
        title="Archives",
        metadata={"tags": ["utrecht"]},
        summary="Archives in Utrecht.",
        summary_upto=1,
    )
    assert state.model_dump() == validated.model_dump()
    assert state.model_fields_set == validated.model_fields_set
    assert state.__pydantic_extra__ == validated.__pydantic_extra__
    assert (state._session_id, state._stored, state._version) == ("sid", 1, 7)
    assert state._origin is turns
    copied = state.model_copy()
    assert copied.model_dump() == validated.model_dump()
    assert (copied._session_id, copied._version) == ("sid", 7)
    restored = pickle.loads(pickle.dumps(state))
    assert restored.model_dump() == validated.model_dump()
    assert restored._version == 7
    state.add_turn(ConversationTurn(content="Hoeveel?", slots={"n": "3"}))
    assert state.current_slots == {"place": "Enschede", "n": "3"}


def test_the_session_record_names_every_state_field_and_column() -> None:
    """A session field added to ``SessionFields`` must be a state field and a ``sessions``
    column of the same name, and every state field a session field: the load, the cache, the
    writes and the exports take the list from there."""
    assert set(STATE_FIELDS) == set(ConversationState.model_fields) - {"turns"}
    assert set(SESSION_COLUMNS) <= set(sessions.c.keys())
    assert set(STATE_FIELDS) <= set(SESSION_COLUMNS)


def test_a_built_state_carries_every_session_field(
    built: tuple[TurnBuilder, StateBuilder],
) -> None:
    """``make_state`` spells the fields out (it is every cache hit): none may be left out."""
    _, make_state = built
    values: dict[str, Any] = {name: f"value of {name}" for name in STATE_FIELDS}
    values["current_slots"] = {"place": "Enschede"}
    values["metadata"] = {"project": "archives"}
    values["summary_upto"] = 2
    session = StoredSession(
        turns=[], version=1, user_id=None, last_accessed=0.0, expires_at=0.0, **values
    )
    state = make_state(session, "sid", [])
    assert {name: getattr(state, name) for name in STATE_FIELDS} == values
    assert state.current_slots is not session.current_slots
    assert state.metadata is not session.metadata
