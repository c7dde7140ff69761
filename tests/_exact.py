"""Type-exact comparison of states and JSON values, for the round-trip tests."""

from __future__ import annotations

from typing import Any

from convostore import ConversationState


def assert_exact(got: Any, expected: Any, where: str = "") -> None:
    """``got`` is ``expected``'s value, type for type, with dict keys in the same order."""
    assert type(got) is type(expected), f"{where}: {type(got).__name__} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_exact(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{where}: {len(got)} items != {len(expected)}"
        for index, (one, other) in enumerate(zip(got, expected, strict=True)):
            assert_exact(one, other, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert repr(got) == repr(expected), f"{where}: {got!r} != {expected!r}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def tree(state: ConversationState) -> dict[str, Any]:
    """Everything a state holds, as plain data for ``assert_exact``."""
    return {
        "turns": [
            [
                turn.role,
                turn.content,
                turn.resolved_question,
                turn.template_id,
                turn.slots,
                turn.results,
                turn.created_at,
            ]
            for turn in state.turns
        ],
        "current_slots": state.current_slots,
        "current_template_id": state.current_template_id,
        "language": state.language,
    }
