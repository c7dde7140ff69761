"""``engine.load_json``, the JSON decoder of convostore's own engines: the same results as
``json.loads`` for every document, its errors included."""

from __future__ import annotations

import json

import pytest

from convostore.engine import load_json


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        '[{"name": "Het Utrechts Archief", "count": 12}]',
        '{"place": "Utrecht", "nested": [1, 2.5, null, true, "\\u00e9"]}',
        "  [1, 2] ",
        '"just text"',
        "3",
        "[ ]",
    ],
)
def test_load_json_agrees_with_json_loads(text: str) -> None:
    assert load_json(text) == json.loads(text)


def test_empty_documents_are_fresh_objects() -> None:
    """Each empty list or dict is its own object, so no two turns share one."""
    first, second = load_json("[]"), load_json("[]")
    assert first == second == []
    assert first is not second


@pytest.mark.parametrize("text", ["[1] x", "[1", "", "nul"])
def test_load_json_raises_what_json_loads_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        load_json(text)
