"""Expiry refreshes off the request path (``refresh_delay`` > 0, the default): a read that is
due to slide the stored expiry writes nothing itself; the refresh is written behind it, before
a sweep, at ``stop()`` and by the background task, never moves an expiry backwards and never
brings back a deleted session. Both backends."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from _statements import count_statements
from conftest import FakeClock, MakeRepo, Sql

TTL = 100


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _utc(value: Any) -> datetime:
    """A stored timestamp (text on SQLite) as an aware datetime."""
    stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(stamp, datetime), stamp
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


async def _stored(sql: Sql, sid: str) -> tuple[datetime, datetime, int] | None:
    rows = await sql(
        "SELECT last_accessed, expires_at, access_count FROM sessions WHERE session_id = :s",
        s=sid,
    )
    if not rows:
        return None
    last, expires, count = rows[0]
    return _utc(last), _utc(expires), count


def _writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))]


async def test_a_due_read_writes_nothing_and_the_sweep_writes_its_refresh_first(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """A cold read 60 s after the last write (due: more than TTL/10) runs no write. The
    sweep 50 s later, past the stored expiry, writes the refresh first, so the session the
    read kept alive stays, with the read counted in access_count."""
    t0 = clock.now
    await (await make_repo(session_ttl=TTL)).add_turn("s", "q", "a")
    before = await _stored(sql, "s")
    assert before is not None
    reader = await make_repo(session_ttl=TTL)
    clock.advance(60)
    with count_statements(reader.engine) as statements:
        assert await reader.get("s") is not None
    assert statements
    assert _writes(statements) == []
    assert await _stored(sql, "s") == before

    clock.advance(50)
    assert await reader.sweep_expired() == 0
    after = await _stored(sql, "s")
    assert after is not None
    assert after[:2] == (_at(t0 + 60), _at(t0 + 160))
    assert after[2] == before[2] + 1
    assert await reader.get("s") is not None


async def test_stop_and_the_background_task_write_pending_refreshes(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """stop() writes what reads left pending; so does the task, within refresh_delay."""
    t0 = clock.now
    writer = await make_repo(session_ttl=TTL)
    for sid in ("a", "b"):
        await writer.add_turn(sid, "q", "a")
    clock.advance(30)
    stopping = await make_repo(session_ttl=TTL)
    assert await stopping.get("a") is not None
    await stopping.stop()
    stored = await _stored(sql, "a")
    assert stored is not None
    assert stored[0] == _at(t0 + 30)

    quick = await make_repo(session_ttl=TTL, refresh_delay=0.05)
    assert await quick.get("b") is not None
    for _ in range(100):
        stored = await _stored(sql, "b")
        assert stored is not None
        if stored[0] == _at(t0 + 30):
            break
        await asyncio.sleep(0.02)
    assert stored[0] == _at(t0 + 30)


async def test_a_late_refresh_never_moves_an_expiry_back_nor_brings_a_session_back(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """A write after the read slides the expiry further than the pending refresh would: the
    flush keeps the later one. A session deleted after the read stays deleted."""
    t0 = clock.now
    repo = await make_repo(session_ttl=TTL)
    for sid in ("written", "deleted"):
        await repo.add_turn(sid, "q", "a")
    reader = await make_repo(session_ttl=TTL)
    clock.advance(60)
    for sid in ("written", "deleted"):
        assert await reader.get(sid) is not None
    clock.advance(10)
    await repo.add_turn("written", "q2", "a2")
    assert await repo.delete("deleted") is True
    await reader.sweep_expired()
    stored = await _stored(sql, "written")
    assert stored is not None
    assert stored[:2] == (_at(t0 + 70), _at(t0 + 170))
    assert await _stored(sql, "deleted") is None


async def test_a_cached_session_due_for_a_refresh_is_served_without_sql(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """With bounded coherence a cached copy is kept current by the watcher, so a hit that is
    due to refresh the stored expiry runs no SQL at all; the refresh follows behind."""
    t0 = clock.now
    repo = await make_repo(session_ttl=TTL)
    await repo.add_turn("s", "q", "a")
    clock.advance(20)
    with count_statements(repo.engine) as statements:
        assert await repo.get("s") is not None
    assert statements == []
    await repo.sweep_expired()
    stored = await _stored(sql, "s")
    assert stored is not None
    assert stored[:2] == (_at(t0 + 20), _at(t0 + 120))
