"""Concurrent writers to one session: many tasks, two repositories, two OS processes.

The database assigns turn order, so no exchange is lost, duplicated or split from its pair,
and every state a call returns is what the database held at some moment.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from convostore import ConversationState, SessionRepository

Sql = Callable[..., Awaitable[list[Any]]]
MakeRepo = Callable[..., Awaitable[SessionRepository]]

EXCHANGES = 50
WRITER = Path(__file__).with_name("_writer.py")


async def stored_turns(sql: Sql, sid: str) -> list[tuple[int, str, str]]:
    """(seq, role, content) of the session's turns, in seq order, straight from SQL."""
    rows = await sql(
        "SELECT seq, role, content FROM turns WHERE session_id = :sid ORDER BY seq", sid=sid
    )
    return [(int(seq), str(role), str(content)) for seq, role, content in rows]


async def stored_exchanges(sql: Sql, sid: str) -> list[tuple[str, str]]:
    """The stored (question, answer) pairs in order, after checking that seq runs 1..n without
    gaps and that every user turn is immediately followed by an assistant turn."""
    rows = await stored_turns(sql, sid)
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
    assert len(rows) % 2 == 0, f"an exchange was split: {len(rows)} turns stored"
    pairs = []
    for k in range(0, len(rows), 2):
        (_, user_role, question), (_, assistant_role, answer) = rows[k], rows[k + 1]
        assert (user_role, assistant_role) == ("user", "assistant"), rows[k : k + 2]
        pairs.append((question, answer))
    return pairs


def contents(state: ConversationState) -> list[tuple[str, str]]:
    return [(turn.role, turn.content) for turn in state.turns]


async def sql_contents(sql: Sql, sid: str) -> list[tuple[str, str]]:
    return [(role, content) for _, role, content in await stored_turns(sql, sid)]


def check_numbered_pairs(pairs: list[tuple[str, str]], expected: set[int]) -> None:
    """Each pair is ("qN", "aN") for one N, and every expected N appears exactly once."""
    numbers = []
    for question, answer in pairs:
        match = re.fullmatch(r"q(\d+)", question)
        assert match is not None, question
        assert answer == f"a{match.group(1)}", (question, answer)
        numbers.append(int(match.group(1)))
    assert sorted(numbers) == sorted(expected)
    assert len(set(numbers)) == len(numbers)


async def session_row(sql: Sql, sid: str) -> list[Any]:
    return await sql("SELECT turn_count FROM sessions WHERE session_id = :sid", sid=sid)


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "new"])
async def test_fifty_concurrent_add_turns_on_one_session(
    repo: SessionRepository, make_repo: MakeRepo, sql: Sql, existing: bool
) -> None:
    """50 concurrent add_turn calls on one session store 100 turns, paired, none lost or doubled."""
    if existing:
        sid, _ = await repo.get_or_create()
    else:
        sid = repo.generate_session_id()

    states = await asyncio.gather(*(repo.add_turn(sid, f"q{n}", f"a{n}") for n in range(EXCHANGES)))

    pairs = await stored_exchanges(sql, sid)
    assert len(pairs) == EXCHANGES
    check_numbered_pairs(pairs, set(range(EXCHANGES)))
    assert await session_row(sql, sid) == [(2 * EXCHANGES,)]
    assert (await repo.get_stats())["sessions_created"] == 1
    final = await sql_contents(sql, sid)
    for n, state in enumerate(states):
        got = contents(state)
        assert got == final[: len(got)], "a returned state is not what the database held"
        assert ("user", f"q{n}") in got
        assert ("assistant", f"a{n}") in got
    cached = await repo.get(sid)
    assert cached is not None
    assert contents(cached) == final
    fresh = await make_repo()
    reloaded = await fresh.get(sid)
    assert reloaded is not None
    assert contents(reloaded) == final


async def test_fifty_concurrent_add_turns_from_two_repositories(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """Two repositories (two caches) writing one session concurrently lose nothing, and each
    sees the other's turns in the state its next add_turn returns."""
    first, second = await make_repo(), await make_repo()
    sid, _ = await first.get_or_create()
    await second.get(sid)  # both caches hold the (empty) session

    writers = [first if n % 2 == 0 else second for n in range(EXCHANGES)]
    states = await asyncio.gather(
        *(writer.add_turn(sid, f"q{n}", f"a{n}") for n, writer in enumerate(writers))
    )

    pairs = await stored_exchanges(sql, sid)
    assert len(pairs) == EXCHANGES
    check_numbered_pairs(pairs, set(range(EXCHANGES)))
    final = await sql_contents(sql, sid)
    for state in states:
        got = contents(state)
        assert got == final[: len(got)], "a returned state is not what the database held"

    state = await first.add_turn(sid, "q-first", "a-first")
    after_first = await sql_contents(sql, sid)
    assert len(after_first) == 2 * EXCHANGES + 2
    assert contents(state) == after_first
    cached = await first.get(sid)
    assert cached is not None
    assert contents(cached) == after_first

    state = await second.add_turn(sid, "q-second", "a-second")
    after_second = await sql_contents(sql, sid)
    assert len(after_second) == 2 * EXCHANGES + 4
    assert contents(state) == after_second
    cached = await second.get(sid)
    assert cached is not None
    assert contents(cached) == after_second


async def test_two_processes_append_to_one_session(url: str, sql: Sql) -> None:
    """Two OS processes appending to one session at once store every exchange once, paired,
    each writer's exchanges in its own order."""
    sid = SessionRepository.generate_session_id()
    count = 30
    names = ("alpha", "beta")
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WRITER),
            url,
            sid,
            name,
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in names
    ]
    try:
        for process in processes:  # both repositories started: release them together
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line.strip() == b"ready", line
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        outputs = await asyncio.wait_for(
            asyncio.gather(*(process.communicate() for process in processes)), timeout=120
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
        assert stderr.strip() == b"", stderr.decode()
        assert stdout.strip() == b"done"

    pairs = await stored_exchanges(sql, sid)
    assert len(pairs) == len(names) * count
    by_writer: dict[str, list[int]] = {name: [] for name in names}
    for question, answer in pairs:
        match = re.fullmatch(r"(alpha|beta)-(\d+)", question)
        assert match is not None, question
        assert answer == f"{question}-answer"
        by_writer[match.group(1)].append(int(match.group(2)))
    for name in names:
        assert by_writer[name] == list(range(count)), f"{name}'s exchanges lost or reordered"
    assert await session_row(sql, sid) == [(2 * len(names) * count,)]


async def test_concurrent_get_or_create_of_one_new_id(repo: SessionRepository, sql: Sql) -> None:
    """20 concurrent get_or_create calls for one new id create exactly one session, once."""
    sid = "shared-new-session"
    results = await asyncio.gather(*(repo.get_or_create(sid) for _ in range(20)))

    assert {got_sid for got_sid, _ in results} == {sid}
    for _, state in results:
        assert state.turns == []
    assert await sql("SELECT count(*) FROM sessions") == [(1,)]
    assert await sql("SELECT session_id FROM sessions") == [(sid,)]
    stats = await repo.get_stats()
    assert stats["sessions_created"] == 1


async def test_cold_loads_during_appends_see_whole_exchanges(make_repo: MakeRepo) -> None:
    """A repository that loads a session from the database (never from its cache) while
    another appends to it always gets a state the database held: whole exchanges in order,
    each user turn with its own slot, and the session's slots those of its last user turn."""
    writer = await make_repo()
    reader = await make_repo(max_sessions=1)  # reading two sessions in turn: every get is cold
    sid, _ = await writer.get_or_create()
    other, _ = await reader.get_or_create()

    async def write() -> None:
        for n in range(40):
            await writer.add_turn(sid, f"q{n}", f"a{n}", slots={"n": str(n)})

    seen: list[ConversationState] = []

    async def read() -> None:
        while not writing.done():
            state = await reader.get(sid)
            assert state is not None
            seen.append(state)
            await reader.get(other)

    writing = asyncio.ensure_future(write())
    await asyncio.gather(writing, read())
    assert len({len(state.turns) for state in seen}) > 1, "no load fell between two appends"
    for state in seen:
        pairs = [
            (user.role, user.content, user.slots, assistant.role, assistant.content)
            for user, assistant in zip(state.turns[::2], state.turns[1::2], strict=True)
        ]
        assert pairs == [
            ("user", f"q{n}", {"n": str(n)}, "assistant", f"a{n}") for n in range(len(pairs))
        ]
        assert state.current_slots == ({"n": str(len(pairs) - 1)} if pairs else {})
