"""A session's language is what the application says it is: untagged (None) unless it sets
``state.language`` or ``StoreConfig.default_language``, and "nl" only through the compat layer
that stands in for the original SessionManager, whose states were all Dutch. Statistics and
exports then count untagged conversations as such, not as Dutch."""

from __future__ import annotations

import pytest
from conftest import MakeRepo, Sql
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import (
    ConfigError,
    ConversationState,
    StoreConfig,
    get_session_manager,
    shutdown_session_manager,
)
from convostore._ops.admin import stats

LANGUAGE_OF = "SELECT language FROM sessions WHERE session_id = :sid"


async def test_a_session_nobody_tagged_has_no_language(
    make_repo: MakeRepo, sql: Sql, url: str
) -> None:
    """New sessions (``get_or_create`` and ``add_turn``) have language None in their state,
    their row, their conversation once ended, the export and ``stats``; one the application
    tags with ``update`` counts under its language."""
    repo = await make_repo()
    sid, state = await repo.get_or_create(user_id="u-1")
    assert state.language is None
    state = await repo.add_turn(sid, "Archieven in Utrecht?", "Twaalf.", user_id="u-1")
    assert state.language is None
    await repo.add_turn("appended", "Hallo", "Hoi")
    assert await sql(LANGUAGE_OF, sid=sid) == [(None,)]
    assert await sql(LANGUAGE_OF, sid="appended") == [(None,)]
    assert await repo.delete("appended")
    ended = "SELECT language FROM conversations WHERE session_id = 'appended'"
    assert await sql(ended) == [(None,)]
    exported = await repo.export_user("u-1")
    assert [c["language"] for c in exported["conversations"]] == [None]

    tagged, _ = await repo.get_or_create()
    to_tag = await repo.get(tagged)
    assert to_tag is not None
    to_tag.language = "en"
    await repo.update(tagged, to_tag)
    assert await sql(LANGUAGE_OF, sid=tagged) == [("en",)]
    fresh = await (await make_repo()).get(tagged)
    assert fresh is not None
    assert fresh.language == "en"

    engine = create_async_engine(url)
    try:
        figures = await stats(engine)
    finally:
        await engine.dispose()
    assert figures.languages == [(None, 2), ("en", 1)]


async def test_default_language_tags_new_sessions(make_repo: MakeRepo, sql: Sql) -> None:
    """``default_language`` is the language of every session created, by any call, and what
    ``update`` stores for a state without one; a state's own language wins."""
    repo = await make_repo(default_language="de")
    sid, state = await repo.get_or_create()
    assert state.language == "de"
    await repo.add_turn("by-append", "Frage?", "Antwort.")
    await repo.update("by-update", ConversationState())
    for session_id in (sid, "by-append", "by-update"):
        assert await sql(LANGUAGE_OF, sid=session_id) == [("de",)], session_id
        got = await (await make_repo(default_language="de")).get(session_id)
        assert got is not None
        assert got.language == "de"
    await repo.update("by-update", ConversationState(language="fr"))
    assert await sql(LANGUAGE_OF, sid="by-update") == [("fr",)]
    untagged = await make_repo()
    tagged = await untagged.get("by-update")
    assert tagged is not None
    tagged.language = None
    await untagged.update("by-update", tagged)
    assert await sql(LANGUAGE_OF, sid="by-update") == [(None,)]


async def test_the_compat_layer_keeps_the_original_language(
    url: str, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_session_manager()`` tags sessions "nl", as every state of the original manager
    was, unless its config names a ``default_language`` (None included)."""
    monkeypatch.setenv("CONVOSTORE_DATABASE_URL", url)
    try:
        manager = await get_session_manager()
        sid, state = await manager.get_or_create(None)
        assert state.language == "nl"
        await manager.add_turn_to_session("original", "Archieven?", "Twaalf.")
        await manager.update("updated", ConversationState())
        await shutdown_session_manager()
        for session_id in (sid, "original", "updated"):
            assert await sql(LANGUAGE_OF, sid=session_id) == [("nl",)], session_id

        manager = await get_session_manager(StoreConfig(default_language=None))
        await manager.add_turn("untagged", "Archieven?", "Twaalf.")
        await shutdown_session_manager()
        assert await sql(LANGUAGE_OF, sid="untagged") == [(None,)]
    finally:
        await shutdown_session_manager()


def test_a_bad_default_language_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The language rules of ``state.language`` hold for the default too."""
    for bad in ("x" * 33, "n\x00l"):
        with pytest.raises(ValidationError, match="language"):
            StoreConfig(default_language=bad)
    monkeypatch.setenv("CONVOSTORE_DEFAULT_LANGUAGE", "x" * 33)
    with pytest.raises(ConfigError, match="CONVOSTORE_DEFAULT_LANGUAGE"):
        StoreConfig()
