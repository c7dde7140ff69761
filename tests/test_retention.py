"""Two lifetimes: a session ends after ``session_ttl`` as before, while its transcript stays
in SQL for ``transcript_retention`` and then goes in the sweep's second batched pass; two
conversations under one session id stay apart. Both backends."""

from __future__ import annotations

import asyncio
import time

from conftest import FakeClock, MakeRepo, Sql

from convostore import SessionRepository

TTL = 100
RETENTION = 1000


async def _exchange(repo: SessionRepository, sid: str, place: str) -> None:
    await repo.add_turn(
        sid,
        f"Welke archieven zijn er in {place}?",
        "Twaalf.",
        template_id="archives_in_place",
        slots={"place": place},
    )


async def _counts(sql: Sql) -> tuple[int, int, int, int]:
    """Rows in sessions, conversations, turns and turn_slots."""
    counts = [
        (await sql(f"SELECT count(*) FROM {table}"))[0][0]
        for table in ("sessions", "conversations", "turns", "turn_slots")
    ]
    return counts[0], counts[1], counts[2], counts[3]


async def test_an_ended_sessions_transcript_stays_until_retention_has_passed(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """After expiry and the sweep the session is gone for the API, its transcript is still in
    SQL (marked ended at its last activity), and a later sweep past the retention deletes
    it, counted in get_stats."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=RETENTION)
    await _exchange(repo, "s", "Utrecht")
    clock.advance(TTL + 1)
    assert await repo.sweep_expired() == 1
    assert await repo.get("s") is None
    assert await _counts(sql) == (0, 1, 2, 1)
    (ended,) = await sql("SELECT ended_at FROM conversations")
    assert ended[0] is not None

    clock.advance(RETENTION - TTL - 10)  # the last activity was TTL + 1 ago, plus this
    await repo.sweep_expired()
    assert await _counts(sql) == (0, 1, 2, 1)
    assert (await repo.get_stats())["transcripts_deleted"] == 0
    clock.advance(20)
    await repo.sweep_expired()
    assert await _counts(sql) == (0, 0, 0, 0)
    assert (await repo.get_stats())["transcripts_deleted"] == 1


async def test_two_conversations_under_one_session_id_stay_apart(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """A session id used again after its session ended starts a new conversation with no
    old turns; in SQL the two have their own conversation_id, and the views tell which one
    is live (by the database's clock, which the fake one starts at)."""
    clock.now = time.time()
    repo = await make_repo(session_ttl=TTL)
    await _exchange(repo, "s", "Utrecht")
    clock.advance(TTL + 1)
    sid, state = await repo.get_or_create("s")
    assert sid == "s"
    assert state.turns == []
    await _exchange(repo, "s", "Enschede")
    state_now = await repo.get("s")
    assert state_now is not None
    assert [t.slots for t in state_now.turns if t.role == "user"] == [{"place": "Enschede"}]
    rows = await sql(
        "SELECT conversation_id, question, live FROM exchanges WHERE session_id = 's' "
        "ORDER BY conversation_id"
    )
    assert [(question, bool(live)) for _, question, live in rows] == [
        ("Welke archieven zijn er in Utrecht?", False),
        ("Welke archieven zijn er in Enschede?", True),
    ]
    assert rows[0][0] != rows[1][0]
    assert await sql(
        "SELECT name, value FROM slot_values WHERE session_id = 's' ORDER BY conversation_id"
    ) == [("place", "Utrecht"), ("place", "Enschede")]
    assert (await sql("SELECT turn_count FROM sessions"))[0][0] == 2


async def test_without_retention_the_transcript_goes_with_the_session(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """transcript_retention=0 is the old behaviour: the sweep, delete() and a read of an
    expired session take the turns with the session."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=0)
    for sid in ("swept", "deleted", "read"):
        await _exchange(repo, sid, "Utrecht")
    assert await repo.delete("deleted") is True
    assert await _counts(sql) == (2, 2, 4, 2)
    clock.advance(TTL + 1)
    assert await repo.get("read") is None
    assert await _counts(sql) == (1, 1, 2, 1)
    assert await repo.sweep_expired() == 1
    assert await _counts(sql) == (0, 0, 0, 0)


async def test_the_transcript_sweep_works_in_batches(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """Five ended conversations and a batch size of two: the second pass deletes them all,
    in three batches, and spares the live one."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=RETENTION, sweep_batch_size=2)
    for k in range(5):
        await _exchange(repo, f"old-{k}", "Utrecht")
    clock.advance(RETENTION + 1)
    await _exchange(repo, "live", "Zwolle")
    assert await repo.sweep_expired() == 5
    assert await repo.sweep_expired() == 0
    assert (await repo.get_stats())["transcripts_deleted"] == 5
    assert await _counts(sql) == (1, 1, 2, 1)


async def test_deleting_transcripts_does_not_evict_live_sessions_elsewhere(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """The transcript pass deletes conversations, never sessions rows, so it announces
    nothing: another worker's cached live session under the same id stays a cache hit."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=TTL * 1.5)
    other = await make_repo(session_ttl=TTL * 10)  # reads within TTL need no refresh
    await _exchange(repo, "s", "Utrecht")
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    await _exchange(repo, "s", "Enschede")  # live until 2 * TTL + 1 from the start
    await asyncio.sleep(0.3)  # longer than the watchers take to deliver an announcement
    assert await other.get("s") is not None
    hits = (await other.get_stats())["cache_hits"]
    clock.advance(TTL * 0.6)
    await repo.sweep_expired()
    assert (await repo.get_stats())["transcripts_deleted"] == 1
    await asyncio.sleep(0.3)
    state = await other.get("s")
    assert state is not None
    assert state.turns[0].slots == {"place": "Enschede"}
    stats = await other.get_stats()
    assert stats["cache_hits"] == hits + 1
    assert stats["cached_sessions"] == 1
