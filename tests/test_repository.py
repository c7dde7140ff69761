"""SessionRepository behaviour on both backends: persistence, round-trips, slot merging,
get_or_create, update, caller-owned states, copied inputs, the LRU cache, sliding TTL expiry,
the sweep, delete, session-id checks, turn validation, stats and the dspy history."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, Protocol

import pytest
from _statements import count_statements

from convostore import (
    ConversationState,
    ConversationTurn,
    ConvostoreError,
    InvalidSessionId,
    InvalidTurn,
    SessionRepository,
)

MakeRepo = Callable[..., Awaitable[SessionRepository]]
Sql = Callable[..., Awaitable[list[Any]]]


class Clock(Protocol):
    now: float

    def advance(self, seconds: float) -> None: ...


ORDERED_TURNS = "SELECT seq, role, content FROM turns WHERE session_id = :sid ORDER BY seq"

QUESTION = "Welke archieven zijn er in ’s-Hertogenbosch? 🏛️"
RESOLVED = "Welke archieven zijn er in ’s-Hertogenbosch (Noord-Brabant)?"
ANSWER = "Er zijn er 3: het Erfgoedcentrum, het BHIC en café ‘De Ĳssel’ 🍺 — zie hieronder."
SLOTS = {"place": "’s-Hertogenbosch", "categorie_ë": "archief 📜", "leeg": ""}
RESULTS: list[dict[str, Any]] = [
    {
        "name": "Brabants Historisch Informatie Centrum",
        "plaats": "’s-Hertogenbosch",
        "score": 0.875,
        "count": 12,
        "big": 9007199254740993,
        "negative": -1.5,
        "open": True,
        "closed": False,
        "note": None,
        "tags": ["archief", "🏛️", 3, None, False, 2.5],
        "address": {"straat": "Zuid-Willemsvaart 2", "geo": {"lat": 51.69, "lon": 5.30}},
    },
    {"name": "Één ‘ĳzeren’ collectie ✓", "nested": [[1, 2], [{"a": {"b": [None, True, -7]}}]]},
    {},
]


def as_utc(value: Any) -> datetime:
    """A timestamp read with raw SQL (text on SQLite, timestamptz on PostgreSQL) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def contents(state: ConversationState | None) -> list[tuple[str, str]]:
    assert state is not None
    return [(turn.role, turn.content) for turn in state.turns]


def names_field(message: str, field: str) -> bool:
    """Whether ``message`` names ``field`` as a word of its own (``question`` is not named by
    ``resolved_question``)."""
    return re.search(rf"(?<![A-Za-z_]){re.escape(field)}(?![A-Za-z_])", message) is not None


def turn(**fields: Any) -> ConversationTurn:
    """A turn built without validation, so tests can hand the repository what pydantic would
    refuse (surrogates, non-string keys)."""
    values: dict[str, Any] = {
        "role": "user",
        "content": "vraag",
        "resolved_question": None,
        "template_id": None,
        "slots": {},
        "results": [],
        "created_at": None,
    }
    values.update(fields)
    return ConversationTurn.model_construct(**values)


async def count(sql: Sql, table: str, sid: str) -> int:
    rows = await sql(f"SELECT count(*) FROM {table} WHERE session_id = :sid", sid=sid)
    return int(rows[0][0])


# --- persistence and round-trips -------------------------------------------------------------


async def test_fresh_repository_sees_every_stored_field(make_repo: MakeRepo) -> None:
    """A session written by one repository comes back whole from a new one on the same URL."""
    first = await make_repo()
    sid = "restart-1"
    await first.add_turn(
        sid,
        QUESTION,
        ANSWER,
        resolved_question=RESOLVED,
        template_id="archives_in_place",
        slots=SLOTS,
        results=RESULTS,
    )
    state = await first.add_turn(sid, "En in Enschede?", "Daar is er één.", slots={"place": "E"})
    state.language = "en"
    state.current_template_id = "archives_overview"
    await first.update(sid, state)
    expected = await first.get(sid)
    assert expected is not None
    await first.stop()

    second = await make_repo()
    loaded = await second.get(sid)
    assert loaded is not None
    assert loaded.model_dump() == expected.model_dump()
    assert loaded.language == "en"
    assert loaded.current_template_id == "archives_overview"
    assert loaded.current_slots == {**SLOTS, "place": "E"}
    assert len(loaded.turns) == 4
    assert (await second.get_stats())["cache_misses"] == 1


async def test_add_turn_round_trips_every_turn_field(make_repo: MakeRepo) -> None:
    """Unicode text, slots and nested results come back unchanged from cache and database."""
    repo = await make_repo()
    sid = "round-trip"
    returned = await repo.add_turn(
        sid,
        QUESTION,
        ANSWER,
        resolved_question=RESOLVED,
        template_id="archives_in_place",
        slots=SLOTS,
        results=RESULTS,
    )
    cached = await repo.get(sid)
    fresh = await (await make_repo()).get(sid)
    for state in (returned, cached, fresh):
        assert state is not None
        user, assistant = state.turns
        assert user.role == "user"
        assert user.content == QUESTION
        assert user.resolved_question == RESOLVED
        assert user.template_id == "archives_in_place"
        assert user.slots == SLOTS
        assert user.results == RESULTS
        first = user.results[0]
        assert first["open"] is True
        assert first["closed"] is False
        assert first["note"] is None
        assert type(first["count"]) is int
        assert type(first["big"]) is int
        assert type(first["score"]) is float
        assert first["tags"][4] is False
        assert assistant.role == "assistant"
        assert assistant.content == ANSWER
        assert assistant.resolved_question is None
        assert assistant.template_id is None
        assert assistant.slots == {}
        assert assistant.results == []
        assert state.current_slots == SLOTS
        assert state.current_template_id == "archives_in_place"
        assert state.language is None


async def test_created_at_is_set_by_the_store_in_aware_utc(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """Every stored turn gets the store's time as a timezone-aware UTC datetime."""
    repo = await make_repo()
    sid = "stamped"
    t0 = clock.now
    await repo.add_turn(sid, "q1", "a1")
    clock.advance(30)
    returned = await repo.add_turn(sid, "q2", "a2")
    fresh = await (await make_repo()).get(sid)
    expected = [utc(t0), utc(t0), utc(t0 + 30), utc(t0 + 30)]
    for state in (returned, await repo.get(sid), fresh):
        assert state is not None
        stamps = [t.created_at for t in state.turns]
        assert stamps == expected
        for stamp in stamps:
            assert stamp is not None
            assert stamp.tzinfo is not None
            assert stamp.utcoffset() is not None
            assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    rows = await sql("SELECT created_at FROM turns WHERE session_id = :sid ORDER BY seq", sid=sid)
    assert [as_utc(row[0]) for row in rows] == expected


async def test_update_round_trips_session_fields(make_repo: MakeRepo) -> None:
    """language, current_template_id and current_slots written by update() come back."""
    repo = await make_repo()
    sid, state = await repo.get_or_create()
    state.language = "en"
    state.current_template_id = "museums_in_place"
    state.current_slots = {"place": "Enschede 🚲", "type": "museum"}
    await repo.update(sid, state)
    for loaded in (await repo.get(sid), await (await make_repo()).get(sid)):
        assert loaded is not None
        assert loaded.language == "en"
        assert loaded.current_template_id == "museums_in_place"
        assert loaded.current_slots == {"place": "Enschede 🚲", "type": "museum"}
        assert loaded.turns == []


# --- slot merging --------------------------------------------------------------------------


async def test_user_slots_merge_and_template_carries_over(make_repo: MakeRepo, sql: Sql) -> None:
    """User slots merge (later wins), template None keeps the last; assistants carry no slots."""
    repo = await make_repo()
    sid = "merge"
    s1 = await repo.add_turn(
        sid,
        "Welke archieven zijn er in Utrecht?",
        "Er zijn er 12.",
        template_id="archives_in_place",
        slots={"place": "Utrecht", "type": "archief"},
    )
    assert s1.current_slots == {"place": "Utrecht", "type": "archief"}
    assert s1.current_template_id == "archives_in_place"
    s2 = await repo.add_turn(
        sid,
        "En in Enschede?",
        "Daar is er één.",
        resolved_question="Welke archieven zijn er in Enschede?",
        slots={"place": "Enschede"},
    )
    assert s2.current_slots == {"place": "Enschede", "type": "archief"}
    assert s2.current_template_id == "archives_in_place"
    s3 = await repo.add_turn(
        sid, "En musea?", "Twee.", template_id="museums_in_place", slots={"type": "museum"}
    )
    fresh = await (await make_repo()).get(sid)
    for state in (s3, await repo.get(sid), fresh):
        assert state is not None
        assert state.current_slots == {"place": "Enschede", "type": "museum"}
        assert state.current_template_id == "museums_in_place"
        assert [t.slots for t in state.turns] == [
            {"place": "Utrecht", "type": "archief"},
            {},
            {"place": "Enschede"},
            {},
            {"type": "museum"},
            {},
        ]
        assert [t.template_id for t in state.turns] == [
            "archives_in_place",
            None,
            None,
            None,
            "museums_in_place",
            None,
        ]
    rows = await sql(
        "SELECT seq, name, value FROM turn_slots WHERE session_id = :sid ORDER BY seq, name",
        sid=sid,
    )
    assert [tuple(row) for row in rows] == [
        (1, "place", "Utrecht"),
        (1, "type", "archief"),
        (3, "place", "Enschede"),
        (5, "type", "museum"),
    ]


# --- get_or_create / get ---------------------------------------------------------------------


async def test_get_or_create_new_id_is_url_safe_and_unguessable(
    repo: SessionRepository, sql: Sql
) -> None:
    """A fresh id is URL-safe with at least 128 random bits, unique, and its session exists."""
    sid, state = await repo.get_or_create()
    other, _ = await repo.get_or_create()
    generated = {repo.generate_session_id() for _ in range(100)}
    for candidate in {sid, other, *generated}:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", candidate), candidate
        assert len(candidate) * 6 >= 128, candidate  # base64url: 6 bits per character
    assert sid != other
    assert len(generated) == 100
    assert state.turns == []
    assert state.current_slots == {}
    assert await count(sql, "sessions", sid) == 1
    assert (await repo.get_stats())["sessions_created"] == 2


async def test_get_or_create_existing_returns_its_turns(make_repo: MakeRepo) -> None:
    """get_or_create(sid) of a stored session returns that session, cached or not."""
    repo = await make_repo()
    sid = "bestaand"
    await repo.add_turn(sid, "q1", "a1", slots={"place": "Utrecht"})
    await repo.add_turn(sid, "q2", "a2")
    got_sid, state = await repo.get_or_create(sid)
    assert got_sid == sid
    assert contents(state) == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
    ]
    fresh = await make_repo()
    fresh_sid, fresh_state = await fresh.get_or_create(sid)
    assert fresh_sid == sid
    assert contents(fresh_state) == contents(state)
    assert fresh_state.current_slots == {"place": "Utrecht"}
    assert (await fresh.get_stats())["sessions_created"] == 0


async def test_get_or_create_unknown_id_creates_it_under_that_id(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """get_or_create of an unknown id creates an empty session under exactly that id, once."""
    repo = await make_repo()
    sid, state = await repo.get_or_create("mijn-sessie-1")
    assert sid == "mijn-sessie-1"
    assert state.turns == []
    assert await count(sql, "sessions", "mijn-sessie-1") == 1
    again_sid, _ = await repo.get_or_create("mijn-sessie-1")
    assert again_sid == "mijn-sessie-1"
    assert (await repo.get_stats())["sessions_created"] == 1
    fresh = await (await make_repo()).get("mijn-sessie-1")
    assert fresh is not None
    assert fresh.turns == []


async def test_get_of_unknown_session_returns_none_and_creates_nothing(
    repo: SessionRepository, sql: Sql
) -> None:
    """get() of an unknown id returns None and leaves no row behind."""
    assert await repo.get("onbekend") is None
    assert await repo.get("onbekend") is None
    assert (await sql("SELECT count(*) FROM sessions"))[0][0] == 0


# --- update ----------------------------------------------------------------------------------


async def test_update_appends_only_turns_added_since_handed_out(
    repo: SessionRepository, sql: Sql
) -> None:
    """update() stores the new turns after the stored ones, and nothing twice."""
    sid = "update-append"
    state = await repo.add_turn(sid, "q1", "a1")
    state.add_turn(ConversationTurn(role="user", content="q2", slots={"place": "Delft"}))
    state.add_turn(ConversationTurn(role="assistant", content="a2"))
    await repo.update(sid, state)
    expected = [
        (1, "user", "q1"),
        (2, "assistant", "a1"),
        (3, "user", "q2"),
        (4, "assistant", "a2"),
    ]
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)] == expected
    await repo.update(sid, state)
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)] == expected
    rows = await sql("SELECT seq, name, value FROM turn_slots WHERE session_id = :sid", sid=sid)
    assert [tuple(row) for row in rows] == [(3, "place", "Delft")]


async def test_update_keeps_turns_another_writer_appended(make_repo: MakeRepo, sql: Sql) -> None:
    """update() appends after turns a second repository stored meanwhile, deleting none."""
    first = await make_repo()
    second = await make_repo()
    sid = "two-writers"
    state = await first.add_turn(sid, "q1", "a1")
    await second.add_turn(sid, "qB", "aB")
    state.add_turn(ConversationTurn(role="user", content="qA"))
    state.add_turn(ConversationTurn(role="assistant", content="aA"))
    await first.update(sid, state)
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)] == [
        (1, "user", "q1"),
        (2, "assistant", "a1"),
        (3, "user", "qB"),
        (4, "assistant", "aB"),
        (5, "user", "qA"),
        (6, "assistant", "aA"),
    ]
    expected = ["q1", "a1", "qB", "aB", "qA", "aA"]
    after_write = await first.get(sid)
    assert after_write is not None
    assert [t.content for t in after_write.turns] == expected
    fresh = await (await make_repo()).get(sid)
    assert fresh is not None
    assert [t.content for t in fresh.turns] == expected


async def test_update_never_deletes_or_rewrites_stored_turns(make_repo: MakeRepo, sql: Sql) -> None:
    """Dropping or replacing stored turns in the caller's state changes no stored turn; a
    replacement is a turn the store never handed out, so it is appended as new."""
    repo = await make_repo()
    sid = "no-rewrite"
    await repo.add_turn(sid, "q1", "a1")
    state = await repo.add_turn(sid, "q2", "a2")
    del state.turns[0]
    state.turns[0] = ConversationTurn(role="assistant", content="herschreven")
    await repo.update(sid, state)
    expected = [
        (1, "user", "q1"),
        (2, "assistant", "a1"),
        (3, "user", "q2"),
        (4, "assistant", "a2"),
        (5, "assistant", "herschreven"),
    ]
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)] == expected
    assert contents(await repo.get(sid)) == [(role, text) for _, role, text in expected]
    assert contents(await (await make_repo()).get(sid)) == [(r, t) for _, r, t in expected]


async def test_update_after_trimming_the_history_appends_the_new_turn(
    repo: SessionRepository, sql: Sql
) -> None:
    """A caller that keeps only a window of the history and adds a turn loses nothing: the new
    turn is appended after all stored turns."""
    sid = "window"
    await repo.add_turn(sid, "q1", "a1")
    state = await repo.add_turn(sid, "q2", "a2")
    state.turns = state.turns[-1:]
    state.add_turn(ConversationTurn(role="user", content="q3"))
    await repo.update(sid, state)
    rows = [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)]
    assert rows[-1] == (5, "user", "q3")
    assert len(rows) == 5
    assert [t.content for t in state.turns] == ["a2", "q3"]
    assert state.turns[-1].created_at is not None


async def test_update_session_fields_last_writer_wins(make_repo: MakeRepo) -> None:
    """Two repositories updating the session fields: the later update's values are stored."""
    first = await make_repo()
    second = await make_repo()
    sid = "lww"
    await first.add_turn(sid, "q", "a", slots={"place": "Utrecht"}, template_id="t0")
    mine = await first.get(sid)
    theirs = await second.get(sid)
    assert mine is not None
    assert theirs is not None
    mine.current_slots = {"place": "Leiden", "type": "archief"}
    mine.current_template_id = "t_first"
    mine.language = "en"
    await first.update(sid, mine)
    theirs.current_slots = {"place": "Delft"}
    theirs.current_template_id = "t_second"
    theirs.language = "de"
    await second.update(sid, theirs)
    fresh = await (await make_repo()).get(sid)
    assert fresh is not None
    assert fresh.current_slots == {"place": "Delft"}
    assert fresh.current_template_id == "t_second"
    assert fresh.language == "de"
    assert contents(fresh) == [("user", "q"), ("assistant", "a")]


async def test_update_of_unknown_id_creates_session_with_all_turns(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """update() of an unknown id creates it holding every turn and field of the state."""
    repo = await make_repo()
    state = ConversationState(language="en")
    state.add_turn(
        ConversationTurn(
            role="user",
            content="q1",
            template_id="t1",
            slots={"place": "Leiden"},
            results=[{"n": 1}],
        )
    )
    state.add_turn(ConversationTurn(role="assistant", content="a1"))
    state.add_turn(ConversationTurn(role="user", content="q2", resolved_question="r2"))
    await repo.update("nieuw-via-update", state)
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid="nieuw-via-update")] == [
        (1, "user", "q1"),
        (2, "assistant", "a1"),
        (3, "user", "q2"),
    ]
    assert (await repo.get_stats())["sessions_created"] == 1
    fresh = await (await make_repo()).get("nieuw-via-update")
    assert fresh is not None
    assert contents(fresh) == [("user", "q1"), ("assistant", "a1"), ("user", "q2")]
    assert fresh.turns[0].slots == {"place": "Leiden"}
    assert fresh.turns[0].results == [{"n": 1}]
    assert fresh.turns[2].resolved_question == "r2"
    assert fresh.current_slots == {"place": "Leiden"}
    assert fresh.current_template_id == "t1"
    assert fresh.language == "en"


async def test_update_stamps_created_at_on_the_states_turns(
    repo: SessionRepository, clock: Clock
) -> None:
    """After update() the caller's state holds its new turns with the store's created_at."""
    sid = "stamp-update"
    t0 = clock.now
    state = await repo.add_turn(sid, "q1", "a1")
    clock.advance(42)
    state.add_turn(ConversationTurn(role="user", content="q2"))
    state.add_turn(ConversationTurn(role="assistant", content="a2"))
    assert state.turns[2].created_at is None
    await repo.update(sid, state)
    assert [t.created_at for t in state.turns] == [utc(t0), utc(t0), utc(t0 + 42), utc(t0 + 42)]
    assert [t.content for t in state.turns] == ["q1", "a1", "q2", "a2"]


# --- caller-owned states and copied inputs -------------------------------------------------


async def test_changing_a_returned_state_changes_neither_cache_nor_database(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """States from add_turn/get/get_or_create are the caller's: changes stay local until update."""
    repo = await make_repo()
    sid = "owned"
    returned = await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"}, template_id="t")
    got = await repo.get(sid)
    _, via_get_or_create = await repo.get_or_create(sid)
    for state in (returned, got, via_get_or_create):
        assert state is not None
        state.add_turn(ConversationTurn(role="user", content="lokaal", slots={"place": "Delft"}))
        state.current_slots["extra"] = "x"
        state.current_template_id = "ander"
        state.language = "en"
    again = await repo.get(sid)
    fresh = await (await make_repo()).get(sid)
    for state in (again, fresh):
        assert contents(state) == [("user", "q"), ("assistant", "a")]
        assert state is not None
        assert state.current_slots == {"place": "Utrecht"}
        assert state.current_template_id == "t"
        assert state.language is None
    assert await count(sql, "turns", sid) == 2
    rows = await sql(
        "SELECT current_template_id, language FROM sessions WHERE session_id = :sid", sid=sid
    )
    assert tuple(rows[0]) == ("t", None)


async def test_changing_a_new_sessions_state_does_not_reach_the_cache(
    repo: SessionRepository,
) -> None:
    """The empty state get_or_create() hands out is a copy, not the cached state."""
    sid, state = await repo.get_or_create()
    state.add_turn(ConversationTurn(role="user", content="lokaal", slots={"k": "v"}))
    state.current_template_id = "t"
    again = await repo.get(sid)
    assert again is not None
    assert again.turns == []
    assert again.current_slots == {}
    assert again.current_template_id is None


async def test_add_turn_copies_slots_and_results(make_repo: MakeRepo) -> None:
    """Changing the slots dict or results list after add_turn changes nothing stored or cached."""
    repo = await make_repo()
    sid = "copied-inputs"
    slots = {"place": "Utrecht"}
    results: list[dict[str, Any]] = [{"name": "A", "tags": ["x"], "geo": {"lat": 1.5}}]
    original_slots = dict(slots)
    original_results = copy.deepcopy(results)
    await repo.add_turn(sid, "q", "a", slots=slots, results=results)
    slots["place"] = "Delft"
    slots["new"] = "y"
    results[0]["name"] = "B"
    results[0]["tags"].append("y")
    results[0]["geo"]["lat"] = 2.5
    results.append({"extra": True})
    for state in (await repo.get(sid), await (await make_repo()).get(sid)):
        assert state is not None
        assert state.turns[0].slots == original_slots
        assert state.turns[0].results == original_results
        assert state.current_slots == original_slots


async def test_update_copies_turns_and_current_slots(make_repo: MakeRepo) -> None:
    """Changing a turn's dicts or current_slots after update() changes nothing stored or cached."""
    repo = await make_repo()
    sid, state = await repo.get_or_create()
    added = ConversationTurn(
        role="user", content="q", slots={"place": "Gouda"}, results=[{"n": [1]}]
    )
    state.add_turn(added)
    state.current_slots = {"place": "Gouda", "type": "kaas"}
    await repo.update(sid, state)
    added.slots["place"] = "Edam"
    added.results[0]["n"].append(2)
    added.results.append({"extra": 1})
    state.current_slots["place"] = "Edam"
    for loaded in (await repo.get(sid), await (await make_repo()).get(sid)):
        assert loaded is not None
        assert loaded.turns[0].slots == {"place": "Gouda"}
        assert loaded.turns[0].results == [{"n": [1]}]
        assert loaded.current_slots == {"place": "Gouda", "type": "kaas"}


# --- LRU cache -----------------------------------------------------------------------------


async def test_lru_evicts_beyond_max_sessions(make_repo: MakeRepo) -> None:
    """With max_sessions=3, creating 5 sessions evicts the 2 least recently used."""
    repo = await make_repo(max_sessions=3)
    for index in range(5):
        await repo.add_turn(f"lru-{index}", f"q{index}", f"a{index}")
    stats = await repo.get_stats()
    assert stats["sessions_created"] == 5
    assert stats["sessions_evicted"] == 2
    assert stats["cached_sessions"] == 3
    assert stats["active_sessions"] == 3


async def test_evicted_session_is_loaded_again_from_the_database(make_repo: MakeRepo) -> None:
    """An evicted session is a cache miss that reloads all its turns; a cached one is a hit."""
    repo = await make_repo(max_sessions=3)
    await repo.add_turn("lru-0", "q0", "a0", slots={"place": "Utrecht"})
    await repo.add_turn("lru-0", "q0b", "a0b")
    for index in range(1, 5):
        await repo.add_turn(f"lru-{index}", f"q{index}", f"a{index}")
    before = await repo.get_stats()
    reloaded = await repo.get("lru-0")
    after = await repo.get_stats()
    assert contents(reloaded) == [
        ("user", "q0"),
        ("assistant", "a0"),
        ("user", "q0b"),
        ("assistant", "a0b"),
    ]
    assert reloaded is not None
    assert reloaded.current_slots == {"place": "Utrecht"}
    assert after["cache_misses"] == before["cache_misses"] + 1
    assert after["sessions_evicted"] == 3
    assert after["cached_sessions"] == 3
    hit = await repo.get("lru-0")
    assert contents(hit) == contents(reloaded)
    assert (await repo.get_stats())["cache_hits"] == after["cache_hits"] + 1


async def test_cache_hit_runs_no_sql(repo: SessionRepository) -> None:
    """A get() served from the cache sends no statement to the database."""
    sid = "hit"
    await repo.add_turn(sid, "q", "a")
    with count_statements(repo.engine) as during_hit:
        state = await repo.get(sid)
        _, same = await repo.get_or_create(sid)
    assert during_hit == []
    assert contents(state) == [("user", "q"), ("assistant", "a")]
    assert contents(same) == contents(state)
    assert (await repo.get_stats())["cache_hits"] == 2
    with count_statements(repo.engine) as during_miss:
        assert await repo.get("not-cached") is None
    assert during_miss, "the statement counter must see SQL on a miss"


# --- TTL expiry ----------------------------------------------------------------------------


async def test_sliding_expiry_reads_keep_a_session_alive(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """Reads after ttl/10 slide expires_at in the db; without reads the session and (without
    transcript retention) its rows go."""
    repo = await make_repo(session_ttl=100, transcript_retention=0, refresh_delay=0)
    sid = "sliding"
    t0 = clock.now
    await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"})
    clock.advance(60)
    assert await repo.get(sid) is not None
    rows = await sql(
        "SELECT last_accessed, expires_at FROM sessions WHERE session_id = :sid", sid=sid
    )
    assert as_utc(rows[0][0]) == utc(t0 + 60)
    assert as_utc(rows[0][1]) == utc(t0 + 160)
    clock.advance(60)  # t0 + 120: past the original expiry, inside the slid one
    state = await repo.get(sid)
    assert contents(state) == [("user", "q"), ("assistant", "a")]
    clock.advance(101)  # t0 + 221: more than ttl after the last read
    assert await repo.get(sid) is None
    assert await count(sql, "sessions", sid) == 0
    assert await count(sql, "turns", sid) == 0
    assert await count(sql, "turn_slots", sid) == 0
    assert (await repo.get_stats())["sessions_expired"] == 1


async def test_read_within_a_tenth_of_ttl_does_not_write(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """Reads within ttl/10 (hit or cold load) write nothing; a read after ttl/10 refreshes."""
    repo = await make_repo(session_ttl=100, refresh_delay=0)
    sid = "no-write"
    t0 = clock.now
    await repo.add_turn(sid, "q", "a")
    query = "SELECT last_accessed, expires_at FROM sessions WHERE session_id = :sid"
    clock.advance(5)
    with count_statements(repo.engine) as hit_statements:
        assert await repo.get(sid) is not None
    assert hit_statements == []
    other = await make_repo(session_ttl=100, refresh_delay=0)
    clock.advance(4)  # t0 + 9
    with count_statements(other.engine) as cold_statements:
        assert await other.get(sid) is not None
    assert cold_statements
    assert not [s for s in cold_statements if s.lstrip().upper().startswith("UPDATE")]
    rows = await sql(query, sid=sid)
    assert (as_utc(rows[0][0]), as_utc(rows[0][1])) == (utc(t0), utc(t0 + 100))
    clock.advance(2)  # t0 + 11: the other repository's cached copy is now stale
    assert await other.get(sid) is not None
    rows = await sql(query, sid=sid)
    assert (as_utc(rows[0][0]), as_utc(rows[0][1])) == (utc(t0 + 11), utc(t0 + 111))


async def test_sweep_deletes_expired_sessions_only(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """sweep_expired() deletes expired sessions' rows and cache entries, sparing live ones."""
    repo = await make_repo(session_ttl=100, transcript_retention=0)
    old = [f"old-{i}" for i in range(3)]
    new = [f"new-{i}" for i in range(2)]
    for sid in old:
        await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"})
    clock.advance(60)
    for sid in new:
        await repo.add_turn(sid, "q", "a", slots={"place": "Delft"})
    clock.advance(50)
    assert (await repo.get_stats())["cached_sessions"] == 5
    assert await repo.sweep_expired() == 3
    remaining = {row[0] for row in await sql("SELECT session_id FROM sessions")}
    assert remaining == set(new)
    assert {row[0] for row in await sql("SELECT DISTINCT session_id FROM turns")} == set(new)
    assert {row[0] for row in await sql("SELECT DISTINCT session_id FROM turn_slots")} == set(new)
    stats = await repo.get_stats()
    assert stats["cached_sessions"] == 2
    assert stats["sessions_expired"] == 3
    assert contents(await repo.get(new[0])) == [("user", "q"), ("assistant", "a")]
    assert await repo.get(old[0]) is None
    assert await repo.sweep_expired() == 0


async def test_sweep_in_small_batches_deletes_every_expired_session(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """With sweep_batch_size=2, one sweep still deletes all 5 expired sessions."""
    repo = await make_repo(session_ttl=100, sweep_batch_size=2, transcript_retention=0)
    for index in range(5):
        await repo.add_turn(f"batch-{index}", "q", "a", slots={"k": "v"})
    clock.advance(101)
    assert await repo.sweep_expired() == 5
    assert (await sql("SELECT count(*) FROM sessions"))[0][0] == 0
    assert (await sql("SELECT count(*) FROM turns"))[0][0] == 0
    assert (await sql("SELECT count(*) FROM turn_slots"))[0][0] == 0
    assert (await repo.get_stats())["cached_sessions"] == 0


async def test_add_turn_on_expired_unswept_session_starts_fresh(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """add_turn to an expired session that was never swept starts a new, empty session."""
    repo = await make_repo(session_ttl=100, transcript_retention=0)
    sid = "herboren"
    await repo.add_turn(sid, "oud", "oud antwoord", template_id="t_old", slots={"place": "Utrecht"})
    clock.advance(101)
    state = await repo.add_turn(sid, "nieuw", "nieuw antwoord", slots={"type": "museum"})
    fresh = await (await make_repo(session_ttl=100, transcript_retention=0)).get(sid)
    for loaded in (state, await repo.get(sid), fresh):
        assert contents(loaded) == [("user", "nieuw"), ("assistant", "nieuw antwoord")]
        assert loaded is not None
        assert loaded.current_slots == {"type": "museum"}
        assert loaded.current_template_id is None
    assert [tuple(row) for row in await sql(ORDERED_TURNS, sid=sid)] == [
        (1, "user", "nieuw"),
        (2, "assistant", "nieuw antwoord"),
    ]
    rows = await sql("SELECT name, value FROM turn_slots WHERE session_id = :sid", sid=sid)
    assert [tuple(row) for row in rows] == [("type", "museum")]


async def test_get_or_create_of_expired_session_starts_an_empty_one(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """get_or_create() of an expired, unswept id returns a new empty session under that id."""
    repo = await make_repo(session_ttl=100, transcript_retention=0)
    sid = "verlopen-maar-terug"
    await repo.add_turn(sid, "oud", "oud antwoord", slots={"place": "Utrecht"}, template_id="t")
    clock.advance(101)
    got_sid, state = await repo.get_or_create(sid)
    assert got_sid == sid
    assert state.turns == []
    assert state.current_slots == {}
    assert state.current_template_id is None
    assert await count(sql, "sessions", sid) == 1
    assert await count(sql, "turns", sid) == 0
    assert await count(sql, "turn_slots", sid) == 0
    stats = await repo.get_stats()
    assert stats["sessions_expired"] == 1
    assert stats["sessions_created"] == 2
    fresh = await (await make_repo(session_ttl=100)).get(sid)
    assert fresh is not None
    assert fresh.turns == []


async def test_expired_session_is_gone_for_a_repository_that_cached_it(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """A second repository's cached copy does not outlive the session's expiry."""
    writer = await make_repo(session_ttl=100, transcript_retention=0)
    reader = await make_repo(session_ttl=100, transcript_retention=0)
    sid = "shared-expiry"
    await writer.add_turn(sid, "q", "a")
    assert await reader.get(sid) is not None
    assert (await reader.get_stats())["cached_sessions"] == 1
    clock.advance(101)
    with count_statements(reader.engine) as statements:
        assert await reader.get(sid) is None
    assert statements, "an expired cached copy must be checked against the database"
    assert await writer.get(sid) is None
    assert await count(sql, "sessions", sid) == 0
    assert await count(sql, "turns", sid) == 0
    assert (await reader.get_stats())["cached_sessions"] == 0


# --- delete --------------------------------------------------------------------------------


async def test_delete_live_session(make_repo: MakeRepo, sql: Sql) -> None:
    """delete() of a live session returns True, removes its rows and its cache entry."""
    repo = await make_repo(transcript_retention=0)
    sid = "weg"
    await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"})
    await repo.add_turn("blijft", "q", "a")
    assert (await repo.get_stats())["cached_sessions"] == 2
    assert await repo.delete(sid) is True
    assert (await repo.get_stats())["cached_sessions"] == 1
    assert await repo.get(sid) is None
    assert await (await make_repo()).get(sid) is None
    for table in ("sessions", "turns", "turn_slots"):
        assert await count(sql, table, sid) == 0
    assert await count(sql, "turns", "blijft") == 2
    assert await repo.delete(sid) is False


async def test_delete_unknown_session_returns_false(repo: SessionRepository, sql: Sql) -> None:
    """delete() of an id that was never stored returns False and touches no other session."""
    await repo.add_turn("ander", "q", "a")
    assert await repo.delete("nooit-gezien") is False
    assert await count(sql, "turns", "ander") == 2


async def test_delete_expired_unswept_session_returns_false_and_removes_rows(
    make_repo: MakeRepo, sql: Sql, clock: Clock
) -> None:
    """delete() of an expired, unswept session returns False but still removes its rows."""
    repo = await make_repo(session_ttl=100, transcript_retention=0)
    sid = "verlopen"
    await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"})
    clock.advance(101)
    assert await count(sql, "sessions", sid) == 1
    assert await repo.delete(sid) is False
    for table in ("sessions", "turns", "turn_slots"):
        assert await count(sql, table, sid) == 0
    assert (await repo.get_stats())["cached_sessions"] == 0


# --- session ids ---------------------------------------------------------------------------

BAD_IDS: list[Any] = ["", "x" * 129, "caf\u00e9", "a\nb", "a\x00b", "tab\there", None]


@pytest.mark.parametrize("method", ["get", "get_or_create", "add_turn", "update", "delete"])
async def test_bad_session_ids_are_refused_before_any_sql(
    repo: SessionRepository, sql: Sql, method: str
) -> None:
    """Empty, too long, non-printable-ASCII and None ids raise InvalidSessionId, running no SQL."""
    calls: dict[str, Callable[[Any], Awaitable[object]]] = {
        "get": lambda sid: repo.get(sid),
        "get_or_create": lambda sid: repo.get_or_create(sid),
        "add_turn": lambda sid: repo.add_turn(sid, "q", "a"),
        "update": lambda sid: repo.update(sid, ConversationState()),
        "delete": lambda sid: repo.delete(sid),
    }
    call = calls[method]
    # get_or_create(None) means "make me a new id", so None is a bad id everywhere else only.
    bad_ids = [bad for bad in BAD_IDS if not (method == "get_or_create" and bad is None)]
    with count_statements(repo.engine) as statements:
        for bad in bad_ids:
            with pytest.raises(InvalidSessionId) as raised:
                await call(bad)
            assert isinstance(raised.value, ValueError)
            assert isinstance(raised.value, ConvostoreError)
    assert statements == []
    assert (await sql("SELECT count(*) FROM sessions"))[0][0] == 0
    with count_statements(repo.engine) as valid_statements:
        await call("x" * 128)
    assert valid_statements, "a valid id must reach the database"


async def test_longest_and_punctuated_ids_are_valid(make_repo: MakeRepo) -> None:
    """128 printable ASCII characters, spaces and punctuation included, form a usable id."""
    repo = await make_repo()
    ids = ["x" * 128, " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "a b"]
    for sid in ids:
        await repo.add_turn(sid, f"q {sid}", "a")
    fresh = await make_repo()
    for sid in ids:
        assert contents(await fresh.get(sid)) == [("user", f"q {sid}"), ("assistant", "a")]


async def test_session_ids_match_case_sensitively(make_repo: MakeRepo, sql: Sql) -> None:
    """ "ABC" and "abc" are two different sessions."""
    repo = await make_repo()
    await repo.add_turn("ABC", "hoofdletters", "a")
    fresh = await make_repo()
    assert await fresh.get("abc") is None
    await fresh.add_turn("abc", "kleine letters", "a")
    other = await make_repo()
    assert contents(await other.get("ABC")) == [("user", "hoofdletters"), ("assistant", "a")]
    assert contents(await other.get("abc")) == [("user", "kleine letters"), ("assistant", "a")]
    assert await other.delete("abc") is True
    assert await count(sql, "turns", "ABC") == 2


async def test_session_ids_are_not_trimmed(make_repo: MakeRepo, sql: Sql) -> None:
    """ "abc " (trailing space) and "abc" are two different sessions."""
    repo = await make_repo()
    await repo.add_turn("abc", "zonder spatie", "a")
    fresh = await make_repo()
    assert await fresh.get("abc ") is None
    assert await fresh.get(" abc") is None
    await fresh.add_turn("abc ", "met spatie", "a")
    other = await make_repo()
    assert contents(await other.get("abc")) == [("user", "zonder spatie"), ("assistant", "a")]
    assert contents(await other.get("abc ")) == [("user", "met spatie"), ("assistant", "a")]
    assert await count(sql, "sessions", "abc") == 1
    assert await count(sql, "sessions", "abc ") == 1


async def test_wildcard_characters_in_ids_match_nothing_else(make_repo: MakeRepo, sql: Sql) -> None:
    """Ids with % and _ are matched literally, never as LIKE patterns."""
    repo = await make_repo()
    await repo.add_turn("abc", "q", "a")
    fresh = await make_repo()
    for pattern in ("%", "_", "a_c", "ab%", "___"):
        assert await fresh.get(pattern) is None, pattern
    assert await fresh.delete("%") is False
    assert await fresh.delete("a_c") is False
    state = await fresh.add_turn("_bc", "eigen vraag", "a")
    assert contents(state) == [("user", "eigen vraag"), ("assistant", "a")]
    assert await count(sql, "turns", "abc") == 2
    assert await count(sql, "turns", "_bc") == 2


# --- invalid turns -------------------------------------------------------------------------

NUL = "\x00"
SURROGATE = "\ud800"
WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)

INVALID_ADD_TURN: list[tuple[dict[str, Any], str]] = [
    ({"question": f"a{NUL}b"}, "question"),
    ({"question": SURROGATE}, "question"),
    ({"answer": f"a{NUL}b"}, "answer"),
    ({"answer": f"x{SURROGATE}"}, "answer"),
    ({"resolved_question": NUL}, "resolved_question"),
    ({"resolved_question": "\udfff"}, "resolved_question"),
    ({"template_id": f"t{NUL}"}, "template_id"),
    ({"template_id": SURROGATE}, "template_id"),
    ({"slots": {f"pla{NUL}ce": "Utrecht"}}, "slots"),
    ({"slots": {SURROGATE: "Utrecht"}}, "slots"),
    ({"slots": {"place": f"Utr{NUL}echt"}}, "slots"),
    ({"slots": {"place": SURROGATE}}, "slots"),
    ({"results": [{"name": f"a{NUL}"}]}, "results"),
    ({"results": [{"name": ["ok", SURROGATE]}]}, "results"),
    ({"results": [{f"na{NUL}me": "x"}]}, "results"),
    ({"results": [{SURROGATE: "x"}]}, "results"),
    ({"results": [{"tags": {"a", "b"}}]}, "results"),
    ({"results": [{"when": WHEN}]}, "results"),
    ({"results": [{"score": float("nan")}]}, "results"),
    ({"results": [{"score": float("inf")}]}, "results"),
    ({"results": [{1: "x"}]}, "results"),
    ({"results": [{"deep": {"deeper": [{2: "x"}]}}]}, "results"),
]


async def test_invalid_turn_in_add_turn_is_refused_before_any_sql(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """Bad text or results in add_turn raise InvalidTurn naming the field, before any SQL."""
    repo = await make_repo()
    sid = "valid"
    await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"}, results=[{"n": 1}])
    with count_statements(repo.engine) as statements:
        for overrides, field in INVALID_ADD_TURN:
            for target in (sid, "nog-niet-bestaand"):
                arguments: dict[str, Any] = {"question": "vraag", "answer": "antwoord"}
                arguments.update(overrides)
                question = arguments.pop("question")
                answer = arguments.pop("answer")
                with pytest.raises(InvalidTurn) as raised:
                    await repo.add_turn(target, question, answer, **arguments)
                assert isinstance(raised.value, ConvostoreError)
                assert isinstance(raised.value, ValueError)
                message = str(raised.value)
                assert names_field(message, field), (overrides, message)
    assert statements == []
    for state in (await repo.get(sid), await (await make_repo()).get(sid)):
        assert contents(state) == [("user", "q"), ("assistant", "a")]
        assert state is not None
        assert state.current_slots == {"place": "Utrecht"}
        assert state.turns[0].results == [{"n": 1}]
    assert [row[0] for row in await sql("SELECT session_id FROM sessions")] == [sid]
    assert await count(sql, "turns", sid) == 2


INVALID_UPDATE_TURNS: list[tuple[ConversationTurn, str]] = [
    (turn(content=f"a{NUL}b"), "content"),
    (turn(content=SURROGATE), "content"),
    (turn(role="assistant", content=f"x{SURROGATE}y"), "content"),
    (turn(resolved_question=NUL), "resolved_question"),
    (turn(resolved_question=SURROGATE), "resolved_question"),
    (turn(template_id=f"t{NUL}"), "template_id"),
    (turn(template_id=SURROGATE), "template_id"),
    (turn(slots={f"n{NUL}": "v"}), "slots"),
    (turn(slots={SURROGATE: "v"}), "slots"),
    (turn(slots={"place": NUL}), "slots"),
    (turn(slots={"place": SURROGATE}), "slots"),
    (turn(results=[{"name": NUL}]), "results"),
    (turn(results=[{"name": [SURROGATE]}]), "results"),
    (turn(results=[{NUL: 1}]), "results"),
    (turn(results=[{"tags": {1, 2}}]), "results"),
    (turn(results=[{"when": WHEN}]), "results"),
    (turn(results=[{"score": float("nan")}]), "results"),
    (turn(results=[{3: "x"}]), "results"),
]


async def test_invalid_turn_in_update_is_refused_before_any_sql(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """A bad turn or current_slots in update() raises InvalidTurn naming it, before any SQL."""
    repo = await make_repo()
    sid = "valid-update"
    await repo.add_turn(sid, "q", "a", slots={"place": "Utrecht"})
    states: list[ConversationState] = []
    for bad, _ in INVALID_UPDATE_TURNS:
        state = await repo.get(sid)
        assert state is not None
        state.add_turn(ConversationTurn(role="user", content="goed"))
        state.add_turn(bad)
        states.append(state)
    bad_slots = await repo.get(sid)
    assert bad_slots is not None
    bad_slots.current_slots["place"] = f"Utr{NUL}echt"
    with count_statements(repo.engine) as statements:
        for state, (bad, field) in zip(states, INVALID_UPDATE_TURNS, strict=True):
            with pytest.raises(InvalidTurn) as raised:
                await repo.update(sid, state)
            assert isinstance(raised.value, ConvostoreError)
            assert isinstance(raised.value, ValueError)
            assert names_field(str(raised.value), field), (bad, str(raised.value))
        with pytest.raises(InvalidTurn) as raised:
            await repo.update(sid, bad_slots)
        assert names_field(str(raised.value), "current_slots"), str(raised.value)
        with pytest.raises(InvalidTurn):
            await repo.update("nieuw", ConversationState(turns=[turn(content=NUL)]))
    assert statements == []
    for loaded in (await repo.get(sid), await (await make_repo()).get(sid)):
        assert contents(loaded) == [("user", "q"), ("assistant", "a")]
        assert loaded is not None
        assert loaded.current_slots == {"place": "Utrecht"}
    assert await count(sql, "turns", sid) == 2
    assert await count(sql, "sessions", "nieuw") == 0


# --- stats and history ---------------------------------------------------------------------


async def test_get_stats_reports_every_counter(make_repo: MakeRepo, clock: Clock) -> None:
    """get_stats() has every documented key, and each counter moves with what happened."""
    repo = await make_repo(max_sessions=2, session_ttl=100)
    keys = {
        "sessions_created",
        "sessions_expired",
        "sessions_evicted",
        "cache_hits",
        "cache_misses",
        "cached_sessions",
        "active_sessions",
    }
    start = await repo.get_stats()
    assert keys <= set(start)
    assert all(start[key] == 0 for key in keys)
    sid, _ = await repo.get_or_create()
    await repo.add_turn("tweede", "q", "a")
    assert await repo.get(sid) is not None
    assert await repo.get("onbekend") is None
    await repo.add_turn("derde", "q", "a")
    stats = await repo.get_stats()
    assert stats["sessions_created"] == 3
    assert stats["cache_hits"] == 1
    assert stats["cache_misses"] == 1
    assert stats["sessions_evicted"] == 1
    assert stats["cached_sessions"] == 2
    assert stats["active_sessions"] == 2
    assert stats["sessions_expired"] == 0
    clock.advance(101)
    assert await repo.get("derde") is None
    assert await repo.sweep_expired() == 2
    stats = await repo.get_stats()
    assert stats["sessions_expired"] == 3
    assert stats["cached_sessions"] == 0
    assert stats["active_sessions"] == 0
    assert stats["cache_misses"] == 2


async def test_to_dspy_history_of_a_loaded_state(make_repo: MakeRepo) -> None:
    """A loaded state's history has the last 6 turns, preferring the resolved question."""
    repo = await make_repo()
    sid = "history"
    await repo.add_turn(sid, "Welke archieven zijn er in Utrecht?", "Er zijn er 12.")
    await repo.add_turn(
        sid,
        "En in Enschede?",
        "Daar is er één.",
        resolved_question="Welke archieven zijn er in Enschede?",
    )
    await repo.add_turn(sid, "En musea?", "Drie.", resolved_question="Welke musea in Enschede?")
    await repo.add_turn(sid, "Bedankt!", "Graag gedaan 😊")
    state = await (await make_repo()).get(sid)
    assert state is not None
    history = state.to_dspy_history()
    expected = [
        {"role": "user", "content": "Welke archieven zijn er in Enschede?"},
        {"role": "assistant", "content": "Daar is er één."},
        {"role": "user", "content": "Welke musea in Enschede?"},
        {"role": "assistant", "content": "Drie."},
        {"role": "user", "content": "Bedankt!"},
        {"role": "assistant", "content": "Graag gedaan 😊"},
    ]
    if importlib.util.find_spec("dspy") is None:
        assert history == {"messages": expected}
    else:
        assert history.messages == expected


async def test_list_sessions_pages_newest_first(make_repo: MakeRepo, clock: Clock) -> None:
    """list_sessions lists only the user's conversations, live and ended, newest first, and
    pages with ``before``. On PostgreSQL the first page once failed: its implicit ``before``
    (2**62, above every conversation id) went to asyncpg as an int32 parameter."""
    repo = await make_repo()
    await repo.add_turn("oud", "Eerste?", "Ja.", user_id="dana")
    assert await repo.delete("oud")
    clock.advance(1)
    await repo.add_turn("nieuw", "Tweede?", "Ja.", user_id="dana")
    await repo.add_turn("anders", "Van een ander?", "Ja.", user_id="erik")

    first = await repo.list_sessions("dana", limit=1)
    assert [(c.session_id, c.live, c.turns) for c in first] == [("nieuw", True, 2)]
    rest = await repo.list_sessions("dana", before=first[0].conversation_id)
    assert [(c.session_id, c.live, c.turns) for c in rest] == [("oud", False, 2)]
    assert [c.session_id for c in await repo.list_sessions("dana")] == ["nieuw", "oud"]
