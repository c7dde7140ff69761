"""Owners: a session created with a ``user_id`` is never read or written through another
user's call; ``list_sessions``, ``export_user`` and ``erase_user`` cover a user's live and
retained conversations, and nothing of anyone else's. Both backends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _statements import count_statements
from conftest import FakeClock, MakeRepo, Sql

from convostore import (
    ConversationState,
    ConversationTurn,
    ForeignStateError,
    InvalidPage,
    InvalidSessionId,
    NotSessionOwner,
    SessionRepository,
)

TTL = 100
"""The sessions' TTL in these tests, in seconds."""

USER_TABLES = ("sessions", "conversations", "turns", "turn_slots", "turn_feedback")


async def _talk(repo: SessionRepository, sid: str, user: str | None, place: str) -> None:
    """One exchange with a slot and a result, then a follow-up, as ``user``, who rates the
    first answer."""
    await repo.add_turn(
        sid,
        f"Welke archieven zijn er in {place}?",
        "Twaalf.",
        template_id="archives_in_place",
        slots={"place": place},
        results=[{"name": f"Archief {place}", "count": 12}],
        user_id=user,
    )
    await repo.add_turn(
        sid,
        "En daarna?",
        "Drie.",
        resolved_question=f"Welke archieven zijn er daarna in {place}?",
        user_id=user,
    )
    assert await repo.add_feedback(sid, 2, 1, user_id=user)


async def _rows_of(sql: Sql, user: str) -> dict[str, int]:
    """Rows in each table that belong to ``user``'s conversations."""
    mine = "SELECT conversation_id FROM conversations WHERE user_id = :u"
    return {
        table: (
            await sql(f"SELECT count(*) FROM {table} WHERE conversation_id IN ({mine})", u=user)
        )[0][0]
        for table in USER_TABLES
    }


async def _alice_and_bob(repo: SessionRepository, clock: FakeClock) -> None:
    """Alice: a conversation under "a-1" that ended (retained), a new live one under the same
    id, and a live "a-2". Bob: a live "b-1" and an ownerless "anon"."""
    await _talk(repo, "a-1", "alice", "Utrecht")
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    await _talk(repo, "a-1", "alice", "Enschede")
    clock.advance(1)
    await _talk(repo, "a-2", "alice", "Zwolle")
    await _talk(repo, "b-1", "bob", "Utrecht")
    await _talk(repo, "anon", None, "Deventer")


@pytest.mark.parametrize("bad", ["", "x" * 129, "\u00e9", 7, b"alice"])
async def test_a_bad_user_id_is_refused_before_any_sql(make_repo: MakeRepo, bad: Any) -> None:
    """Every call that takes a user id checks it first, with the session-id rules."""
    repo = await make_repo()
    calls = [
        repo.get("s", user_id=bad),
        repo.get_or_create("s", user_id=bad),
        repo.add_turn("s", "q", "a", user_id=bad),
        repo.update("s", ConversationState(), user_id=bad),
        repo.delete("s", user_id=bad),
        repo.list_sessions(bad),
        repo.export_user(bad),
        repo.erase_user(bad),
    ]
    with count_statements(repo.engine) as statements:
        for call in calls:
            with pytest.raises(InvalidSessionId, match="user_id"):
                await call
    assert statements == []


async def test_another_users_session_is_never_read_or_written(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """Bob gets None for Alice's session and NotSessionOwner when he would create or append
    to it, from a repository that cached it and from one that did not; nothing is written.
    CallLifecycle without a user id behave as before."""
    alice = await make_repo()
    sid, _ = await alice.get_or_create("alices", user_id="alice")
    await alice.add_turn(sid, "Archieven in Utrecht?", "Twaalf.", user_id="alice")
    before = await sql("SELECT seq, content FROM turns ORDER BY seq")
    for repo in (alice, await make_repo()):
        assert await repo.get(sid, user_id="bob") is None
        with pytest.raises(NotSessionOwner):
            await repo.get_or_create(sid, user_id="bob")
        with pytest.raises(NotSessionOwner):
            await repo.add_turn(sid, "Mag ik meelezen?", "Nee.", user_id="bob")
        owned = await repo.get(sid, user_id="alice")
        assert owned is not None
        assert [t.content for t in owned.turns] == [
            "Archieven in Utrecht?",
            "Twaalf.",
        ]
        anyone = await repo.get(sid)
        assert anyone is not None
        assert len(anyone.turns) == 2
    assert await sql("SELECT seq, content FROM turns ORDER BY seq") == before
    assert await sql("SELECT user_id FROM sessions") == [("alice",)]


async def _stored(sql: Sql) -> dict[str, list[Any]]:
    """Every row of the tables that hold a session."""
    return {table: await sql(f"SELECT * FROM {table} ORDER BY 1, 2") for table in USER_TABLES}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "core"])
async def test_update_and_delete_write_only_the_users_own_session(
    make_repo: MakeRepo, sql: Sql, fast_path: bool
) -> None:
    """update and delete with a user_id refuse Alice's session and an ownerless one with
    NotSessionOwner, from a repository that cached it and from one that did not, with and
    without if_unchanged: no row changes, and no cache serves what was refused. Alice's own
    update and delete work, and her update of an unknown id creates a session that is hers
    (in the database and in the cache)."""
    alice = await make_repo(fast_path=fast_path)
    await _talk(alice, "alices", "alice", "Utrecht")
    await _talk(alice, "anon", None, "Deventer")
    before = await _stored(sql)
    for repo in (alice, await make_repo(fast_path=fast_path)):
        for sid in ("alices", "anon"):
            state = await repo.get(sid)
            assert state is not None
            state.add_turn(ConversationTurn(role="user", content="Bob was hier"))
            state.current_slots["place"] = "Bobstad"
            for if_unchanged in (False, True):
                with pytest.raises(NotSessionOwner):
                    await repo.update(sid, state, if_unchanged=if_unchanged, user_id="bob")
            with pytest.raises(NotSessionOwner):
                await repo.delete(sid, user_id="bob")
            served = await repo.get(sid)
            assert served is not None
            assert "Bob was hier" not in [turn.content for turn in served.turns]
            assert served.current_slots["place"] != "Bobstad"
    assert await _stored(sql) == before

    state = await alice.get("alices", user_id="alice")
    assert state is not None
    state.add_turn(ConversationTurn(role="user", content="En in Zwolle?"))
    await alice.update("alices", state, if_unchanged=True, user_id="alice")
    reread = await (await make_repo(fast_path=fast_path)).get("alices", user_id="alice")
    assert reread is not None
    assert reread.turns[-1].content == "En in Zwolle?"

    new = ConversationState(turns=[ConversationTurn(role="user", content="Hallo")])
    await alice.update("nieuw", new, user_id="alice")
    assert await sql("SELECT user_id FROM sessions WHERE session_id = 'nieuw'") == [("alice",)]
    assert await sql("SELECT user_id FROM conversations WHERE session_id = 'nieuw'") == [("alice",)]
    assert await alice.get("nieuw", user_id="bob") is None
    mine = await alice.get("nieuw", user_id="alice")
    assert mine is not None
    assert [turn.content for turn in mine.turns] == ["Hallo"]

    assert await alice.delete("alices", user_id="alice") is True
    assert await alice.delete("alices", user_id="alice") is False
    assert await alice.delete("unknown", user_id="alice") is False
    assert await sql("SELECT session_id FROM sessions ORDER BY 1") == [("anon",), ("nieuw",)]


async def test_a_state_of_one_session_is_refused_by_update_of_another(
    make_repo: MakeRepo, sql: Sql
) -> None:
    """A state the store handed out for Bob's session (by get, a windowed get, a cold get,
    get_or_create, add_turn or update; or a model_copy of one), passed to update of Alice's
    session, raises ForeignStateError before any SQL, whatever the user id: none of Bob's
    turns or slots reach her session. A state built on purpose from Bob's
    (ConversationState(**state.model_dump())) copies his conversation whole."""
    repo = await make_repo()
    await _talk(repo, "bobs", "bob", "Utrecht")
    await _talk(repo, "alices", "alice", "Zwolle")
    updated = await repo.get("bobs")
    assert updated is not None
    updated.add_turn(ConversationTurn(role="user", content="Geheim van Bob"))
    await repo.update("bobs", updated)
    handed: dict[str, ConversationState | None] = {
        "get": await repo.get("bobs"),
        "window": await repo.get("bobs", last_turns=2),
        "cold": await (await make_repo()).get("bobs"),
        "get_or_create": (await repo.get_or_create("bobs"))[1],
        "add_turn": await repo.add_turn("bobs", "Nog geheimer?", "Ja.", user_id="bob"),
        "update": updated,
    }
    bobs = handed["add_turn"]
    assert bobs is not None
    handed["model_copy"] = bobs.model_copy()
    before = await _stored(sql)
    with count_statements(repo.engine) as statements:
        for how, state in handed.items():
            assert state is not None, how
            for options in ({}, {"user_id": "alice"}, {"if_unchanged": True}):
                with pytest.raises(ForeignStateError, match="another session than 'alices'"):
                    await repo.update("alices", state, **options)
    assert statements == []
    assert await _stored(sql) == before

    await repo.update("kopie", ConversationState(**bobs.model_dump()), user_id="bob")
    copy = await repo.get("kopie", user_id="bob")
    assert copy is not None
    assert [turn.content for turn in copy.turns] == [turn.content for turn in bobs.turns]
    assert copy.current_slots == bobs.current_slots


async def test_a_session_without_owner_is_not_any_users(make_repo: MakeRepo) -> None:
    """A session created without a user id belongs to no user: a call with one neither
    reads it nor writes it (nobody can claim an anonymous session by naming its id)."""
    repo = await make_repo()
    await repo.add_turn("anon", "q", "a")
    assert await repo.get("anon", user_id="alice") is None
    with pytest.raises(NotSessionOwner):
        await repo.add_turn("anon", "q2", "a2", user_id="alice")
    state = await repo.get("anon")
    assert state is not None
    assert [t.content for t in state.turns] == ["q", "a"]


async def test_add_turn_with_a_user_id_creates_an_owned_session(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """add_turn on an unknown session creates it for that user (session and conversation
    rows); once it has expired, another user may start a new conversation under the id."""
    repo = await make_repo(session_ttl=TTL)
    await repo.add_turn("s", "q", "a", user_id="alice")
    assert await sql("SELECT user_id FROM sessions") == [("alice",)]
    assert await sql("SELECT user_id FROM conversations") == [("alice",)]
    clock.advance(TTL + 1)
    await repo.add_turn("s", "q", "a", user_id="bob")
    rows = await sql("SELECT user_id, ended_at IS NULL FROM conversations ORDER BY 1")
    assert [(user, bool(live)) for user, live in rows] == [("alice", False), ("bob", True)]


async def test_list_sessions_is_newest_first_paged_and_the_users_own(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """Alice's three conversations (one ended and retained, two live), newest first, in
    pages; Bob's and ownerless ones are not listed."""
    repo = await make_repo(session_ttl=TTL)
    await _alice_and_bob(repo, clock)
    listed = await repo.list_sessions("alice")
    assert [(c.session_id, c.live, c.turns) for c in listed] == [
        ("a-2", True, 4),
        ("a-1", True, 4),
        ("a-1", False, 4),
    ]
    assert listed[2].ended_at is not None
    assert listed[0].ended_at is None
    assert all(c.user_id == "alice" for c in listed)
    assert len({c.conversation_id for c in listed}) == 3
    assert listed[0].last_activity >= listed[0].started_at

    first = await repo.list_sessions("alice", limit=2)
    rest = await repo.list_sessions("alice", limit=2, before=first[-1].conversation_id)
    assert first + rest == listed
    assert await repo.list_sessions("carol") == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"before": 0}, {"before": "1"}):
        with pytest.raises(InvalidPage):
            await repo.list_sessions("alice", **bad)


async def test_export_user_holds_everything_stored_about_them(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """The export is JSON-ready and holds each of Alice's conversations, live and retained,
    with every turn's text, slots and results; nothing of Bob's."""
    repo = await make_repo(session_ttl=TTL)
    await _alice_and_bob(repo, clock)
    export = json.loads(json.dumps(await repo.export_user("alice")))
    assert export["user_id"] == "alice"
    conversations = export["conversations"]
    assert [(c["session_id"], c["live"]) for c in conversations] == [
        ("a-1", False),
        ("a-1", True),
        ("a-2", True),
    ]
    ended = conversations[0]
    assert ended["ended_at"] is not None
    assert ended["language"] is None
    assert [t["content"] for t in ended["turns"]] == [
        "Welke archieven zijn er in Utrecht?",
        "Twaalf.",
        "En daarna?",
        "Drie.",
    ]
    assert ended["turns"][0]["slots"] == {"place": "Utrecht"}
    assert ended["turns"][0]["results"] == [{"name": "Archief Utrecht", "count": 12}]
    assert ended["turns"][2]["resolved_question"] == "Welke archieven zijn er daarna in Utrecht?"
    assert conversations[1]["current_slots"] == {"place": "Enschede"}
    assert "Bob" not in json.dumps(export)
    assert "b-1" not in json.dumps(export)
    assert (await repo.export_user("carol"))["conversations"] == []


async def test_erase_user_deletes_every_row_of_theirs_and_nothing_else(
    make_repo: MakeRepo, sql: Sql, clock: FakeClock
) -> None:
    """erase_user removes Alice's sessions, conversations, turns and slots (live and
    retained), in batches of one conversation here, returns the counts, and leaves every row
    of Bob's and of the ownerless session as it was. A repository that cached Alice's
    session no longer serves it."""
    repo = await make_repo(session_ttl=TTL, sweep_batch_size=1)
    other = await make_repo(session_ttl=TTL, cache_coherence="strict")
    await _alice_and_bob(repo, clock)
    assert await other.get("a-2") is not None
    expected = await _rows_of(sql, "alice")
    assert expected == {
        "sessions": 2,
        "conversations": 3,
        "turns": 12,
        "turn_slots": 3,
        "turn_feedback": 3,
    }
    others = "SELECT * FROM {} WHERE session_id NOT IN ('a-1', 'a-2') ORDER BY 1, 2"
    before = {table: await sql(others.format(table)) for table in USER_TABLES}

    assert await repo.erase_user("alice") == expected

    for table in USER_TABLES:
        left = await sql(f"SELECT count(*) FROM {table} WHERE session_id IN ('a-1', 'a-2')")
        assert left == [(0,)], table
        assert await sql(others.format(table)) == before[table], table
    assert await sql("SELECT count(*) FROM conversations WHERE user_id = 'alice'") == [(0,)]
    assert await repo.get("a-2") is None
    assert await other.get("a-2") is None
    assert await repo.list_sessions("alice") == []
    assert await repo.erase_user("alice") == dict.fromkeys(USER_TABLES, 0)
