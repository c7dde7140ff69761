"""Exact round trips: a session read cold is exactly the state ``add_turn`` returned (what the
writer caches), on both backends: the same values of the same types (``1`` is not ``1.0``,
``-0.0`` is not ``0.0``), and dicts with their keys in the same order. ``results`` come back as
written; slots (a turn's, and ``current_slots``) in name order on every path. What JSON cannot
carry is refused with ``InvalidTurn`` before any SQL.
"""

from __future__ import annotations

import enum
import io
import json
import os
import sys
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from _exact import assert_exact, tree
from conftest import FAST_PATH, POSTGRES_URL_ENV, FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from convostore import ConversationState, InvalidTurn, SessionRepository, StoreConfig
from convostore._ops.admin import transcripts
from convostore._ops.transfer import export_conversations, import_conversations
from convostore.migrate import upgrade_url

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]

EXTREME_FLOATS = [
    1e20,
    -1e20,
    1e16,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    5e-324,
    2.2250738585072014e-308,
    -0.0,
    0.0,
    1.0,
    0.1,
]
BIG_INTS = [2**63, -(2**63) - 1, 10**20, 10**308, -(10**4299), 10**4300 - 1]
"""Up to the longest int results may hold: 4,300 digits."""

_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
"""Any text the store keeps: every code point but NUL and lone surrogates."""
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(BIG_INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(EXTREME_FLOATS)
    | _text
)
json_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=15,
)
results_lists = st.lists(st.dictionaries(_text, json_values, max_size=5), max_size=3)
slot_dicts = st.dictionaries(_text, _text, max_size=4)
exchanges = st.lists(st.tuples(slot_dicts, results_lists), min_size=1, max_size=3)


async def cold(make_repo: MakeRepo, session_id: str) -> ConversationState:
    """The session as a new repository, with nothing cached, reads it."""
    state = await (await make_repo()).get(session_id)
    assert state is not None
    return state


@pytest.fixture
async def pair(make_repo: MakeRepo) -> tuple[SessionRepository, SessionRepository]:
    """A writer and a reader on this test's database (their caches apart)."""
    return await make_repo(), await make_repo()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(written=exchanges)
async def test_cold_read_is_exactly_what_add_turn_returned(
    pair: tuple[SessionRepository, SessionRepository],
    written: list[tuple[dict[str, str], list[dict[str, Any]]]],
) -> None:
    """Any JSON in results (nested, unicode keys, extreme floats, big ints) and any slots, over
    a few exchanges: the reader's cold read, the writer's cached copy and the state the last
    ``add_turn`` returned are one and the same."""
    writer, reader = pair
    sid = f"rt-{uuid.uuid4().hex}"
    for slots, results in written:
        returned = await writer.add_turn(sid, "q", "a", slots=slots, results=results)
    read = await reader.get(sid)
    cached = await writer.get(sid)
    assert read is not None
    assert cached is not None
    assert_exact(tree(read), tree(returned))
    assert_exact(tree(cached), tree(returned))
    for (slots, results), turn in zip(written, read.turns[::2], strict=True):
        assert_exact(turn.results, results)
        assert turn.slots == slots


async def test_results_read_back_as_written(make_repo: MakeRepo) -> None:
    """The cases JSONB normalized: a float beyond 2**64 is no int, -0.0 keeps its sign, keys
    keep their order, 1 and 1.0 stay apart; the writer's state, its cache and a cold read of
    another repository agree."""
    results: list[dict[str, Any]] = [
        {"v": 1e20, "max": 1.7976931348623157e308, "zero": -0.0},
        {"b": 1, "a": 1.0, "aa": [1, 1.0, 10**30], "nested": {"z": {"y": None}, "x": True}},
    ]
    repo = await make_repo()
    returned = await repo.add_turn("exact", "q", "a", slots={"b": "1", "a": "2"}, results=results)
    assert_exact(returned.turns[0].results, results)
    assert list(returned.turns[0].slots) == ["a", "b"]
    assert_exact(tree(await cold(make_repo, "exact")), tree(returned))
    cached = await repo.get("exact")
    assert cached is not None
    assert_exact(tree(cached), tree(returned))


class Colour(enum.IntEnum):
    RED = 1


class Name(str, enum.Enum):
    ADA = "Ada"


class Precise(float):
    pass


async def test_cached_results_are_normalized_as_a_cold_read_returns_them(
    make_repo: MakeRepo,
) -> None:
    """Tuples, other mappings and subclasses of int, str and float are cached as the plain
    values JSON gives back, not as the caller's objects."""
    repo = await make_repo()
    given_results: Any = [
        OrderedDict(
            [("t", (1, (2.5, "x"))), ("e", Colour.RED), ("n", Name.ADA), ("f", Precise(0.5))]
        ),
        {Name.ADA: "key of a str subclass"},
    ]
    returned = await repo.add_turn(
        "plain", "q", "a", slots={Name.ADA: Name.ADA}, results=given_results
    )
    expected = [
        {"t": [1, [2.5, "x"]], "e": 1, "n": "Ada", "f": 0.5},
        {"Ada": "key of a str subclass"},
    ]
    assert_exact(returned.turns[0].results, expected)
    assert_exact(returned.turns[0].slots, {"Ada": "Ada"})
    assert_exact(tree(await cold(make_repo, "plain")), tree(returned))


async def test_slots_are_in_name_order_everywhere(make_repo: MakeRepo, clock: FakeClock) -> None:
    """A turn's slots and current_slots, merged over exchanges and replaced by update, come
    back in name order (by code point) from the writer, its cache, a cold read, ``show`` and
    ``export_user``."""
    repo = await make_repo()
    first = {"zz": "1", "a": "2", "é": "3", "B": "4"}
    await repo.add_turn("slots", "q1", "a1", slots=first, user_id="u-1")
    second = {"m": "5", "ab": "6", "a": "7", "Z": "8"}
    returned = await repo.add_turn("slots", "q2", "a2", slots=second, user_id="u-1")
    names = ["B", "Z", "a", "ab", "m", "zz", "é"]  # JSONB's order puts "m" before "ab"
    assert list(returned.turns[0].slots) == ["B", "a", "zz", "é"]
    assert list(returned.turns[2].slots) == ["Z", "a", "ab", "m"]
    assert returned.current_slots == {**first, **second}
    assert list(returned.current_slots) == names
    assert_exact(tree(await cold(make_repo, "slots")), tree(returned))
    (shown,) = await transcripts(
        repo.engine, "slots", now=datetime.fromtimestamp(clock(), timezone.utc)
    )
    assert [list(turn.slots) for turn in shown.turns[::2]] == [
        ["B", "a", "zz", "é"],
        ["Z", "a", "ab", "m"],
    ]
    (exported,) = (await repo.export_user("u-1"))["conversations"]
    assert list(exported["current_slots"]) == names
    assert list(exported["turns"][0]["slots"]) == ["B", "a", "zz", "é"]

    state = await repo.get("slots")
    assert state is not None
    state.current_slots = {"y": "1", "x": "2"}
    await repo.update("slots", state)
    cached = await repo.get("slots")
    assert cached is not None
    assert_exact(cached.current_slots, {"x": "2", "y": "1"})
    assert_exact(tree(await cold(make_repo, "slots")), tree(cached))


async def test_export_and_import_keep_results_as_written(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str
) -> None:
    """An export holds results as written (key order, floats), slots in name order; imported
    into another database, the session reads back exactly as it did at the source."""
    results = [{"v": 1e20, "b": 1, "a": -0.0, "n": {"z": 1.0, "y": 10**30}}]
    repo = await make_repo()
    returned = await repo.add_turn("moved", "q", "a", slots={"b": "1", "a": "2"}, results=results)
    now = datetime.fromtimestamp(clock(), timezone.utc)
    out = io.StringIO()
    assert await export_conversations(url, out, now=now) == 1
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert_exact(record["turns"][0]["results"], results)
    assert list(record["turns"][0]["slots"]) == ["a", "b"]
    assert list(record["current_slots"]) == ["a", "b"]
    if backend != "sqlite":
        await upgrade_url(empty_url)
    counts = await import_conversations(empty_url, io.StringIO(out.getvalue()), now=now)
    assert counts.problems == []
    config = StoreConfig(database_url=empty_url, cleanup_interval=0, fast_path=FAST_PATH)
    async with SessionRepository(config, clock=clock) as there:
        moved = await there.get("moved")
    assert moved is not None
    assert_exact(tree(moved), tree(returned))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "is nan, which JSON cannot represent"),
        (float("inf"), "is inf, which JSON cannot represent"),
        (-float("inf"), "is -inf, which JSON cannot represent"),
        (10**4300, "is an int of more than 4,300 digits, which JSON readers refuse"),
        (-(10**5000), "is an int of more than 4,300 digits"),
    ],
    ids=["nan", "inf", "-inf", "4301-digits", "5001-digits"],
)
async def test_what_json_cannot_carry_is_an_invalid_turn_before_sql(
    repo: SessionRepository, sql: Sql, value: Any, message: str
) -> None:
    with pytest.raises(InvalidTurn, match=r"results\[0\]\['deep'\]\[1\] " + message):
        await repo.add_turn("refused", "q", "a", results=[{"deep": [0, value]}])
    assert await sql("SELECT count(*) FROM sessions") == [(0,)]
    assert await repo.get("refused") is None


@pytest.fixture
def int_digits_limit() -> Iterator[None]:
    """This process converts ints of at most 1,000 digits to text, as an application may set."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("int_digits_limit")
async def test_an_int_over_the_process_limit_is_an_invalid_turn(
    repo: SessionRepository, sql: Sql
) -> None:
    with pytest.raises(InvalidTurn, match="more than 1,000 digits, which this process does not"):
        await repo.add_turn("refused", "q", "a", results=[{"n": 10**1200}])
    assert await sql("SELECT count(*) FROM sessions") == [(0,)]


@pytest.fixture
async def icu_postgres_url() -> AsyncIterator[str]:
    """A migrated PostgreSQL database whose default collation is ICU's en-US (which sorts
    "a" before "B", unlike the code-point order of "C")."""
    import asyncpg

    admin = os.environ.get(POSTGRES_URL_ENV)
    if not admin:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set")
    parsed = make_url(admin)
    name = f"convostore_icu_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
    )
    try:
        await connection.execute(
            f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
            "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
        url = parsed.set(database=name).render_as_string(hide_password=False)
        await upgrade_url(url)
        yield url
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


@pytest.mark.postgresql
async def test_slot_order_does_not_depend_on_the_database_collation(
    icu_postgres_url: str,
) -> None:
    config = StoreConfig(database_url=icu_postgres_url, cleanup_interval=0, fast_path=FAST_PATH)
    async with SessionRepository(config) as writer, SessionRepository(config) as reader:
        returned = await writer.add_turn("icu", "q", "a", slots={"a": "1", "B": "2", "b": "3"})
        read = await reader.get("icu")
    assert list(returned.turns[0].slots) == ["B", "a", "b"]
    assert read is not None
    assert_exact(tree(read), tree(returned))
