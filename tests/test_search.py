"""Full-text search over the stored turns (``SessionRepository.search``), on every backend:
what it finds and where, whose conversations, paging, plain words whatever the characters,
input errors before any SQL, a populated database upgraded to the search's migration,
turns that leave with their conversation, and (PostgreSQL) the words parsed once per search."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from _statements import count_statements
from alembic.script import ScriptDirectory
from conftest import FakeClock, MakeRepo

from convostore import (
    InvalidPage,
    InvalidQuery,
    InvalidSessionId,
    NotRunning,
    SearchHit,
    SessionRepository,
    StoreConfig,
)
from convostore.backends import backend_for
from convostore.backends._search import search_statement
from convostore.migrate import alembic_config, migrate_url

MARK = "**"


async def _all_hits(repo: SessionRepository, query: str, **options: Any) -> list[SearchHit]:
    """Every hit of ``query``, page after page."""
    page = await repo.search(query, **options)
    hits = list(page.hits)
    while page.next_cursor is not None:
        page = await repo.search(query, cursor=page.next_cursor, **options)
        hits.extend(page.hits)
    return hits


def _keys(hits: list[SearchHit]) -> list[tuple[str, int]]:
    return [(hit.session_id, hit.seq) for hit in hits]


async def test_finds_a_word_in_a_question_a_resolved_question_and_an_answer(
    repo: SessionRepository,
) -> None:
    """Each of the three texts of an exchange is searched: a word only in the question, only
    in the resolved question (both hits are the user turn) or only in the answer (the
    assistant turn), whatever its case; the snippet marks the word."""
    await repo.add_turn(
        "s1",
        "Which harpsichords are there?",
        "Three Flemish instruments in the museum.",
        resolved_question="harpsichords in the Utrecht collection",
    )
    await repo.add_turn("s2", "Nothing about it", "Nothing either.")
    for query, role, seq in (
        ("Which", "user", 1),
        ("COLLECTION", "user", 1),
        ("flemish", "assistant", 2),
    ):
        page = await repo.search(query)
        assert [(h.session_id, h.seq, h.role) for h in page.hits] == [("s1", seq, role)], query
        (hit,) = page.hits
        assert hit.conversation_id > 0
        assert hit.rank > 0
        assert f"{MARK}{query.lower()}{MARK}" in hit.snippet.lower(), hit.snippet
        assert page.next_cursor is None
    both = await repo.search("harpsichords utrecht")
    assert _keys(both.hits) == [("s1", 1)]
    assert (await repo.search("harpsichords zeppelin")).hits == []


async def test_user_id_limits_the_search_to_that_users_conversations(
    repo: SessionRepository,
) -> None:
    """With ``user_id`` only that user's conversations are searched; without it, everyone's
    (those of no user too)."""
    await repo.add_turn("a", "Where is the marmalade?", "In the pantry.", user_id="ann")
    await repo.add_turn("b", "Marmalade recipes?", "Oranges and sugar.", user_id="bob")
    await repo.add_turn("c", "Marmalade for nobody", "Fine.")
    assert _keys((await repo.search("marmalade", user_id="ann")).hits) == [("a", 1)]
    assert _keys((await repo.search("marmalade", user_id="bob")).hits) == [("b", 1)]
    assert (await repo.search("marmalade", user_id="carol")).hits == []
    assert sorted(_keys((await repo.search("marmalade")).hits)) == [("a", 1), ("b", 1), ("c", 1)]


@pytest.mark.parametrize("limit", [1, 4, 7])
async def test_pages_cover_every_hit_once_best_first(repo: SessionRepository, limit: int) -> None:
    """Following ``next_cursor`` gives every matching turn exactly once, ranks never rising
    from one hit to the next (ties included: several turns rank alike), for a user's search
    too; the last page has no cursor."""
    for n in range(9):
        sid = f"s{n % 3}"
        question = "zeppelin " * (1 + n % 2) + f"flight number {n}"
        await repo.add_turn(sid, question, f"A zeppelin answer {n}.", user_id="ann")
    await repo.add_turn("other", "zeppelin", "zeppelin", user_id="bob")

    hits = await _all_hits(repo, "zeppelin", limit=limit)
    assert len(hits) == 20
    assert len(set(_keys(hits))) == 20
    ranks = [hit.rank for hit in hits]
    assert ranks == sorted(ranks, reverse=True)
    first = await repo.search("zeppelin", limit=limit)
    assert len(first.hits) == limit
    assert first.next_cursor is not None

    owned = await _all_hits(repo, "zeppelin", limit=limit, user_id="ann")
    assert len(owned) == 18
    assert set(_keys(owned)) == set(_keys(hits)) - {("other", 1), ("other", 2)}


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"zeppelin',
        "zeppelin*",
        "*",
        "-zeppelin",
        "zeppelin -",
        "zeppelin AND",
        "AND OR NOT",
        "(zeppelin",
        "zeppelin)",
        "NEAR(zeppelin flight)",
        "zeppelin: flight",
        "'zeppelin'",
        "+zeppelin ~flight <x> @3",
        "\\ ; -- /* */",
        "%_",
    ],
)
async def test_query_syntax_characters_are_plain_words(repo: SessionRepository, query: str) -> None:
    """Quotes, ``*``, ``-``, ``AND``, parentheses and the like never reach the database as
    operators: no syntax error, and a word beside them is still searched for as a word."""
    await repo.add_turn("s", "zeppelin flight", "Landed.")
    page = await repo.search(query)
    if "zeppelin" in query.lower() and "flight" not in query and "AND" not in query:
        assert _keys(page.hits) == [("s", 1)], query
    assert all(hit.session_id == "s" for hit in page.hits)


async def test_bad_input_is_refused_before_any_sql(repo: SessionRepository) -> None:
    """An empty, blank, non-text or over-long query, a bad user id, a limit outside 1-1000
    and a cursor that is not one of this search's raise convostore's errors and run no SQL."""
    await repo.add_turn("s", "zeppelin", "zeppelin")
    page = await repo.search("zeppelin", limit=1)
    assert page.next_cursor is not None
    too_long = "zeppelin " * (repo.config.max_text_chars // 9 + 1)
    bad: list[tuple[type[Exception], dict[str, Any]]] = [
        (InvalidQuery, {"query": ""}),
        (InvalidQuery, {"query": " \t\n"}),
        (InvalidQuery, {"query": 42}),
        (InvalidQuery, {"query": None}),
        (InvalidQuery, {"query": too_long}),
        (InvalidQuery, {"query": "nul\x00"}),
        (InvalidSessionId, {"query": "zeppelin", "user_id": ""}),
        (InvalidPage, {"query": "zeppelin", "limit": 0}),
        (InvalidPage, {"query": "zeppelin", "limit": 1001}),
        (InvalidPage, {"query": "zeppelin", "limit": True}),
        (InvalidPage, {"query": "zeppelin", "limit": "5"}),
        (InvalidPage, {"query": "zeppelin", "cursor": ""}),
        (InvalidPage, {"query": "zeppelin", "cursor": "not a cursor"}),
        (InvalidPage, {"query": "zeppelin", "cursor": 17}),
        (InvalidPage, {"query": "zeppelin", "cursor": "W10"}),
        (InvalidPage, {"query": "airship", "cursor": page.next_cursor}),
        (InvalidPage, {"query": "zeppelin", "user_id": "ann", "cursor": page.next_cursor}),
    ]
    with count_statements(repo.engine) as statements:
        for error, arguments in bad:
            with pytest.raises(error):
                await repo.search(**arguments)
    assert statements == []


async def test_search_needs_a_running_repository(url: str) -> None:
    """Before ``start()`` and after ``stop()`` a search raises ``NotRunning``."""
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0))
    with pytest.raises(NotRunning):
        await repo.search("zeppelin")
    async with repo:
        assert (await repo.search("zeppelin")).hits == []
    with pytest.raises(NotRunning):
        await repo.search("zeppelin")


async def test_turns_deleted_with_their_conversation_no_longer_match(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """A transcript deleted past its retention and a user's erased conversations leave the
    search; other conversations stay found."""
    repo = await make_repo(session_ttl=100, transcript_retention=1000)
    await repo.add_turn("old", "zeppelin over the sea", "Yes.")
    clock.advance(600)
    await repo.add_turn("erased", "zeppelin over the land", "No.", user_id="ann")
    await repo.add_turn("kept", "zeppelin over the hills", "Maybe.", user_id="bob")
    assert len((await repo.search("zeppelin")).hits) == 3

    clock.advance(501)
    await repo.sweep_expired()
    await repo.sweep_expired()
    assert sorted(_keys((await repo.search("zeppelin")).hits)) == [("erased", 1), ("kept", 1)]
    assert (await repo.search("sea")).hits == []

    await repo.erase_user("ann")
    assert _keys((await repo.search("zeppelin")).hits) == [("kept", 1)]
    assert (await repo.search("land")).hits == []


async def test_postgresql_indexes_with_the_configuration_the_migration_was_given(
    backend: str, empty_url: str, make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Env ``CONVOSTORE_SEARCH_CONFIG`` at migration time picks PostgreSQL's text search
    configuration, for the index and the queries alike (``english`` stems: "archives" finds
    "archive"); the other databases ignore it and match the words as written."""
    monkeypatch.setenv("CONVOSTORE_SEARCH_CONFIG", "english")
    await migrate_url(empty_url)
    repo = await make_repo(database_url=empty_url)
    await repo.add_turn("s", "Which archives hold maps?", "The national archive.")
    stemmed = sorted(_keys((await repo.search("archive")).hits))
    assert stemmed == ([("s", 1), ("s", 2)] if backend == "postgresql" else [("s", 2)])
    assert _keys((await repo.search("maps")).hits) == [("s", 1)]


def _before_search() -> str:
    """The revision before the one that adds the search (found by its script's name, so that
    renumbering the revisions changes nothing here)."""
    script = ScriptDirectory.from_config(alembic_config())
    (search,) = [
        rev for rev in script.walk_revisions() if rev.path.endswith("_full_text_search.py")
    ]
    assert isinstance(search.down_revision, str)
    return search.down_revision


async def test_a_populated_database_upgraded_to_the_search_is_searchable(
    make_repo: MakeRepo, url: str
) -> None:
    """Turns stored before the search's migration (the database taken back to the revision
    before it) are found once it is applied again (and any after it): the migration fills
    the index. Turns stored after it are found too."""
    repo = await make_repo()
    await repo.add_turn("s", "Where did the zeppelin land?", "In Friedrichshafen.")
    await repo.add_turn("t", "Another zeppelin question", "Another answer.")
    await repo.stop()
    await migrate_url(url, _before_search(), allow_downgrade=True)
    await migrate_url(url)

    repo = await make_repo()
    assert sorted(_keys(await _all_hits(repo, "zeppelin"))) == [("s", 1), ("t", 1)]
    assert _keys((await repo.search("friedrichshafen")).hits) == [("s", 2)]
    await repo.add_turn("u", "A third zeppelin", "Landed.")
    assert len((await repo.search("zeppelin")).hits) == 3


async def test_concurrent_searches_and_appends(repo: SessionRepository) -> None:
    """Searches run beside appends (the index kept in the appends' own transactions): each
    search sees a consistent set of stored turns, and in the end every turn is found."""
    await asyncio.gather(
        *(repo.add_turn(f"s{n}", f"zeppelin {n}", "ok") for n in range(10)),
        *(repo.search("zeppelin") for _ in range(5)),
    )
    assert len(await _all_hits(repo, "zeppelin", limit=3)) == 10


async def test_a_long_text_of_distinct_words_is_stored_and_found(make_repo: MakeRepo) -> None:
    """A question of 300,000 characters in 60,000 distinct words (more than PostgreSQL's
    1 MB ``tsvector`` could hold whole) is stored, and a word at its start is found."""
    repo = await make_repo(max_text_chars=300_000)
    words = (
        "".join(chr(0x20000 + n // 64**place % 64) for place in range(4)) for n in range(60_000)
    )
    question = "zeppelin " + " ".join(words)
    await repo.add_turn("long", question[:300_000], "Noted.")
    assert _keys((await repo.search("zeppelin")).hits) == [("long", 1)]


def _sql_literal(value: object) -> str:
    """A text or number as a PostgreSQL literal."""
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


def _parsing(node: dict[str, Any], in_init_plan: bool = False) -> Iterator[tuple[bool, str]]:
    """The expressions of a JSON plan that parse a query's words, each with whether it is in
    an InitPlan (run once per statement)."""
    in_init_plan = in_init_plan or node.get("Parent Relationship") == "InitPlan"
    for key, value in node.items():
        if key == "Plans":
            for child in value:
                yield from _parsing(child, in_init_plan)
        elif "plainto_tsquery" in json.dumps(value):
            yield in_init_plan, f"{node['Node Type']} {key}: {value}"


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
@pytest.mark.parametrize(("owned", "after"), [(False, False), (True, True)])
async def test_postgresql_parses_the_query_once_per_search_in_a_generic_plan(
    repo: SessionRepository, owned: bool, after: bool
) -> None:
    """A prepared statement runs on a generic plan after five runs, where the words are a
    parameter: the statement parses them once (an InitPlan), not once for each matching turn
    it ranks or filters."""
    await repo.add_turn("s", "Where did the zeppelin land?", "In Friedrichshafen.", user_id="ann")
    statement = search_statement(backend_for(repo.engine), owned=owned, after=after)
    compiled = statement.compile(dialect=repo.engine.dialect)
    values = {
        **compiled.params,
        "terms": "zeppelin",
        "uid": "ann",
        "limit": 21,
        "rank": 1.0,
        "cid": 0,
        "sid": "",
        "seq": 0,
    }
    arguments = ", ".join(_sql_literal(values[name]) for name in compiled.positiontup or ())
    async with repo.engine.connect() as conn:
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE probe AS {compiled.string}")
        plan = await conn.exec_driver_sql(
            f"EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE probe({arguments})"
        )
        ((document,),) = plan.all()
        await conn.exec_driver_sql("DEALLOCATE probe")
        await conn.exec_driver_sql("RESET plan_cache_mode")
    top = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    parsing = list(_parsing(top))
    assert [where for once, where in parsing if not once] == []
    assert any(once for once, _ in parsing), "no InitPlan parses the words"
