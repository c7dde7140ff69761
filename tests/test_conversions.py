"""Value conversions on the hot paths: ``engine.load_json``, the JSON decoder of convostore's
own engines (the same results as ``json.loads`` for every document, its errors included),
and the SQLite text of
``schema.UTCDateTime`` (SQLAlchemy's own, byte for byte, and read back as the UTC time it
names)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from convostore._core.engine import load_json
from convostore._core.schema import UTCDateTime

TIMES = [
    datetime(1, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 12, 1, 18, 0, 0, tzinfo=timezone.utc),
    datetime(2026, 3, 29, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=-7))),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
]
"""Timestamps at the ends of the range, and one given in another time zone."""


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
        '"\\ud800 alone"',
        '{"b": 1, "a": 2, "b": 3}',
        f"[{10**4299}, {-(10**30)}, -0.0, 1e20, 1E400, 5e-324, 0.1, NaN, -Infinity]",
    ],
)
def test_load_json_agrees_with_json_loads(text: str) -> None:
    """The same values, of the same types, keys in the same order, floats to the bit."""
    assert repr(load_json(text)) == repr(json.loads(text))


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


@pytest.mark.parametrize("value", TIMES)
def test_sqlite_timestamp_text_is_sqlalchemys(value: datetime) -> None:
    """convostore's own SQLite bind writes exactly the text SQLAlchemy's DATETIME writes for
    the same UTC time (stored rows compare as text), and refuses a naive datetime."""
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    reference = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert reference is not None
    expected = reference(value.astimezone(timezone.utc).replace(tzinfo=None))
    assert ours(value) == expected
    assert ours(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        ours(value.replace(tzinfo=None))


@pytest.mark.parametrize("value", TIMES)
def test_sqlite_timestamp_text_reads_back_as_the_same_utc_time(value: datetime) -> None:
    dialect = sqlite.dialect()
    impl = UTCDateTime().dialect_impl(dialect)
    write, read = impl.bind_processor(dialect), impl.result_processor(dialect, None)
    assert write is not None
    assert read is not None
    back = read(write(value))
    assert back == value
    assert back.tzinfo is timezone.utc
    assert read(None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01 18:00:00", datetime(2026, 12, 1, 18, tzinfo=timezone.utc)),
        ("2026-12-01T18:00:00.000005", datetime(2026, 12, 1, 18, 0, 0, 5, tzinfo=timezone.utc)),
        ("2026-12-01 20:00:00+02:00", datetime(2026, 12, 1, 18, tzinfo=timezone.utc)),
        ("2026-12-01 18:00:00Z", datetime(2026, 12, 1, 18, tzinfo=timezone.utc)),
    ],
)
def test_sqlite_timestamp_text_written_elsewhere_reads_as_utc(
    text: str, expected: datetime
) -> None:
    """Rows not written by convostore (no microseconds, a T, an offset) read as the UTC time
    they name."""
    dialect = sqlite.dialect()
    read = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    assert read is not None
    back = read(text)
    assert back == expected
    assert back.tzinfo is timezone.utc
