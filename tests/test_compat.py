"""Code written for the original in-memory SessionManager runs after changing only its import:
the module-level get_session_manager/shutdown_session_manager and the original call shapes."""

from __future__ import annotations

import pytest

from convostore import (
    ConversationTurn,
    SchemaNotReady,
    SessionConfig,
    StoreConfig,
    get_session_manager,
    shutdown_session_manager,
)

URL_ENV = "CONVOSTORE_DATABASE_URL"


async def test_original_usage_runs_after_changing_only_the_import(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original manager's calls (positional add_turn_to_session, get, update, get_stats,
    shutdown) work, and a new shared manager after shutdown still sees the session."""
    monkeypatch.setenv(URL_ENV, url)
    try:
        m = await get_session_manager()
        assert await get_session_manager() is m

        sid, created = await m.get_or_create(None)
        assert created.turns == []
        await m.add_turn_to_session(
            sid, "q", "a", "resolved", "tpl", {"place": "Utrecht"}, [{"x": 1}]
        )

        state = await m.get(sid)
        assert state is not None
        user, assistant = state.turns
        assert (user.role, user.content, user.resolved_question) == ("user", "q", "resolved")
        assert (user.template_id, user.slots, user.results) == (
            "tpl",
            {"place": "Utrecht"},
            [{"x": 1}],
        )
        assert (assistant.role, assistant.content) == ("assistant", "a")
        assert state.current_slots == {"place": "Utrecht"}
        assert state.current_template_id == "tpl"

        # The original pattern: change the state, then update().
        state.add_turn(
            ConversationTurn(role="user", content="En in Enschede?", slots={"place": "Enschede"})
        )
        state.add_turn(ConversationTurn(role="assistant", content="Drie."))
        await m.update(sid, state)

        stats = await m.get_stats()
        assert stats["active_sessions"] >= 1

        await shutdown_session_manager()

        m2 = await get_session_manager()
        assert m2 is not m
        restored = await m2.get(sid)
        assert restored is not None
        assert [turn.content for turn in restored.turns] == [
            "q",
            "a",
            "En in Enschede?",
            "Drie.",
        ]
        assert restored.current_slots == {"place": "Enschede"}
        assert restored.current_template_id == "tpl"

        await shutdown_session_manager()
        await shutdown_session_manager()  # a second shutdown does nothing
    finally:
        await shutdown_session_manager()


@pytest.mark.parametrize(
    "config_class", [StoreConfig, SessionConfig], ids=["StoreConfig", "SessionConfig"]
)
async def test_config_passed_to_get_session_manager(
    url: str, monkeypatch: pytest.MonkeyPatch, config_class: type[StoreConfig]
) -> None:
    """A config with the original's session_ttl, cleanup_interval and max_sessions is used by the
    shared manager (max_sessions bounds its cache); a later call's config is ignored."""
    monkeypatch.setenv(URL_ENV, url)
    config = config_class(session_ttl=600, cleanup_interval=60, max_sessions=3)
    try:
        m = await get_session_manager(config)
        assert m.config.database_url == url
        assert (m.config.session_ttl, m.config.cleanup_interval, m.config.max_sessions) == (
            600,
            60,
            3,
        )
        ids = [(await m.get_or_create(None))[0] for _ in range(5)]
        stats = await m.get_stats()
        assert stats["active_sessions"] == 3
        assert stats["sessions_evicted"] == 2
        assert stats["sessions_created"] == 5
        assert await m.get(ids[0]) is not None  # evicted, still stored

        assert await get_session_manager(config_class(max_sessions=99)) is m
        assert m.config.max_sessions == 3
    finally:
        await shutdown_session_manager()


async def test_shared_manager_migrates_an_empty_database(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original manager needed no migration step, so the shared one migrates an empty
    database itself, on PostgreSQL too; a config that sets auto_migrate=False keeps it off."""
    monkeypatch.setenv(URL_ENV, empty_url)
    try:
        with pytest.raises(SchemaNotReady):
            await get_session_manager(StoreConfig(auto_migrate=False, cleanup_interval=0))
        m = await get_session_manager(StoreConfig(cleanup_interval=0))
        assert m.config.auto_migrate is True
        sid, _ = await m.get_or_create(None)
        await m.add_turn_to_session(sid, "q", "a", None, None, {}, [])
        state = await m.get(sid)
        assert state is not None
        assert [turn.content for turn in state.turns] == ["q", "a"]
    finally:
        await shutdown_session_manager()
