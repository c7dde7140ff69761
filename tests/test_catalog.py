"""The catalog: titles and metadata on sessions (``set_title``, ``set_metadata``,
``StoreConfig.auto_title``) and ``list_sessions`` as keyset pages by last activity or start,
filtered by metadata and by liveness. Every backend."""

from __future__ import annotations

import re
from typing import Any

import pytest
from _statements import count_statements
from alembic.script import ScriptDirectory
from conftest import FakeClock, MakeRepo, Sql
from cryptography.fernet import Fernet
from pydantic import ValidationError

from convostore import (
    ConversationSummary,
    InvalidPage,
    InvalidSessionId,
    InvalidTurn,
    NotSessionOwner,
    SessionPage,
    SessionRepository,
    StoreConfig,
)
from convostore.migrate import alembic_config, migrate_url

TTL = 100


async def _all_pages(
    repo: SessionRepository, user: str, **options: Any
) -> list[list[ConversationSummary]]:
    """Every page of ``user``'s listing with ``options``, following the cursors."""
    pages = []
    cursor = None
    while True:
        page = await repo.list_sessions(user, cursor=cursor, **options)
        pages.append(list(page))
        cursor = page.next_cursor
        if cursor is None:
            return pages


async def test_title_and_metadata_reach_the_state_cached_and_cold(make_repo: MakeRepo) -> None:
    """What ``set_title`` and ``set_metadata`` store is in every state handed out after, from
    the cache and from a cold read, and in the summary; a state's metadata is its own."""
    repo = await make_repo()
    await repo.add_turn("s", "Welke archieven zijn er in Utrecht?", "Twaalf.", user_id="u")
    assert await repo.set_title("s", "Archieven in Utrecht", user_id="u")
    metadata = {"project": "archives", "tags": ["utrecht", "gemeente"], "stars": 5}
    assert await repo.set_metadata("s", metadata, user_id="u")
    metadata["stars"] = 0  # the caller's dict is not the stored one

    cached = await repo.get("s")
    assert cached is not None
    assert cached.title == "Archieven in Utrecht"
    assert cached.metadata == {"project": "archives", "tags": ["utrecht", "gemeente"], "stars": 5}
    cached.metadata["stars"] = 1
    again = await repo.get("s")
    assert again is not None
    assert again.metadata["stars"] == 5

    cold = await make_repo()
    state = await cold.get("s")
    assert state is not None
    assert (state.title, state.metadata) == (again.title, again.metadata)
    (summary,) = await cold.list_sessions("u")
    assert (summary.title, summary.metadata) == (again.title, again.metadata)

    assert await repo.set_title("s", None)
    assert await repo.set_metadata("s", None)
    cleared = await make_repo()
    state = await cleared.get("s")
    assert state is not None
    assert (state.title, state.metadata) == (None, {})


async def test_setting_a_field_of_no_live_session_stores_nothing(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """An unknown or expired session gets no title: False, and no row changes."""
    repo = await make_repo(session_ttl=TTL)
    assert not await repo.set_title("unknown", "Titel")
    await repo.add_turn("old", "Vraag?", "Antwoord.")
    clock.advance(TTL + 1)
    assert not await repo.set_metadata("old", {"k": "v"})
    assert not await repo.set_title("old", "Titel")
    rows = await sql("SELECT title, metadata FROM sessions WHERE session_id = 'old'")
    assert [tuple(row) for row in rows] == [(None, rows[0][1])]
    assert rows[0][1] in ({}, "{}")


async def test_bad_titles_and_metadata_fail_before_any_sql(repo: SessionRepository) -> None:
    """Each bad value raises convostore's own error before a statement runs."""
    await repo.add_turn("s", "Vraag?", "Antwoord.", user_id="u")
    too_big = {"text": "x" * (repo.config.max_results_bytes + 1)}
    cases: list[tuple[Any, type[Exception], Any]] = [
        (repo.set_title("s", ""), InvalidTurn, None),
        (repo.set_title("s", "x" * 501), InvalidTurn, None),
        (repo.set_title("s", 7), InvalidTurn, None),  # type: ignore[arg-type]
        (repo.set_title("s", "a\x00b"), InvalidTurn, None),
        (repo.set_metadata("s", ["not", "an", "object"]), InvalidTurn, None),  # type: ignore[arg-type]
        (repo.set_metadata("s", {"n": float("nan")}), InvalidTurn, None),
        (repo.set_metadata("s", {1: "key"}), InvalidTurn, None),  # type: ignore[dict-item]
        (repo.set_metadata("s", too_big), InvalidTurn, None),
        (repo.set_title("", "Titel"), InvalidSessionId, None),
        (repo.list_sessions("u", metadata={"k": 1.5}), InvalidPage, None),  # type: ignore[dict-item]
        (repo.list_sessions("u", metadata={}), InvalidPage, None),
        (repo.list_sessions("u", order="title"), InvalidPage, None),
        (repo.list_sessions("u", live="yes"), InvalidPage, None),  # type: ignore[arg-type]
        (repo.list_sessions("u", cursor="not a cursor"), InvalidPage, None),
        (repo.list_sessions("u", cursor="x", before=3), InvalidPage, None),
    ]
    with count_statements(repo.engine) as statements:
        for call, error, _ in cases:
            with pytest.raises(error):
                await call
    assert statements == []
    state = await repo.get("s")
    assert state is not None
    assert (state.title, state.metadata) == (None, {})


async def test_another_owner_cannot_set_the_catalog_fields(repo: SessionRepository) -> None:
    await repo.add_turn("s", "Vraag?", "Antwoord.", user_id="alice")
    with pytest.raises(NotSessionOwner):
        await repo.set_title("s", "Van Bob", user_id="bob")
    with pytest.raises(NotSessionOwner):
        await repo.set_metadata("s", {"owner": "bob"}, user_id="bob")
    state = await repo.get("s")
    assert state is not None
    assert (state.title, state.metadata) == (None, {})


async def test_update_writes_the_catalog_fields_of_the_state(make_repo: MakeRepo) -> None:
    """``title`` and ``metadata`` are session fields like ``language``: ``update`` stores
    them as the state holds them."""
    repo = await make_repo()
    sid, state = await repo.get_or_create()
    state.title = "Vanuit update"
    state.metadata = {"source": "update"}
    await repo.update(sid, state)
    cold = await (await make_repo()).get(sid)
    assert cold is not None
    assert (cold.title, cold.metadata) == ("Vanuit update", {"source": "update"})
    state.title = ""
    with pytest.raises(InvalidTurn):
        await repo.update(sid, state)


async def test_auto_title_comes_from_the_first_question(make_repo: MakeRepo) -> None:
    """With ``auto_title`` the first question titles a session that has no title, cut at a
    word; a later question or a title set since is never replaced."""
    repo = await make_repo(auto_title=True)
    state = await repo.add_turn("kort", "  Welke   archieven\nzijn er in Utrecht?  ", "Twaalf.")
    assert state.title == "Welke archieven zijn er in Utrecht?"
    state = await repo.add_turn("kort", "En in Enschede?", "Drie.")
    assert state.title == "Welke archieven zijn er in Utrecht?"

    long_question = "Welke " + "gemeentelijke archieven " * 10 + "zijn er?"
    state = await repo.add_turn("lang", long_question, "Veel.")
    assert state.title is not None
    assert len(state.title) <= 80
    assert state.title.endswith("\u2026")
    assert long_question.startswith(state.title[:-1])
    assert state.title[-2] != " "
    assert long_question[len(state.title) - 1] == " "

    await repo.get_or_create("gezet")
    assert await repo.set_title("gezet", "Eigen titel")
    state = await repo.add_turn("gezet", "Een vraag?", "Een antwoord.")
    assert state.title == "Eigen titel"

    cold = await make_repo(auto_title=True)
    for sid in ("kort", "lang", "gezet"):
        stored = await cold.get(sid)
        again = await repo.get(sid)
        assert stored is not None
        assert again is not None
        assert stored.title == again.title

    plain = await make_repo()
    state = await plain.add_turn("zonder", "Een vraag?", "Een antwoord.")
    assert state.title is None


async def test_the_catalog_outlives_the_session(make_repo: MakeRepo, clock: FakeClock) -> None:
    """A deleted or expired session's conversation keeps its title, metadata and last
    activity in the catalog."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    await repo.add_turn("weg", "Vraag?", "Antwoord.", user_id="u")
    await repo.set_title("weg", "Verwijderd")
    await repo.set_metadata("weg", {"k": "v"})
    appended_at = clock()
    clock.advance(5)
    await repo.get("weg")  # a read is not activity
    assert await repo.delete("weg")
    await repo.add_turn("verlopen", "Vraag?", "Antwoord.", user_id="u")
    await repo.set_title("verlopen", "Verlopen")
    clock.advance(TTL + 1)
    assert await repo.sweep_expired() == 1

    listed = await repo.list_sessions("u")
    assert [(c.session_id, c.title, c.live) for c in listed] == [
        ("verlopen", "Verlopen", False),
        ("weg", "Verwijderd", False),
    ]
    assert listed[1].metadata == {"k": "v"}
    assert listed[1].last_activity.timestamp() == pytest.approx(appended_at, abs=0.01)
    assert listed == await repo.list_sessions("u", order="started")


async def test_last_activity_orders_live_and_ended_conversations(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """The default order is last activity, newest first, across live and ended
    conversations; an append moves a conversation to the front, a read does not."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    for sid in ("a", "b", "c", "d"):
        await repo.add_turn(sid, f"Vraag {sid}?", "Ja.", user_id="u")
        clock.advance(1)
    await repo.delete("b")
    await repo.add_turn("a", "Nog een?", "Ja.", user_id="u")
    clock.advance(1)
    await repo.get("c")
    listed = await repo.list_sessions("u")
    assert [c.session_id for c in listed] == ["a", "d", "c", "b"]
    assert [c.live for c in listed] == [True, True, True, False]
    assert [c.turns for c in listed] == [4, 2, 2, 2]
    started = await repo.list_sessions("u", order="started")
    assert [c.session_id for c in started] == ["d", "c", "b", "a"]
    assert await repo.list_sessions("u", live=True) == [c for c in listed if c.live]
    assert await repo.list_sessions("u", live=False) == [c for c in listed if not c.live]
    assert await repo.list_sessions("u", order="started", live=False) == [listed[-1]]


@pytest.mark.parametrize("order", ["last_activity", "started"])
async def test_pages_cover_every_conversation_once_while_writes_happen(
    make_repo: MakeRepo, clock: FakeClock, order: str
) -> None:
    """Keyset pages: following the cursors lists every conversation exactly once, even when
    conversations are created, appended to and ended between pages."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    for index in range(23):
        await repo.add_turn(f"s{index:02}", "Vraag?", "Ja.", user_id="u")
        clock.advance(0.5)
        if index % 5 == 0:
            await repo.delete(f"s{index:02}")
    first = await repo.list_sessions("u", limit=10, order=order)
    assert isinstance(first, SessionPage)
    assert len(first) == 10
    assert first.next_cursor
    seen = [c.conversation_id for c in first]
    # Meanwhile: a new conversation, and one not listed yet ends; neither repeats nor skips.
    await repo.add_turn("nieuw", "Nieuw?", "Ja.", user_id="u")
    now_listed = await repo.list_sessions("u", limit=30, order=order)
    later = next(c for c in now_listed[11:] if c.live)  # after "nieuw" and the first page
    assert await repo.delete(later.session_id)
    cursor: str | None = first.next_cursor
    while cursor is not None:
        page = await repo.list_sessions("u", limit=10, cursor=cursor, order=order)
        seen += [c.conversation_id for c in page]
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 23
    assert later.conversation_id in seen
    everything = await repo.list_sessions("u", limit=1000, order=order)
    assert [c.conversation_id for c in everything][1:] == seen
    pages = await _all_pages(repo, "u", limit=8, order=order)
    assert [len(page) for page in pages] == [8, 8, 8]
    assert [c for page in pages for c in page] == list(everything)


async def test_a_cursor_belongs_to_its_order(repo: SessionRepository) -> None:
    for sid in ("a", "b"):
        await repo.add_turn(sid, "Vraag?", "Ja.", user_id="u")
    page = await repo.list_sessions("u", limit=1)
    assert page.next_cursor is not None
    with pytest.raises(InvalidPage):
        await repo.list_sessions("u", cursor=page.next_cursor, order="started")
    tampered = page.next_cursor[:-2] + ("AA" if not page.next_cursor.endswith("AA") else "BB")
    with pytest.raises(InvalidPage):
        await repo.list_sessions("u", cursor=tampered + "!")


async def test_metadata_filters_by_containment_with_json_types(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """``metadata={...}`` lists the conversations whose metadata holds every key with that
    value, compared with its JSON type: 5 is not "5", True is not 1; live and ended alike."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    values = {
        "a": {"project": "archives", "stars": 5, "public": True, "tags": ["x"]},
        "b": {"project": "archives", "stars": "5", "public": 1},
        "c": {"project": "maps", "stars": 5, "public": True},
        "d": {},
    }
    for sid, metadata in values.items():
        await repo.add_turn(sid, "Vraag?", "Ja.", user_id="u")
        await repo.set_metadata(sid, metadata)
        clock.advance(1)
    await repo.delete("a")

    async def listed(order: str = "last_activity", **wanted: Any) -> list[str]:
        page = await repo.list_sessions("u", metadata=wanted, order=order)
        return sorted(c.session_id for c in page)

    for order in ("last_activity", "started"):
        assert await listed(order, project="archives") == ["a", "b"]
        assert await listed(order, stars=5) == ["a", "c"]
        assert await listed(order, stars="5") == ["b"]
        assert await listed(order, public=True) == ["a", "c"]
        assert await listed(order, public=1) == ["b"]
        assert await listed(order, project="archives", stars=5) == ["a"]
        assert await listed(order, project="nowhere") == []
        assert await listed(order, **{'it\'s "quoted"': "x"}) == []
    page = await repo.list_sessions("u", metadata={"stars": 5}, limit=1)
    assert [c.session_id for c in page] == ["c"]
    assert page.next_cursor is not None
    rest = await repo.list_sessions("u", metadata={"stars": 5}, cursor=page.next_cursor)
    assert [c.session_id for c in rest] == ["a"]
    assert rest.next_cursor is None


async def test_other_workers_see_the_title(make_repo: MakeRepo) -> None:
    """A worker that cached the session before the title was set reads it within the
    coherence bound (strict coherence: on its next read)."""
    writer = await make_repo()
    reader = await make_repo(cache_coherence="strict")
    await writer.add_turn("s", "Vraag?", "Ja.")
    cached = await reader.get("s")
    assert cached is not None
    assert cached.title is None
    assert await writer.set_title("s", "Gezien")
    state = await reader.get("s")
    assert state is not None
    assert state.title == "Gezien"


async def test_a_populated_database_upgraded_to_the_catalog_lists_by_last_append(
    make_repo: MakeRepo, clock: FakeClock, url: str
) -> None:
    """A database of the revision before the catalog gets every conversation's last activity
    from its newest turn (its start if it has none), live and ended, so the first listing
    after the upgrade is in the order of the last appends. A downgrade drops the catalog."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    await repo.get_or_create("leeg", user_id="u")
    for sid in ("oud", "midden", "nieuw"):
        clock.advance(1)
        await repo.add_turn(sid, "Vraag?", "Ja.", user_id="u")
    clock.advance(1)
    await repo.add_turn("oud", "Nog een?", "Ja.", user_id="u")  # now the newest
    await repo.set_title("midden", "Weg na de downgrade")
    assert await repo.delete("midden")
    before = await repo.list_sessions("u")
    await repo.stop()

    previous = await _revision_before_head()
    await migrate_url(url, previous, allow_downgrade=True)
    await migrate_url(url)
    after = await (await make_repo(session_ttl=TTL)).list_sessions("u")
    assert [c.session_id for c in after] == ["oud", "nieuw", "midden", "leeg"]
    assert [c.session_id for c in after] == [c.session_id for c in before]
    assert [c.last_activity for c in after] == [c.last_activity for c in before]
    assert [c.title for c in after] == [None] * 4


async def _revision_before_head() -> str:
    """The revision the catalog's migration revises."""
    scripts = ScriptDirectory.from_config(alembic_config())
    catalog = next(
        script for script in scripts.walk_revisions() if script.doc.startswith("the catalog")
    )
    return str(catalog.down_revision)


async def test_redaction_reaches_titles_and_summaries(make_repo: MakeRepo, sql: Sql) -> None:
    """``redact`` masks a title and a summary as it masks what a turn says, and an automatic
    title comes from the redacted question; ``auto_title`` with encryption is refused, as it
    would keep questions in plain text."""

    def masked(text: str) -> str:
        return re.sub(r"[\w.]+@\w+\.\w+", "[email]", text)

    repo = await make_repo(redact=masked, auto_title=True)
    state = await repo.add_turn("s", "Mail jan@example.nl de lijst?", "Ja.")
    assert state.title == "Mail [email] de lijst?"
    assert await repo.set_title("s", "Voor piet@example.nl")
    assert await repo.set_summary("s", "Lijst naar jan@example.nl.", upto_seq=2)
    rows = await sql("SELECT title, summary FROM sessions")
    assert [tuple(row) for row in rows] == [("Voor [email]", "Lijst naar [email].")]
    with pytest.raises(ValidationError, match="auto_title"):
        StoreConfig(auto_title=True, encryption_keys=[Fernet.generate_key().decode()])
