"""Transcript export and import (``convostore._ops.transfer``), and the import of the original
SessionManager's Redis entries, on both backends.

The Redis tests run against the real Redis at env ``CONVOSTORE_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379``), in its database env ``CONVOSTORE_TEST_REDIS_DB`` (default 13),
which they empty before and after each test; a database that holds keys of anyone else is
never emptied: the tests skip, saying so. Entries are written by the original manager's own
code (``../shared/seed/session_manager.py`` or env ``CONVOSTORE_SEED_PATH``). They are
skipped, saying why, when Redis cannot be reached or the original's source is not there.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import FakeClock, MakeRepo, Sql
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.baselines import load_seed, seed_path
from bench.transfer import fill
from convostore import (
    ConfigError,
    InvalidSessionId,
    InvalidTurn,
    SchemaNotReady,
    SessionRepository,
    StoreConfig,
)
from convostore._core.schema import sessions
from convostore._ops.redis_import import import_redis
from convostore._ops.transfer import (
    CSV_COLUMNS,
    ConversationRecord,
    export_conversations,
    import_conversations,
)
from convostore.migrate import upgrade_url

TTL = 86_400
"""The sessions' TTL in the export tests: long enough that only the one made stale expires."""
TABLES = ("conversations", "sessions", "turns", "turn_slots")
CONVERSATION_KEYS = {
    "session_id",
    "conversation_id",
    "user_id",
    "started_at",
    "ended_at",
    "live",
    "language",
    "current_slots",
    "title",
    "metadata",
    "summary",
    "summary_upto",
    "current_template_id",
    "session",
    "turns",
}
TURN_KEYS = {
    "seq",
    "role",
    "content",
    "resolved_question",
    "template_id",
    "slots",
    "results",
    "created_at",
    "tool_name",
    "tool_call_id",
    "tool_arguments",
    "data",
    "idempotency_key",
    "trace_id",
    "span_id",
    "feedback",
}


def _at(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock(), timezone.utc)


async def _populate(make_repo: MakeRepo, clock: FakeClock, sql: Sql) -> dict[str, str]:
    """Six conversations: "utrecht" (u-1, two exchanges, slots, results), "english" (u-2,
    language en), "reused" twice (the first ended and retained, the second live), "empty"
    (no turns) and "stale" (its expiry passed, not swept). Returns their session ids."""
    repo = await make_repo(session_ttl=TTL)
    ids: dict[str, str] = {}
    ids["stale"], _ = await repo.get_or_create()
    await repo.add_turn(ids["stale"], "Oud?", "Ja.", template_id="archives_in_place")
    clock.advance(10)
    ids["utrecht"], _ = await repo.get_or_create(user_id="u-1")
    await repo.add_turn(
        ids["utrecht"],
        "Welke archieven zijn er in Utrecht?",
        "Er zijn er 12.",
        template_id="archives_in_place",
        slots={"place": "Utrecht", "soort": "gemeente"},
        results=[{"naam": "Het Utrechts Archief", "stad": "Utrecht", "jaren": [1122, 2026]}],
        user_id="u-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    clock.advance(60)
    await repo.add_turn(
        ids["utrecht"],
        "En in Enschede?",
        "Drie, waaronder één café-archief.",
        resolved_question="Welke archieven zijn er in Enschede?",
        template_id="archives_in_place",
        slots={"place": "Enschede"},
        user_id="u-1",
    )
    assert await repo.add_feedback(ids["utrecht"], 4, -1, comment="Vier!", user_id="u-1")
    await repo.set_title(ids["utrecht"], "Archieven", user_id="u-1")
    await repo.set_summary(ids["utrecht"], "Archieven in Utrecht.", upto_seq=2, user_id="u-1")
    await repo.set_metadata(ids["utrecht"], {"project": "archives", "stars": 5}, user_id="u-1")
    clock.advance(3600)
    ids["english"], state = await repo.get_or_create(user_id="u-2")
    state.language = "en"
    await repo.update(ids["english"], state)
    await repo.add_turn(
        ids["english"],
        "How many archives?",
        "Forty.",
        template_id="count_archives",
        slots={"region": "NL"},
        user_id="u-2",
    )
    clock.advance(3600)
    ids["reused"], _ = await repo.get_or_create()
    await repo.add_turn(ids["reused"], "Hoi", "Hallo")
    assert await repo.add_feedback(ids["reused"], 2, 2)
    await repo.set_title(ids["reused"], "Groet")
    await repo.delete(ids["reused"])
    clock.advance(60)
    await repo.get_or_create(ids["reused"])
    await repo.add_turn(ids["reused"], "Nog een vraag", "Graag.", template_id="count_archives")
    ids["empty"], _ = await repo.get_or_create()
    await repo.stop()
    await sql(
        "UPDATE sessions SET expires_at = last_accessed WHERE session_id = :sid", sid=ids["stale"]
    )
    return ids


class _Discard:
    """A text sink that keeps nothing, so memory measures the export alone."""

    def write(self, text: str) -> int:
        return len(text)


async def _export(url: str, now: datetime, **filters: Any) -> tuple[str, int]:
    out = io.StringIO()
    written = await export_conversations(url, out, now=now, **filters)
    return out.getvalue(), written


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _by_session(records: list[dict[str, Any]]) -> dict[tuple[str, bool], dict[str, Any]]:
    return {(record["session_id"], record["live"]): record for record in records}


def _key(record: dict[str, Any]) -> tuple[str, int]:
    return record["session_id"], record["conversation_id"]


async def _migrated(backend: str, url: str) -> str:
    """An empty database to import into: a server's migrated first, SQLite left for the import
    to create (as a repository does)."""
    if backend != "sqlite":
        await upgrade_url(url)
    return url


async def _counts(sql: Sql) -> dict[str, int]:
    return {table: (await sql(f"SELECT count(*) FROM {table}"))[0][0] for table in TABLES}


async def test_jsonl_has_a_conversation_per_line(
    make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql
) -> None:
    ids = await _populate(make_repo, clock, sql)
    text, written = await _export(url, _at(clock))
    records = _records(text)
    assert written == len(records) == 6
    for line in text.splitlines():
        ConversationRecord.model_validate_json(line)  # what the import reads
    for record in records:
        assert set(record) == CONVERSATION_KEYS
        assert list(record)[-1] == "turns"
        assert [turn["seq"] for turn in record["turns"]] == list(range(1, len(record["turns"]) + 1))
        for turn in record["turns"]:
            assert set(turn) == TURN_KEYS
            assert (turn["idempotency_key"] is None) == (turn["role"] == "assistant")
        assert record["live"] == (record["session"] is not None) == (record["ended_at"] is None)
    found = _by_session(records)

    utrecht = found[ids["utrecht"], True]
    assert utrecht["user_id"] == "u-1"
    assert utrecht["language"] is None
    assert utrecht["current_slots"] == {"place": "Enschede", "soort": "gemeente"}
    assert utrecht["current_template_id"] == "archives_in_place"
    assert utrecht["title"] == "Archieven"
    assert (utrecht["summary"], utrecht["summary_upto"]) == ("Archieven in Utrecht.", 2)
    assert utrecht["metadata"] == {"project": "archives", "stars": 5}
    assert set(utrecht["session"]) == {"created_at", "last_accessed", "expires_at", "access_count"}
    assert datetime.fromisoformat(utrecht["session"]["expires_at"]) > _at(clock)
    first, _, follow_up, answer = utrecht["turns"]
    assert first["slots"] == {"place": "Utrecht", "soort": "gemeente"}
    assert first["results"] == [
        {"naam": "Het Utrechts Archief", "stad": "Utrecht", "jaren": [1122, 2026]}
    ]
    assert follow_up["resolved_question"] == "Welke archieven zijn er in Enschede?"
    assert answer == {**answer, "role": "assistant", "content": "Drie, waaronder één café-archief."}
    assert "één café" in text  # written as UTF-8, not escaped

    assert found[ids["english"], True]["language"] == "en"
    ended = found[ids["reused"], False]
    assert ended["current_slots"] is None
    assert ended["current_template_id"] is None
    assert ended["title"] == "Groet"  # the catalog fields outlive the session
    assert [turn["content"] for turn in ended["turns"]] == ["Hoi", "Hallo"]
    assert found[ids["reused"], True]["conversation_id"] > ended["conversation_id"]
    assert found[ids["empty"], True]["turns"] == []
    stale = found[ids["stale"], False]
    assert stale["ended_at"] == stale["turns"][-1]["created_at"]  # ended at its last activity


async def test_csv_has_a_turn_per_row(
    make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql
) -> None:
    ids = await _populate(make_repo, clock, sql)
    out = io.StringIO(newline="")
    written = await export_conversations(url, out, format="csv", now=_at(clock))
    header, *rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert written == 6
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == 12 + 1  # every turn, and one row for the conversation without turns
    at = {name: index for index, name in enumerate(header)}
    utrecht = [row for row in rows if row[at["session_id"]] == ids["utrecht"]]
    assert [row[at["seq"]] for row in utrecht] == ["1", "2", "3", "4"]
    assert {row[at["conversation_id"]] for row in utrecht} == {utrecht[0][at["conversation_id"]]}
    assert {row[at["live"]] for row in utrecht} == {"true"}
    assert json.loads(utrecht[0][at["current_slots"]]) == {"place": "Enschede", "soort": "gemeente"}
    assert json.loads(utrecht[0][at["slots"]]) == {"place": "Utrecht", "soort": "gemeente"}
    assert json.loads(utrecht[0][at["results"]])[0]["naam"] == "Het Utrechts Archief"
    assert utrecht[1][at["resolved_question"]] == ""
    assert utrecht[1][at["role"]] == "assistant"
    (empty,) = [row for row in rows if row[at["session_id"]] == ids["empty"]]
    assert all(empty[at[name]] == "" for name in ("seq", "role", "content", "created_at"))
    ended = [row for row in rows if row[at["session_id"]] == ids["reused"] and row[at["ended_at"]]]
    assert len(ended) == 2
    assert {row[at["expires_at"]] for row in ended} == {""}


async def test_export_filters(make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql) -> None:
    ids = await _populate(make_repo, clock, sql)
    now = _at(clock)
    everything = _records((await _export(url, now))[0])

    async def sessions_of(**filters: Any) -> list[tuple[str, bool]]:
        text, written = await _export(url, now, **filters)
        records = _records(text)
        assert written == len(records)
        return sorted((record["session_id"], record["live"]) for record in records)

    assert await sessions_of(user="u-1") == [(ids["utrecht"], True)]
    assert await sessions_of(language="en") == [(ids["english"], True)]
    assert await sessions_of(template="count_archives") == sorted(
        [(ids["english"], True), (ids["reused"], True)]
    )
    assert await sessions_of(template="archives_in_place", user="u-1") == [(ids["utrecht"], True)]
    assert await sessions_of(template="archives_in_place", user="u-2") == []
    starts = sorted(datetime.fromisoformat(record["started_at"]) for record in everything)
    since, until = starts[1], starts[4]
    for window in ({"since": since}, {"until": until}, {"since": since, "until": until}):
        expected = sorted(
            (record["session_id"], record["live"])
            for record in everything
            if window.get("since", starts[0])
            <= datetime.fromisoformat(record["started_at"])
            < window.get("until", starts[-1] + timedelta(seconds=1))
        )
        assert await sessions_of(**window) == expected
    assert len(await sessions_of(since=since, until=until)) == 3
    with pytest.raises(ValueError, match="timezone-aware"):
        await _export(url, now, since=datetime(2026, 1, 1))  # noqa: DTZ001 (the point of it)


async def test_round_trip_into_an_empty_database(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str, sql: Sql
) -> None:
    """Export, import into an empty database, export again: the same text. The repository
    there reads the sessions as the source's did, and new conversations take new ids."""
    ids = await _populate(make_repo, clock, sql)
    now = _at(clock)
    text, _ = await _export(url, now)
    target = await _migrated(backend, empty_url)
    progress: list[int] = []
    counts = await import_conversations(
        target, io.StringIO(text), now=now, progress=progress.append
    )
    assert counts.problems == []
    assert (counts.conversations, counts.sessions, counts.turns, counts.slots) == (6, 4, 12, 4)
    assert (counts.skipped, counts.replaced, counts.renumbered) == (0, 0, 0)
    assert progress == [6]
    assert (await _export(target, now))[0] == text

    source = await make_repo(session_ttl=TTL)
    copied = SessionRepository(
        StoreConfig(database_url=target, cleanup_interval=0, session_ttl=TTL), clock=clock
    )
    async with copied:
        for name in ("utrecht", "english", "reused", "empty"):
            user = {"utrecht": "u-1", "english": "u-2"}.get(name)
            there = await copied.get(ids[name], user_id=user)
            here = await source.get(ids[name], user_id=user)
            assert there is not None
            assert here is not None
            assert there.model_dump() == here.model_dump()
        for user in ("u-1", "u-2"):  # the catalog too: titles, metadata, last activity
            assert await copied.list_sessions(user) == await source.list_sessions(user)
        assert await copied.get(ids["stale"]) is None
        await copied.get_or_create(user_id="u-9")
        (new,) = await copied.list_sessions("u-9")
        assert new.conversation_id > max(record["conversation_id"] for record in _records(text))
        assert [s.session_id for s in await copied.list_sessions("u-1")] == [ids["utrecht"]]


async def test_importing_twice_changes_nothing(
    make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql
) -> None:
    """The file imported into the database it came from: every conversation is there."""
    await _populate(make_repo, clock, sql)
    now = _at(clock)
    text, _ = await _export(url, now)
    before = await _counts(sql)
    for _ in range(2):
        counts = await import_conversations(url, text.splitlines(keepends=True), now=now)
        assert (counts.skipped, counts.conversations, counts.problems) == (6, 0, [])
    assert await _counts(sql) == before
    assert (await _export(url, now))[0] == text


async def test_replace_writes_the_file_over_what_is_stored(
    make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql
) -> None:
    ids = await _populate(make_repo, clock, sql)
    now = _at(clock)
    records = _records((await _export(url, now))[0])
    changed = copy.deepcopy(records)
    for record in changed:
        if record["session_id"] == ids["utrecht"]:
            record["turns"][2]["content"] = "En in Zwolle?"
            record["turns"][2]["slots"] = {"place": "Zwolle"}
            record["current_slots"] = {"place": "Zwolle"}
        elif record["session_id"] == ids["reused"] and not record["live"]:
            record["turns"][1]["content"] = "Dag."
    lines = [json.dumps(record) + "\n" for record in changed]
    before = await _counts(sql)

    counts = await import_conversations(url, lines, on_conflict="replace", now=now)
    assert (counts.replaced, counts.conversations, counts.skipped, counts.renumbered) == (
        6,
        6,
        0,
        0,
    )
    assert counts.problems == []
    before["sessions"] -= 1  # the stale session's row: the file has its conversation ended
    assert await _counts(sql) == before
    after = _records((await _export(url, now))[0])
    assert sorted(after, key=_key) == sorted(changed, key=_key)

    state = await (await make_repo(session_ttl=TTL)).get(ids["utrecht"], user_id="u-1")
    assert state is not None
    assert state.current_slots == {"place": "Zwolle"}
    assert state.turns[2].content == "En in Zwolle?"
    assert state.turns[2].slots == {"place": "Zwolle"}


async def test_a_live_session_in_the_way(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str, sql: Sql
) -> None:
    """The target has a live session under an id the file has live with another conversation:
    skip reports the line; replace ends that session (its transcript stays) and imports."""
    ids = await _populate(make_repo, clock, sql)
    now = _at(clock)
    text, _ = await _export(url, now)
    target = await _migrated(backend, empty_url)
    clock.advance(5)
    async with SessionRepository(
        StoreConfig(database_url=target, cleanup_interval=0, session_ttl=TTL), clock=clock
    ) as other:
        await other.add_turn(ids["utrecht"], "Iets anders", "Ja.")
    later = _at(clock)

    skipped = await import_conversations(target, io.StringIO(text), now=later)
    (problem,) = skipped.problems
    line = 1 + [record["session_id"] for record in _records(text)].index(ids["utrecht"])
    assert problem.line == line
    assert "is live in the database" in problem.reason
    assert (skipped.conversations, skipped.sessions_ended) == (5, 0)

    replaced = await import_conversations(
        target, io.StringIO(text), on_conflict="replace", now=later
    )
    assert (replaced.conversations, replaced.replaced, replaced.sessions_ended) == (6, 5, 1)
    assert replaced.problems == []
    found = [
        record
        for record in _records((await _export(target, later))[0])
        if record["session_id"] == ids["utrecht"]
    ]
    assert sorted(record["live"] for record in found) == [False, True]
    (old,) = [record for record in found if not record["live"]]
    assert [turn["content"] for turn in old["turns"]] == ["Iets anders", "Ja."]


async def test_taken_conversation_ids_are_renumbered(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str, sql: Sql
) -> None:
    await _populate(make_repo, clock, sql)
    now = _at(clock)
    text, _ = await _export(url, now)
    target = await _migrated(backend, empty_url)
    async with SessionRepository(
        StoreConfig(database_url=target, cleanup_interval=0, session_ttl=TTL), clock=clock
    ) as other:
        for number in range(3):
            await other.add_turn(f"there-{number}", "Vraag", "Antwoord", user_id="u-7")
        taken = {summary.conversation_id for summary in await other.list_sessions("u-7")}
    imported = {record["conversation_id"] for record in _records(text)}
    assert taken & imported

    counts = await import_conversations(target, io.StringIO(text), now=now)
    assert (counts.conversations, counts.renumbered) == (6, len(taken & imported))
    assert (await import_conversations(target, io.StringIO(text), now=now)).skipped == 6
    exported = _records((await _export(target, now))[0])
    assert len(exported) == 9
    ids = [record["conversation_id"] for record in exported]
    assert len(set(ids)) == 9
    async with SessionRepository(
        StoreConfig(database_url=target, cleanup_interval=0, session_ttl=TTL), clock=clock
    ) as other:
        await other.get_or_create(user_id="u-8")
        (new,) = await other.list_sessions("u-8")
    assert new.conversation_id > max(ids)


STAMP = "2026-09-21T14:13:20+00:00"


async def test_malformed_lines_are_reported_and_the_rest_imported(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str, sql: Sql
) -> None:
    ids = await _populate(make_repo, clock, sql)
    now = _at(clock)
    found = _by_session(_records((await _export(url, now))[0]))
    good, other = found[ids["utrecht"], True], found[ids["reused"], False]

    def bad(change: Any) -> str:
        record = copy.deepcopy(good)
        change(record)
        return json.dumps(record)

    lines = [
        json.dumps(good),  # 1
        "{not json",  # 2
        "   ",  # 3: blank, passed over
        bad(lambda r: r.pop("session_id")),  # 4
        bad(lambda r: r["turns"][0].update(seq="1")),  # 5
        bad(lambda r: r.update(started_at="2026-09-21T14:13:20")),  # 6
        bad(lambda r: r["turns"][1].update(content="nul \u0000 here")),  # 7
        bad(lambda r: r.update(session=None)),  # 8
        bad(lambda r: r["turns"].reverse()),  # 9
        bad(lambda r: r.update(extra=1)),  # 10
        bad(lambda r: r.update(session_id="café")),  # 11
        bad(lambda r: r["turns"][0].update(results=[1])),  # 12
        bad(lambda r: r["turns"][0].update(feedback={"score": 1, "created_at": STAMP})),  # 13
        bad(lambda r: r["turns"][1].update(feedback={"score": 3, "created_at": STAMP})),  # 14
        bad(lambda r: r["turns"][0].update(trace_id="4BF92F3577B34DA6A3CE929D0E0E4736")),  # 15
        json.dumps(other),  # 16
    ]
    counts = await import_conversations(await _migrated(backend, empty_url), lines, now=now)
    assert counts.conversations == 2
    reasons = {problem.line: problem.reason for problem in counts.problems}
    expected = {
        2: "Invalid JSON",
        4: "session_id: Field required",
        5: "turns.0.seq: Input should be a valid integer",
        6: "started_at: Input should have timezone info",
        7: "NUL character",
        8: "live must be true exactly when",
        9: "turns[1].seq is 3, not above 4",
        10: "extra: Extra inputs are not permitted",
        11: "printable ASCII",
        12: "turns.0.results.0: Input should be an object",
        13: "only an assistant turn has feedback",
        14: "turns.1.feedback.score: Input should be less than or equal to 2",
        15: "trace_id must be 32 lowercase hex digits",
    }
    assert set(reasons) == set(expected)
    for number, text in expected.items():
        assert text in reasons[number], (number, reasons[number])


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
async def test_a_database_without_the_schema_is_refused(
    empty_url: str, backend: str, kind: Literal["jsonl", "csv"]
) -> None:
    """Nothing is written from a database convostore has not migrated; an import migrates a
    SQLite file, as a repository would, but not PostgreSQL, where that is the deploy's job."""
    out = io.StringIO()
    with pytest.raises(SchemaNotReady):
        await export_conversations(empty_url, out, format=kind)
    assert out.getvalue() == ""
    if backend != "sqlite":
        with pytest.raises(SchemaNotReady, match="convostore migrate"):
            await import_conversations(empty_url, [])
    else:
        assert (await import_conversations(empty_url, [])).conversations == 0
        assert await export_conversations(empty_url, out, format=kind) == 0


async def test_export_memory_does_not_grow_with_the_data(url: str, backend: str) -> None:
    """Peak Python allocations of an export of 20,000 turns stay below twice those of 2,000
    (not on MariaDB, which streams one result at a time per connection: docs/mariadb.md)."""
    if backend == "mariadb":
        pytest.skip("MariaDB exports read their results whole (docs/mariadb.md)")

    async def peak() -> int:
        tracemalloc.start()
        try:
            await export_conversations(url, _Discard())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    await fill(url, 2_000, per_conversation=20)
    await export_conversations(url, _Discard())  # warm the caches
    small = await peak()
    await fill(url, 18_000, per_conversation=20, first=101)
    out = io.StringIO()
    assert await export_conversations(url, out) == 1_000
    assert sum(len(record["turns"]) for record in _records(out.getvalue())) == 20_000
    del out
    large = await peak()
    assert large / small < 2, (small, large)


# --- the original manager's Redis entries ---------------------------------------------------

REDIS_URL = os.environ.get("CONVOSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB_ENV = "CONVOSTORE_TEST_REDIS_DB"
REDIS_DB = int(os.environ.get(REDIS_DB_ENV, "13"))
PREFIX = "heritage:session:"
OURS = "convostore-tests:in-use"
"""A key the Redis tests keep in their database while they use it: a database that holds
keys, but not this one, is someone else's, and is never emptied."""


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    """The tests' Redis database, emptied; skips the test if Redis is unreachable, or if the
    database holds keys that are not the tests' own."""
    client = Redis.from_url(REDIS_URL, db=REDIS_DB, socket_connect_timeout=2)
    try:
        await client.ping()
        foreign = await client.dbsize() and not await client.exists(OURS)
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis at {REDIS_URL} (env CONVOSTORE_TEST_REDIS_URL) is unreachable: {exc}")
    if foreign:
        await client.aclose()
        pytest.skip(
            f"Redis database {REDIS_DB} at {REDIS_URL} holds keys that are not the tests', "
            f"and the tests empty the database they use: set env {REDIS_DB_ENV} to the "
            "number of an empty one"
        )
    await client.flushdb()
    await client.set(OURS, "1")
    yield client
    await client.flushdb()
    await client.aclose()


async def _original_sessions(redis_client: Redis) -> dict[str, Any]:
    """Sessions written by the original manager itself (in ``REDIS_DB``): returns their states.

    Its redis calls are deprecated ones (setex, close): under pytest's "error" filter they
    would raise, and the original would log that and write nothing, so the warnings are off."""
    seed = load_seed()
    if seed is None:
        pytest.skip(
            f"the original SessionManager is not at {seed_path()} (env CONVOSTORE_SEED_PATH "
            "names it)"
        )
    config = seed.SessionConfig(
        redis_enabled=True, redis_url=REDIS_URL, redis_db=REDIS_DB, cleanup_interval=10**9
    )
    manager = seed.SessionManager(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        await manager.start()
        assert manager._redis_available
        utrecht, _ = await manager.get_or_create()
        await manager.add_turn_to_session(
            utrecht,
            "Welke archieven zijn er in Utrecht?",
            "Er zijn er 12.",
            None,
            "archives_in_place",
            {"place": "Utrecht"},
            [{"naam": "Het Utrechts Archief", "jaren": [1122, 2026]}],
        )
        await manager.add_turn_to_session(
            utrecht,
            "En in Enschede?",
            "Drie.",
            "Welke archieven zijn er in Enschede?",
            None,
            {"place": "Enschede", "soort": "gemeente"},
            None,
        )
        plain, _ = await manager.get_or_create()
        await manager.add_turn_to_session(plain, "Hoi", "Hallo")
        empty, _ = await manager.get_or_create()
        english, state = await manager.get_or_create()
        state.language = "en"
        state.add_turn(seed.ConversationTurn(role="user", content="Archives?", template_id="count"))
        state.add_turn(seed.ConversationTurn(role="assistant", content="Forty."))
        await manager.update(english, state)
        states = {sid: await manager.get(sid) for sid in (utrecht, plain, empty, english)}
        await manager.stop()
    await redis_client.pexpire(PREFIX + plain, 600_000)
    await redis_client.persist(PREFIX + empty)
    return states


def _entry(sid: str, **changes: Any) -> str:
    entry = {
        "session_id": sid,
        "state": {"turns": [{"role": "user", "content": "Vraag"}], "current_slots": {}},
        "created_at": "2026-11-30T10:00:00+00:00",
        "last_accessed": "2026-11-30T10:05:00+00:00",
        "access_count": 1,
    }
    entry.update(changes)
    return json.dumps(entry)


MALFORMED = {
    "not-json": ("{oops", "Invalid JSON"),
    "developer": (
        _entry("developer", state={"turns": [{"role": "developer", "content": "x"}]}),
        "state.turns.0.role",
    ),
    "nul": (
        _entry("nul", state={"turns": [{"content": "a\u0000b"}]}),
        "state.turns[0].content contains a NUL character",
    ),
    "mismatch": (_entry("someone-else"), "is not the key's"),
    "no-time": (_entry("no-time", created_at=None), "created_at"),
    "café": (_entry("café"), "printable ASCII"),
}
"""Keys (after the prefix) written by hand, with their value and the reason expected."""


async def _expiries(url: str) -> dict[str, datetime]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(sessions.c.session_id, sessions.c.expires_at))
            return {sid: expires for sid, expires in rows}
    finally:
        await engine.dispose()


async def test_redis_entries_of_the_original_manager_become_sessions(
    redis_client: Redis, make_repo: MakeRepo, clock: FakeClock, url: str, sql: Sql
) -> None:
    originals = await _original_sessions(redis_client)
    for key, (value, _) in MALFORMED.items():
        await redis_client.set(PREFIX + key, value)
    await redis_client.hset(PREFIX + "a-hash", "field", "value")
    await redis_client.set("elsewhere:not-ours", _entry("not-ours"))
    remaining = {sid: await redis_client.pttl(PREFIX + sid) for sid in originals}
    read_at = datetime.now(timezone.utc)
    no_ttl, shortened, *_ = sorted(remaining.values())
    assert no_ttl == -1
    assert 0 < shortened <= 600_000

    report = await import_redis(url, REDIS_URL, db=REDIS_DB)
    assert (report.imported, report.already_present, report.replaced) == (4, 0, 0)
    assert (report.turns, report.slots) == (8, 3)
    reasons = {entry.key: entry.reason for entry in report.skipped}
    assert set(reasons) == {PREFIX + key for key in [*MALFORMED, "a-hash"]}
    for key, (_, reason) in MALFORMED.items():
        assert reason in reasons[PREFIX + key], (key, reasons[PREFIX + key])
    assert "WRONGTYPE" in reasons[PREFIX + "a-hash"]

    expiries = await _expiries(url)
    for sid, pttl in remaining.items():
        left = timedelta(milliseconds=pttl) if pttl > 0 else timedelta(seconds=1800)
        assert abs(expiries[sid] - (read_at + left)) < timedelta(seconds=1), sid

    clock.now = time.time()
    repo = await make_repo()
    for sid, original in originals.items():
        state = await repo.get(sid)
        assert state is not None, sid
        assert [
            (t.role, t.content, t.resolved_question, t.template_id, t.slots, t.results)
            for t in state.turns
        ] == [
            (t.role, t.content, t.resolved_question, t.template_id, t.slots, t.results)
            for t in original.turns
        ]
        assert state.current_slots == original.current_slots
        assert state.current_template_id == original.current_template_id
        assert state.language == original.language
        assert all(turn.created_at is not None for turn in state.turns)
    assert (await _counts(sql))["sessions"] == 4

    again = await import_redis(url, REDIS_URL, db=REDIS_DB)
    assert (again.imported, again.already_present, len(again.skipped)) == (0, 4, 7)
    assert (await _counts(sql))["conversations"] == 4

    replaced = await import_redis(url, REDIS_URL, db=REDIS_DB, on_conflict="replace")
    assert (replaced.imported, replaced.replaced, replaced.already_present) == (4, 4, 0)
    assert await _counts(sql) == {"conversations": 8, "sessions": 4, "turns": 16, "turn_slots": 6}


async def test_a_redis_url_it_cannot_use_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        await import_redis(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}", "http://127.0.0.1")


@pytest.mark.parametrize(
    ("filters", "error", "says"),
    [
        ({"user": ""}, InvalidSessionId, "user_id must not be empty"),
        ({"user": "gebruiker-é"}, InvalidSessionId, "outside printable ASCII"),
        ({"language": "x" * 33}, InvalidTurn, "language must be 1 to 32 characters"),
        ({"template": "a\x00b"}, InvalidTurn, "template_id contains a NUL character"),
    ],
)
async def test_export_filters_follow_the_rules_of_what_is_stored(
    url: str, filters: dict[str, str], error: type[Exception], says: str
) -> None:
    """A filter no stored conversation can match (a user id that breaks the user-id rules,
    say) is an error before any SQL, not an empty export (it was, while ``erase_user`` refused
    the same id)."""
    out = io.StringIO()
    with pytest.raises(error, match=says):
        await export_conversations(url, out, **filters)  # type: ignore[arg-type]
    assert out.getvalue() == ""


async def test_import_redis_checks_session_ttl_by_the_settings_rule(url: str) -> None:
    """``session_ttl`` follows ``StoreConfig``'s rule (above 0): ConfigError, before Redis or
    the database is reached."""
    with pytest.raises(ConfigError, match="session_ttl: Input should be greater than 0"):
        await import_redis(url, "redis://127.0.0.1:1", session_ttl=0)


def test_redis_tests_leave_someone_elses_database_alone() -> None:
    """With env CONVOSTORE_TEST_REDIS_DB naming a database that holds another program's key,
    the Redis tests skip, saying why, and the key is still there (they emptied database 13,
    whatever it held)."""
    from redis import Redis as SyncRedis

    def database(number: int) -> SyncRedis:
        return SyncRedis.from_url(REDIS_URL, db=number, socket_connect_timeout=2)

    try:
        spare = next(n for n in range(16) if n != REDIS_DB and not database(n).dbsize())
    except (RedisError, OSError) as exc:
        pytest.skip(f"Redis at {REDIS_URL} (env CONVOSTORE_TEST_REDIS_URL) is unreachable: {exc}")
    except StopIteration:
        pytest.skip(f"every database of the Redis at {REDIS_URL} holds keys")
    theirs = database(spare)
    theirs.set("another-program:setting", "keep me")
    try:
        test = "tests/test_cli_transfer.py::test_import_redis_moves_the_old_stores_sessions"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-m",
                "sqlite",
                "-p",
                "no:cacheprovider",
                test,
            ],
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, REDIS_DB_ENV: str(spare)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "1 skipped" in done.stdout, done.stdout
        assert f"Redis database {spare} at {REDIS_URL} holds keys that are not the tests'" in (
            done.stdout
        )
        assert theirs.get("another-program:setting") == b"keep me"
    finally:
        theirs.delete("another-program:setting")
        theirs.close()
