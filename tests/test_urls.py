"""PostgreSQL URLs as libpq users write them: ``?sslmode=...``, ``connect_timeout``,
``application_name`` and ``options`` work for the repository's engine, its change listener and
the migrations, against the shared server (which has no SSL); what asyncpg cannot follow is a
``ConfigError`` saying what to write, before any connection."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import FAST_PATH, FakeClock
from sqlalchemy import text

from convostore import ConfigError, SessionRepository, StoreConfig, StoreError
from convostore.migrate import current_revision_url, head_revision, upgrade_url

POSTGRES = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
"""Runs a test on the PostgreSQL backend only (the ``url`` fixture's database)."""


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}"


@POSTGRES
@pytest.mark.parametrize(
    "query",
    [
        "sslmode=disable",
        "sslmode=allow",
        "sslmode=prefer",
        "connect_timeout=5",
        "sslmode=disable&connect_timeout=2.5",
    ],
)
async def test_libpq_options_connect(url: str, clock: FakeClock, query: str) -> None:
    """A writer and a reader (whose change listener connects with the same options) on the
    URL: the write is stored and read back."""
    config = StoreConfig(
        database_url=with_query(url, query), cleanup_interval=0, fast_path=FAST_PATH
    )
    async with (
        SessionRepository(config, clock=clock) as writer,
        SessionRepository(config, clock=clock) as reader,
    ):
        await writer.add_turn("tls", "q", "a")
        state = await reader.get("tls")
        assert state is not None
        assert [turn.content for turn in state.turns] == ["q", "a"]


@POSTGRES
async def test_application_name_and_options_reach_the_server(url: str, clock: FakeClock) -> None:
    """``application_name`` names every connection convostore opens in pg_stat_activity: the
    engine's and the change poller's; ``options`` sets server settings as libpq does."""
    name = f"chat-{uuid.uuid4().hex[:8]}"
    query = f"application_name={name}&options=-c%20statement_timeout%3D4321&sslmode=prefer"
    config = StoreConfig(database_url=with_query(url, query), cleanup_interval=0)
    async with SessionRepository(config, clock=clock) as repo:
        await repo.add_turn("named", "q", "a")
        async with repo.engine.connect() as conn:
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "4321ms"
            rows = await conn.execute(
                text("SELECT query FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name},
            )
            queries = [row[0] for row in rows]
    assert len(queries) >= 2, queries  # the engine's connection and the poller's


@POSTGRES
async def test_sslmode_require_on_a_server_without_ssl_is_a_store_error(url: str) -> None:
    """Not a TypeError about an unexpected keyword: the server's refusal, as convostore's
    error."""
    required = with_query(url, "sslmode=require")
    with pytest.raises(StoreError, match="rejected SSL upgrade"):
        await SessionRepository(StoreConfig(database_url=required)).start()
    with pytest.raises(StoreError, match="rejected SSL upgrade"):
        await upgrade_url(required)


@POSTGRES
async def test_migrations_take_libpq_options(empty_url: str) -> None:
    migrated = with_query(empty_url, "sslmode=prefer&connect_timeout=5&application_name=migrate")
    await upgrade_url(migrated)
    assert await current_revision_url(migrated) == f"{head_revision()} (head)"


BAD_OPTIONS = [
    ("sslmode=verify", "sslmode must be one of disable, allow, prefer, require, verify-ca"),
    ("ssl=true", "ssl must be one of disable, allow, prefer, require"),
    ("sslmode=require&ssl=require", "give sslmode or ssl, not both"),
    ("connect_timeout=0", "connect_timeout must be a positive number of seconds, not '0'"),
    ("connect_timeout=soon", "connect_timeout must be a positive number of seconds"),
    ("requiressl=1", "has no option requiressl: write sslmode=require instead"),
    ("keepalives=1", "takes no option keepalives: remove it"),
    ("sslmode=require&sslmode=disable", "sslmode is given 2 times; give it once"),
    ("sslmode=verify-full&sslrootcert=missing.crt", "sslrootcert 'missing.crt' is not a file"),
]


@pytest.mark.parametrize(("query", "message"), BAD_OPTIONS)
def test_options_asyncpg_cannot_follow_are_config_errors(
    query: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused by the repository's constructor, for ``database_url`` and for ``listen_url``,
    naming the URL (its password hidden) and what to write."""
    monkeypatch.chdir(tmp_path)
    url = f"postgresql+asyncpg://app:s3cret@db.example/chat?{query}"
    with pytest.raises(ConfigError, match=f"database_url '.*': .*{message}") as raised:
        SessionRepository(url)
    assert "s3cret" not in str(raised.value)
    listen = StoreConfig(database_url="postgresql+asyncpg://app@db.example/chat", listen_url=url)
    with pytest.raises(ConfigError, match=f"listen_url '.*': .*{message}"):
        SessionRepository(listen)
    if "missing.crt" in query:
        (tmp_path / "missing.crt").write_text("read when connecting\n", encoding="utf-8")
        SessionRepository(url)
