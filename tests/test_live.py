"""One meaning of "live": a session whose expiry is in the future. ``get``, the analytics views,
``stats``, ``show``, the report, ``list_sessions``, ``export_user`` and the export all say the
same of an expired session that waits for the sweep, on both backends.

The views read the database's clock, so the data is written with the fake clock set to the
real time: one session two hours old (expired, not swept), one a minute old (live), one
deleted (ended)."""

from __future__ import annotations

import asyncio
import io
import json
import time

from conftest import FakeClock, MakeRepo, Sql
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import SessionRepository
from convostore._ops import report
from convostore._ops.admin import stats, transcripts
from convostore._ops.transfer import export_conversations

USER = "u-1"
EXPIRED, LIVE, ENDED = "expired-unswept", "live", "ended"
EXPECTED = {EXPIRED: False, LIVE: True, ENDED: False}


async def _seed(make_repo: MakeRepo, clock: FakeClock) -> SessionRepository:
    repo = await make_repo()
    clock.now = time.time() - 2 * 3600
    await repo.add_turn(EXPIRED, "Archieven in Utrecht?", "Twaalf.", user_id=USER)
    await repo.add_turn(ENDED, "Archieven in Zwolle?", "Vier.", user_id=USER)
    assert await repo.delete(ENDED)
    clock.now = time.time() - 60
    await repo.add_turn(LIVE, "Archieven in Enschede?", "Drie.", user_id=USER)
    return repo


async def test_an_expired_session_waiting_for_the_sweep_is_live_nowhere(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql, url: str
) -> None:
    """Every reader calls the expired session not live, the minute-old one live and the deleted
    one not live; ``stats`` counts the expired one as waiting for the sweep."""
    repo = await _seed(make_repo, clock)
    assert await repo.get(LIVE) is not None
    assert await sql("SELECT count(*) FROM sessions WHERE session_id = :s", s=EXPIRED) == [(1,)]

    said = {sid: bool(live) for sid, live in await sql("SELECT session_id, live FROM exchanges")}
    assert said == EXPECTED
    said = {
        sid: bool(live)
        for sid, live in await sql("SELECT session_id, live FROM conversation_status")
    }
    assert said == EXPECTED
    listed = await repo.list_sessions(USER)
    assert {summary.session_id: summary.live for summary in listed} == EXPECTED
    exported = await repo.export_user(USER)
    assert {c["session_id"]: c["live"] for c in exported["conversations"]} == EXPECTED

    out = io.StringIO()
    engine = create_async_engine(url)
    try:
        figures = await stats(engine)
        figures_report = await report.collect(engine)
        shown = {
            sid: [t.live for t in await transcripts(engine, sid, include_ended=True)]
            for sid in EXPECTED
        }
        await export_conversations(engine, out)
    finally:
        await engine.dispose()
    assert (figures.live_sessions, figures.expired_sessions) == (1, 1)
    assert (figures_report.conversations, figures_report.live) == (3, 1)
    assert shown == {sid: [live] for sid, live in EXPECTED.items()}
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {r["session_id"]: r["live"] for r in records} == EXPECTED


async def test_the_views_follow_the_clock(make_repo: MakeRepo, clock: FakeClock, sql: Sql) -> None:
    """By the database's clock, a session is live until its ``expires_at`` and not after: the
    views compare times, not text of another shape (SQLite stores timestamps as text)."""
    repo = await make_repo(session_ttl=2)
    clock.now = time.time()
    await repo.add_turn("short", "Kort?", "Ja.")
    expires = clock.now + 2
    assert [bool(live) for (live,) in await sql("SELECT live FROM conversation_status")] == [True]
    assert [bool(live) for (live,) in await sql("SELECT live FROM exchanges")] == [True]
    await asyncio.sleep(expires - time.time() + 0.05)
    assert [bool(live) for (live,) in await sql("SELECT live FROM conversation_status")] == [False]
    assert [bool(live) for (live,) in await sql("SELECT live FROM exchanges")] == [False]
