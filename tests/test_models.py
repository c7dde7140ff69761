"""The conversation models on their own (no database): frozen turns, defaults, how
ConversationState.add_turn carries slots and templates, and the history handed to dspy."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from convostore import ConversationState, ConversationTurn


def _user(content: str, **fields: object) -> ConversationTurn:
    return ConversationTurn(role="user", content=content, **fields)  # type: ignore[arg-type]


def _assistant(content: str, **fields: object) -> ConversationTurn:
    return ConversationTurn(role="assistant", content=content, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content", "changed"),
        ("role", "assistant"),
        ("resolved_question", "changed"),
        ("template_id", "changed"),
        ("slots", {}),
        ("results", []),
    ],
)
def test_turn_is_frozen(field: str, value: object) -> None:
    """Assigning to any field of a ConversationTurn raises pydantic's ValidationError."""
    turn = _user("Welke archieven zijn er in Utrecht?", slots={"place": "Utrecht"})
    with pytest.raises(ValidationError):
        setattr(turn, field, value)
    assert turn.content == "Welke archieven zijn er in Utrecht?"
    assert turn.role == "user"


def test_turn_defaults() -> None:
    """A bare ConversationTurn is an empty user turn, and its dict/list defaults are not shared."""
    turn = ConversationTurn()
    assert turn.role == "user"
    assert turn.content == ""
    assert turn.resolved_question is None
    assert turn.template_id is None
    assert turn.slots == {}
    assert turn.results == []
    assert turn.created_at is None
    other = ConversationTurn()
    assert turn.slots is not other.slots
    assert turn.results is not other.results


def test_turn_rejects_unknown_role() -> None:
    """role is one of user, assistant, system and tool."""
    for role in ("user", "assistant", "system", "tool"):
        assert ConversationTurn(role=role).role == role
    with pytest.raises(ValidationError):
        ConversationTurn(role="developer")  # type: ignore[arg-type]


def test_state_defaults() -> None:
    """A new ConversationState has no turns, no slots, no template, and no language."""
    state = ConversationState()
    assert state.turns == []
    assert state.current_slots == {}
    assert state.current_template_id is None
    assert state.language is None
    assert ConversationState().turns is not state.turns


def test_add_turn_merges_user_slots() -> None:
    """A user turn's slots merge into current_slots: new names added, existing ones replaced."""
    state = ConversationState()
    state.add_turn(_user("Archieven in Utrecht?", slots={"place": "Utrecht", "type": "archief"}))
    state.add_turn(_user("En in Enschede?", slots={"place": "Enschede"}))
    assert state.current_slots == {"place": "Enschede", "type": "archief"}
    assert [turn.content for turn in state.turns] == ["Archieven in Utrecht?", "En in Enschede?"]


def test_add_turn_does_not_merge_assistant_slots() -> None:
    """An assistant turn is appended but its slots do not reach current_slots."""
    state = ConversationState()
    state.add_turn(_user("Archieven in Utrecht?", slots={"place": "Utrecht"}))
    state.add_turn(_assistant("Twaalf.", slots={"place": "Amsterdam", "extra": "x"}))
    assert state.current_slots == {"place": "Utrecht"}
    assert len(state.turns) == 2
    assert state.turns[-1].slots == {"place": "Amsterdam", "extra": "x"}


def test_add_turn_template_id() -> None:
    """A truthy template_id (from any role) becomes current; None and "" leave it unchanged."""
    state = ConversationState()
    state.add_turn(_user("q1", template_id="archives_in_place"))
    assert state.current_template_id == "archives_in_place"
    state.add_turn(_user("q2", template_id=""))
    assert state.current_template_id == "archives_in_place"
    state.add_turn(_assistant("a2"))
    assert state.current_template_id == "archives_in_place"
    state.add_turn(_assistant("a3", template_id="count_in_place"))
    assert state.current_template_id == "count_in_place"


def test_get_previous_user_turn() -> None:
    """get_previous_user_turn returns the most recent user turn, or None if there is none."""
    state = ConversationState()
    assert state.get_previous_user_turn() is None
    state.add_turn(_assistant("Welkom."))
    assert state.get_previous_user_turn() is None
    first = _user("Archieven in Utrecht?")
    second = _user("En in Enschede?")
    for turn in (first, _assistant("Twaalf."), second, _assistant("Drie.")):
        state.add_turn(turn)
    assert state.get_previous_user_turn() is second


@pytest.mark.skipif(
    importlib.util.find_spec("dspy") is not None,
    reason="dspy is installed, so to_dspy_history returns dspy.History instead of a dict",
)
def test_to_dspy_history_without_dspy() -> None:
    """Without dspy, to_dspy_history returns {"messages": [...]} of the last 6 turns, each with
    role and the resolved question if there is one, else the content."""
    assert ConversationState().to_dspy_history() == {"messages": []}
    state = ConversationState()
    for n in range(1, 5):
        resolved = f"resolved {n}" if n % 2 == 0 else None
        state.add_turn(_user(f"question {n}", resolved_question=resolved))
        state.add_turn(_assistant(f"answer {n}"))
    state.add_turn(_user("question 5", resolved_question=""))

    history = state.to_dspy_history()
    assert history == {
        "messages": [
            {"role": "assistant", "content": "answer 2"},
            {"role": "user", "content": "question 3"},
            {"role": "assistant", "content": "answer 3"},
            {"role": "user", "content": "resolved 4"},
            {"role": "assistant", "content": "answer 4"},
            {"role": "user", "content": "question 5"},
        ]
    }
