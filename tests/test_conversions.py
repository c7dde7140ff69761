"""Value conversions on the hot paths: ``engine.load_json``, the JSON decoder of convostore's
own engines (the same results as ``json.loads`` for every document, its errors included), and
the SQLite text of ``schema.UTCDateTime`` (SQLAlchemy's own, byte for byte)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from convostore.engine import load_json
from convostore.schema import UTCDateTime


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


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 12, 1, 18, 0, 0, tzinfo=timezone.utc),
        datetime(2026, 3, 29, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=-7))),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
    ],
)
def test_sqlite_timestamp_text_is_sqlalchemys(value: datetime) -> None:
    """convostore's own SQLite bind writes exactly the text SQLAlchemy's DATETIME writes for
    the same UTC time (stored rows compare as text), twice in a row (the second from its
    memory of the last value), and refuses a naive datetime."""
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    reference = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert reference is not None
    expected = reference(value.astimezone(timezone.utc).replace(tzinfo=None))
    assert ours(value) == expected
    assert ours(value) == expected
    assert ours(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        ours(value.replace(tzinfo=None))
