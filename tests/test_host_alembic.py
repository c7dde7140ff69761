"""convostore inside a host application's own alembic environment (``convostore.hosting``).

Each test writes a small host environment into ``tmp_path``: an ``alembic.ini``, an ``env.py``
that calls ``upgrade_in`` and filters with ``exclude_convostore``, and one revision creating
the host's table ``orders``. The host uses a sync engine on SQLite and an async one on
PostgreSQL, the two ways host environments are written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table
from sqlalchemy.engine import make_url
from test_migrations import _on, _rows, _tables

from convostore import SessionRepository, StoreConfig
from convostore._core.schema import SEARCH_TABLES
from convostore.hosting import exclude_convostore
from convostore.migrate import VERSION_TABLE, head_revision

HOST_REVISION = "host0001"
CONVOSTORE_TABLES = {
    "conversations",
    "sessions",
    "turns",
    "turn_slots",
    "turn_feedback",
    "convostore_compatibility",
    VERSION_TABLE,
}

HOST_ENV = """
import asyncio

from alembic import context
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, pool
from sqlalchemy.ext.asyncio import create_async_engine

from convostore.hosting import exclude_convostore, upgrade_in

target_metadata = MetaData()
Table(
    "orders",
    target_metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50), nullable=False),
)
URL = context.config.get_main_option("sqlalchemy.url")
FIRST = {first}


def run(connection: Connection) -> None:
    if FIRST:
        upgrade_in(connection)
    context.configure(
        connection=connection, target_metadata=target_metadata, include_name=exclude_convostore
    )
    with context.begin_transaction():
        context.run_migrations()
        if not FIRST:
            upgrade_in(connection)


async def run_async() -> None:
    engine = create_async_engine(URL, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


if "+asyncpg" in URL:
    asyncio.run(run_async())
else:
    with create_engine(URL, poolclass=pool.NullPool).connect() as connection:
        run(connection)
"""

HOST_REVISION_SCRIPT = f'''
import sqlalchemy as sa
from alembic import op

revision = "{HOST_REVISION}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item", sa.String(50), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orders")
'''


def _host_metadata() -> MetaData:
    """The host's own MetaData, as its env.py declares it: just ``orders``."""
    metadata = MetaData()
    Table(
        "orders",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("item", String(50), nullable=False),
    )
    return metadata


def _host_url(url: str) -> str:
    """The host's URL for the database at ``url``: a sync driver on SQLite, asyncpg kept."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def _host_config(tmp_path: Path, url: str, *, first: bool) -> Config:
    """Write the host environment into ``tmp_path``; ``first`` puts ``upgrade_in`` before the
    host's ``context.configure`` instead of inside its transaction."""
    location = tmp_path / "host"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(HOST_ENV.format(first=first))
    (location / "versions" / f"{HOST_REVISION}_orders.py").write_text(HOST_REVISION_SCRIPT)
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = {location}\n"
        f"sqlalchemy.url = {_host_url(url).replace('%', '%%')}\n"
    )
    return Config(str(ini))


def _host_diff(include_name: Any) -> Callable[[Connection], list[Any]]:
    """What the host's autogenerate proposes, comparing the database with its own MetaData."""

    def diff(conn: Connection) -> list[Any]:
        opts = {} if include_name is None else {"include_name": include_name}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, _host_metadata()))

    return diff


@pytest.mark.parametrize("first", [False, True], ids=["in_host_transaction", "before_configure"])
async def test_host_upgrade_head_migrates_both_schemas(
    empty_url: str, tmp_path: Path, backend: str, first: bool
) -> None:
    """One `alembic upgrade head` in the host brings the host's schema and convostore's to head;
    each history is in its own version table, and a repository starts without migrating."""
    config = _host_config(tmp_path, empty_url, first=first)
    # env.py may run its own event loop: call it from a thread.
    await asyncio.to_thread(command.upgrade, config, "head")

    assert await _rows(empty_url, "SELECT version_num FROM alembic_version") == [(HOST_REVISION,)]
    assert await _rows(empty_url, f"SELECT version_num FROM {VERSION_TABLE}") == [
        (head_revision(),)
    ]
    assert await _tables(empty_url) >= CONVOSTORE_TABLES | {"orders", "alembic_version"}

    repository = SessionRepository(
        StoreConfig(database_url=empty_url, cleanup_interval=0, auto_migrate=False)
    )
    await repository.start()
    await repository.stop()

    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _rows(empty_url, "SELECT version_num FROM alembic_version") == [(HOST_REVISION,)]


async def test_host_autogenerate_leaves_convostore_tables_alone(
    backend: str, empty_url: str, tmp_path: Path
) -> None:
    """With ``exclude_convostore`` the host's autogenerate proposes nothing; without it, it
    proposes dropping every convostore table (on SQLite the search's FTS5 tables too). The
    host's `alembic check` passes."""
    config = _host_config(tmp_path, empty_url, first=False)
    await asyncio.to_thread(command.upgrade, config, "head")

    assert await _on(empty_url, _host_diff(exclude_convostore)) == []
    unfiltered = await _on(empty_url, _host_diff(None))
    removed = {entry[1].name for entry in unfiltered if entry[0] == "remove_table"}
    search = set(SEARCH_TABLES) if backend == "sqlite" else set()
    assert removed == CONVOSTORE_TABLES | {"convostore_changes"} | search
    await asyncio.to_thread(command.check, config)


def test_exclude_convostore_keeps_host_names() -> None:
    """The filter drops convostore's tables and what hangs off them, nothing of the host's."""
    assert not exclude_convostore("sessions", "table", {"schema_name": None})
    assert not exclude_convostore(VERSION_TABLE, "table", {"schema_name": None})
    assert not exclude_convostore(
        "ix_sessions_expires_at", "index", {"schema_name": None, "table_name": "sessions"}
    )
    assert exclude_convostore("orders", "table", {"schema_name": None})
    assert exclude_convostore("ix_orders_item", "index", {"table_name": "orders"})
    assert exclude_convostore("sessions", "table", {"schema_name": "billing"})
    assert exclude_convostore("public", "schema", {})


def test_alembic_proxies_kept_puts_the_callers_back_and_tolerates_their_absence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one helper around alembic's private proxy API: it reinstalls what the caller had
    after a nested run cleared it, and runs the block anyway where the API is missing."""
    from alembic import context

    from convostore.backends._private import alembic_proxies_kept

    installed: list[str] = []

    class Proxy:
        def _install_proxy(self) -> None:
            installed.append("host")

    monkeypatch.setattr(context, "_proxy", Proxy(), raising=False)
    with alembic_proxies_kept():
        monkeypatch.setattr(context, "_proxy", None, raising=False)  # a nested run's exit
    assert installed == ["host"]

    monkeypatch.delattr(context, "_proxy", raising=False)
    ran = []
    with alembic_proxies_kept():
        ran.append(True)
    assert ran == [True]
