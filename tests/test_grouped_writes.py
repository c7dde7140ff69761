"""Appends that arrive together are stored together, each with its own outcome.

While one append of a process runs, the next ones queue and then go as a group: on SQLite one
transaction with a savepoint each, on PostgreSQL one round trip and one commit
(``_fast.Groups``). A write the database refuses fails alone; the others are stored, and the
cache holds exactly what was stored.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import FAST_PATH, MakeRepo, Sql

from convostore import StoreError

CALLERS = 40
REFUSED = "refused by the database"
"""Content that a trigger of the test's own makes the database refuse to store."""

_SQLITE_TRIGGER = f"""
CREATE TRIGGER refuse_some BEFORE INSERT ON turns WHEN NEW.content = '{REFUSED}'
BEGIN SELECT RAISE(ABORT, 'refused'); END
"""
_POSTGRES_FUNCTION = """
CREATE FUNCTION refuse_some() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused'; END $$
"""
_POSTGRES_TRIGGER = f"""
CREATE TRIGGER refuse_some BEFORE INSERT ON turns FOR EACH ROW
WHEN (NEW.content = '{REFUSED}') EXECUTE FUNCTION refuse_some()
"""


async def _refuse_some(sql: Sql, backend: str) -> None:
    if backend == "sqlite":
        await sql(_SQLITE_TRIGGER)
    else:
        await sql(_POSTGRES_FUNCTION)
        await sql(_POSTGRES_TRIGGER)


async def _commits(sql: Sql) -> int:
    rows = await sql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return int(rows[0][0])


async def test_a_refused_append_fails_alone_and_the_rest_of_its_group_is_stored(
    make_repo: MakeRepo, sql: Sql, backend: str
) -> None:
    repo = await make_repo()
    sids = [f"s{i}" for i in range(CALLERS)]
    for sid in sids:
        await repo.add_turn(sid, "first", "answer")
    await _refuse_some(sql, backend)
    refused = {sid for index, sid in enumerate(sids) if index % 7 == 3}

    async def append(sid: str) -> object:
        question = REFUSED if sid in refused else f"question of {sid}"
        return await repo.add_turn(sid, question, "answer")

    outcomes = await asyncio.gather(*(append(sid) for sid in sids), return_exceptions=True)
    for sid, outcome in zip(sids, outcomes, strict=True):
        if sid in refused:
            assert isinstance(outcome, StoreError), (sid, outcome)
        else:
            assert not isinstance(outcome, BaseException), (sid, outcome)
    stored = dict(await sql("SELECT session_id, count(*) FROM turns GROUP BY session_id"))
    assert stored == {sid: 2 if sid in refused else 4 for sid in sids}
    for sid in sids:
        state = await repo.get(sid)
        assert state is not None
        added = [] if sid in refused else [f"question of {sid}", "answer"]
        assert [turn.content for turn in state.turns] == ["first", "answer", *added]


async def test_concurrent_appends_share_commits(
    make_repo: MakeRepo, sql: Sql, backend: str
) -> None:
    """PostgreSQL: appends that queued behind another commit together (SQLite's groups are
    one transaction too, which its server-less file has no counter of)."""
    if backend != "postgresql":
        pytest.skip("pg_stat_database counts PostgreSQL's commits")
    if not FAST_PATH:
        pytest.skip("groups are the fast path's (CONVOSTORE_TEST_FAST_PATH=0)")
    repo = await make_repo(cache_coherence="local")  # no poller's transactions in the count
    sids = [f"s{i}" for i in range(CALLERS)]
    for sid in sids:
        await repo.add_turn(sid, "first", "answer")
    before = await _commits(sql)
    await asyncio.gather(*(repo.add_turn(sid, "again", "answer") for sid in sids))
    # pg_stat_database is sent by each backend when its transaction ends, at most every
    # half second; a new transaction after that makes sure the counts are in.
    await asyncio.sleep(1.0)
    commits = await _commits(sql) - before
    assert commits <= CALLERS // 4, commits
    counts = await sql("SELECT count(*) FROM turns")
    assert counts == [(CALLERS * 4,)]
