"""convostore beside a host whose database already has tables of convostore's names
(``StoreConfig.schema``).

The host owns ``sessions``, ``turns``, ``conversations``, ``turn_slots`` and ``exchanges``
(tables of its own, not convostore's shape). convostore is put beside them through ``convostore
migrate --schema`` or through the host's own alembic env calling ``upgrade_in(connection,
schema=...)``; either way the host's tables keep their rows, the host's autogenerate proposes
nothing, and a repository with ``schema`` works. PostgreSQL: a schema in the host's database;
MariaDB: a database beside the host's on the same server (a name of the test's own, dropped
afterwards); SQLite refuses the setting.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from pydantic import ValidationError
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_migrations import _execute, _on, _rows

from convostore import ConfigError, SchemaNotReady, SessionRepository, StoreConfig
from convostore._ops.cli import cli
from convostore.hosting import exclude_convostore_in, upgrade_in
from convostore.migrate import VERSION_TABLE, head_revision, migrate_url

SERVERS = [
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]
SQLITE = [pytest.param("sqlite", marks=pytest.mark.sqlite)]
HOST_TABLES = ("sessions", "turns", "conversations", "turn_slots", "exchanges")
CONVOSTORE_TABLES = {
    "conversations",
    "sessions",
    "turns",
    "turn_slots",
    "turn_feedback",
    "convostore_changes",
    "convostore_compatibility",
    VERSION_TABLE,
}

HOST_ENV = """
import asyncio
import re

from alembic import context
from sqlalchemy import Column, Integer, MetaData, String, Table, pool
from sqlalchemy.ext.asyncio import create_async_engine

from convostore.hosting import upgrade_in

target_metadata = MetaData()
for name in {tables!r}:
    Table(
        name,
        target_metadata,
        Column("id", Integer, primary_key=True),
        Column("note", String(40), nullable=False),
    )


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
        upgrade_in(connection, schema={schema!r})


async def main():
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""

HOST_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "host0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    for name in {tables!r}:
        op.create_table(
            name,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("note", sa.String(40), nullable=False),
        )
        op.execute(f"INSERT INTO {{name}} (id, note) VALUES (1, 'the host''s')")


def downgrade():
    for name in {tables!r}:
        op.drop_table(name)
"""


def _host_metadata() -> MetaData:
    """The host's own MetaData: five tables with convostore's names and its own columns."""
    metadata = MetaData()
    for name in HOST_TABLES:
        Table(
            name,
            metadata,
            Column("id", Integer, primary_key=True),
            Column("note", String(40), nullable=False),
        )
    return metadata


@pytest.fixture
def schema(backend: str, empty_url: str) -> Iterator[str]:
    """Where convostore goes: ``convostore`` in the test's own PostgreSQL database; on MariaDB
    a database name of the test's own on the shared server, dropped afterwards."""
    if backend != "mariadb":
        yield "convostore"
        return
    name = f"convostore_{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(_execute(empty_url, f"DROP DATABASE IF EXISTS `{name}`"))


async def _create_host_tables(url: str) -> None:
    """The host's tables as its own code created them, each with a row."""

    def create(conn: Connection) -> None:
        _host_metadata().create_all(conn)
        for name in HOST_TABLES:
            conn.execute(text(f"INSERT INTO {name} (id, note) VALUES (1, 'the host''s')"))

    await _on(url, create)


def _host_diff(conn: Connection, **opts: Any) -> list[Any]:
    """What the host's autogenerate proposes against its own MetaData."""
    return list(compare_metadata(MigrationContext.configure(conn, opts=opts), _host_metadata()))


async def _assert_beside_the_host(url: str, schema: str) -> None:
    """The host's tables are as it left them and its autogenerate is empty; convostore's
    tables and version are in ``schema``; a repository in ``schema`` stores and reads; a
    delete by the host's connection ends convostore's conversation (its triggers find their
    own tables)."""
    for name in HOST_TABLES:
        assert await _rows(url, f"SELECT id, note FROM {name}") == [(1, "the host's")], name
    assert await _on(url, _host_diff) == []
    in_schema = await _on(url, lambda c: set(inspect(c).get_table_names(schema=schema)))
    assert in_schema >= CONVOSTORE_TABLES
    assert await _rows(url, f"SELECT version_num FROM {schema}.{VERSION_TABLE}") == [
        (head_revision(),)
    ]

    config = StoreConfig(database_url=url, schema=schema, cleanup_interval=0, auto_migrate=False)
    async with SessionRepository(config) as repo:
        await repo.add_turn("s-beside-host", "where is it?", "in its own schema")
        async with SessionRepository(config) as second:
            state = await second.get("s-beside-host")
        assert state is not None
        assert [turn.content for turn in state.turns] == ["where is it?", "in its own schema"]

    await _execute(url, f"DELETE FROM {schema}.sessions")
    live = f"SELECT COUNT(*) FROM {schema}.conversations WHERE ended_at IS NULL"
    assert await _rows(url, live) == [(0,)]
    assert await _rows(url, f"SELECT COUNT(*) FROM {schema}.convostore_changes") != [(0,)]
    assert await _rows(url, "SELECT id, note FROM conversations") == [(1, "the host's")]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_convostore_migrate_puts_convostore_beside_the_hosts_tables(
    empty_url: str, schema: str
) -> None:
    """`convostore migrate --schema` on a database that has the host's tables already."""
    await _create_host_tables(empty_url)
    args = ["migrate", "--url", empty_url, "--schema", schema]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert result.exit_code == 0, result.output
    assert f"at {head_revision()} (head) in schema {schema}" in result.output
    await _assert_beside_the_host(empty_url, schema)

    again = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["migrate", "check", "--url", empty_url],
        env={"CONVOSTORE_SCHEMA": schema},
    )
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_host_alembic_env_upgrades_convostore_into_its_schema(
    empty_url: str, schema: str, tmp_path: Path
) -> None:
    """The host's `alembic upgrade head` creates its tables and calls ``upgrade_in(connection,
    schema=...)`` in its transaction; its `alembic check` passes afterwards, so the host's
    connection works in its own schema again."""
    location = tmp_path / "host"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(HOST_ENV.format(tables=HOST_TABLES, schema=schema))
    (location / "versions" / "host0001_tables.py").write_text(
        HOST_REVISION.format(tables=HOST_TABLES)
    )
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {location}\n"
        f"sqlalchemy.url = {empty_url.replace('%', '%%')}\n"
    )
    config = Config(str(ini))
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.check, config)
    assert await _rows(empty_url, "SELECT version_num FROM alembic_version") == [("host0001",)]
    await _assert_beside_the_host(empty_url, schema)

    await asyncio.to_thread(command.upgrade, config, "head")  # convostore at head: nothing to do
    await _assert_beside_the_host(empty_url, schema)


@pytest.mark.parametrize("backend", SERVERS[:1], indirect=True)
async def test_autogenerate_of_every_schema_leaves_convostores_alone(
    empty_url: str, schema: str
) -> None:
    """A host comparing every schema (``include_schemas=True``) sees convostore's schema
    unless it filters with ``exclude_convostore_in``, which keeps the host's own ``sessions``."""
    await _create_host_tables(empty_url)
    await migrate_url(empty_url, schema=schema)
    unfiltered = await _on(empty_url, lambda c: _host_diff(c, include_schemas=True))
    assert {entry[1].schema for entry in unfiltered if entry[0] == "remove_table"} == {schema}
    filtered = await _on(
        empty_url,
        lambda c: _host_diff(c, include_schemas=True, include_name=exclude_convostore_in(schema)),
    )
    assert filtered == []


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_an_engine_passed_in_must_work_in_the_schema(
    backend: str, empty_url: str, schema: str
) -> None:
    """convostore never changes a caller's engine: one whose connections are elsewhere is a
    ConfigError at start, saying what to set; one set up as it says works."""
    await migrate_url(empty_url, schema=schema)
    config = StoreConfig(schema=schema, cleanup_interval=0, auto_migrate=False)
    elsewhere = create_async_engine(empty_url)
    try:
        with pytest.raises(ConfigError, match="schema is '" + schema):
            await SessionRepository(config, engine=elsewhere).start()
    finally:
        await elsewhere.dispose()

    if backend == "postgresql":
        options: dict[str, Any] = {"connect_args": {"server_settings": {"search_path": schema}}}
        inside = create_async_engine(empty_url, **options)
    else:
        inside = create_async_engine(make_url(empty_url).set(database=schema))
    try:
        async with SessionRepository(config, engine=inside) as repo:
            await repo.add_turn("s-own-engine", "q", "a")
            assert await repo.get("s-own-engine") is not None
    finally:
        await inside.dispose()


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_auto_migrate_creates_the_schema(empty_url: str, schema: str) -> None:
    """A repository with ``auto_migrate`` and ``schema`` on a database without either creates
    the schema and migrates into it; without ``auto_migrate`` it says to migrate with it."""
    config = StoreConfig(database_url=empty_url, schema=schema, cleanup_interval=0)
    with pytest.raises(SchemaNotReady, match=f"--schema {schema}"):
        await SessionRepository(config).start()
    migrating = config.model_copy(update={"auto_migrate": True})
    async with SessionRepository(migrating) as repo:
        await repo.add_turn("s-auto", "q", "a")
    assert await _rows(empty_url, f"SELECT session_id FROM {schema}.sessions") == [("s-auto",)]


@pytest.mark.parametrize("backend", SQLITE, indirect=True)
async def test_sqlite_refuses_a_schema(empty_url: str) -> None:
    """On SQLite convostore's tables live in a file of their own: ``schema`` is a ConfigError
    everywhere, before any SQL, and the file is not created."""
    message = "database file of their own"
    with pytest.raises(ConfigError, match=message):
        SessionRepository(StoreConfig(database_url=empty_url, schema="convostore"))
    with pytest.raises(ConfigError, match=message):
        await migrate_url(empty_url, schema="convostore")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["migrate", "--url", empty_url, "--schema", "convostore"]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert not await asyncio.to_thread(Path(make_url(empty_url).database or "").exists)


@pytest.mark.parametrize("backend", SQLITE, indirect=True)
def test_upgrade_in_refuses_a_schema_on_sqlite(empty_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(make_url(empty_url).set(drivername="sqlite"))
    try:
        with engine.connect() as connection, pytest.raises(ConfigError):
            upgrade_in(connection, schema="convostore")
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["Convostore", "1st", "my-schema", "pg_store", "mysql", "x" * 64])
def test_schema_names_convostore_refuses(name: str) -> None:
    """A name is checked before any SQL: on the command line (usage error, exit 2)."""
    result = CliRunner().invoke(
        cli, ["stats", "--url", "postgresql+asyncpg://nobody@127.0.0.1:9/none", "--schema", name]
    )
    assert result.exit_code == 2
    assert "schema name" in result.output


def test_schema_names_are_checked_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a constructor argument: pydantic's ValidationError, as for every setting; from the
    environment: ConfigError naming the variable; a good name is kept as given."""
    with pytest.raises(ValidationError, match="schema name"):
        StoreConfig(schema="Convostore")
    monkeypatch.setenv("CONVOSTORE_SCHEMA", "my-schema")
    with pytest.raises(ConfigError, match=r"CONVOSTORE_SCHEMA: .*schema name"):
        StoreConfig()
    monkeypatch.setenv("CONVOSTORE_SCHEMA", "chat_store")
    assert StoreConfig().schema == "chat_store"


MOVE_SCRIPT = re.findall(
    r"```sql\n(.*?)```",
    (Path(__file__).resolve().parent.parent / "docs" / "schemas.md").read_text(encoding="utf-8"),
    flags=re.DOTALL,
)
"""docs/schemas.md's script that moves an existing PostgreSQL install into a schema."""


@pytest.mark.parametrize("backend", SERVERS[:1], indirect=True)
async def test_the_documented_move_into_a_schema(empty_url: str) -> None:
    """A database migrated without a schema, moved by the script docs/schemas.md gives, runs
    with ``schema="convostore"``: its sessions are there, the schema is current, and a host's
    delete is still recorded."""
    (script,) = MOVE_SCRIPT
    await migrate_url(empty_url)
    before = StoreConfig(database_url=empty_url, cleanup_interval=0)
    async with SessionRepository(before) as repo:
        await repo.add_turn("s-moved", "before the move", "kept")

    engine = create_async_engine(empty_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute(script)  # several statements: asyncpg's simple protocol
    finally:
        await engine.dispose()

    assert await _on(empty_url, lambda c: inspect(c).get_table_names()) == []
    after = before.model_copy(update={"schema": "convostore"})
    async with SessionRepository(after) as repo:
        state = await repo.get("s-moved")
        assert state is not None
        assert state.turns[0].content == "before the move"
        await repo.add_turn("s-new", "after the move", "in the schema")
    await _execute(empty_url, "DELETE FROM convostore.sessions")
    live = "SELECT COUNT(*) FROM convostore.conversations WHERE ended_at IS NULL"
    assert await _rows(empty_url, live) == [(0,)]
