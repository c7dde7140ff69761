"""MariaDB's own: every migration upgrades and downgrades on MariaDB 10.11 (driven by alembic
on a connection of the test's own, as a host application's env would), the migrated schema is
what ``_core.schema.metadata`` describes, its tables compare text exactly, and a statement the
server does not answer in time fails instead of holding the call.

They run when env ``CONVOSTORE_TEST_MARIADB_URL`` names a server (``.ci/run`` starts one) and
skip otherwise. The conformance suite runs on MariaDB too (``conftest.CONFORMANCE``)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, bindparam, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from convostore import StatementTimeout, StoreConfig
from convostore._core.engine import create_engine
from convostore._core.owners import Shape, listing
from convostore._core.schema import compared, metadata
from convostore.backends import backend_for
from convostore.errors import is_disconnect, translate_errors
from convostore.migrate import VERSION_TABLE, alembic_config, script_location

MARIADB_URL_ENV = "CONVOSTORE_TEST_MARIADB_URL"
TABLES = {"sessions", "turns", "turn_slots", "conversations", "convostore_changes"}
VIEWS = {"exchanges"}

pytestmark = pytest.mark.mariadb


@pytest.fixture
async def mariadb() -> AsyncIterator[AsyncEngine]:
    """An engine on a database of the test's own, dropped afterwards."""
    url = os.environ.get(MARIADB_URL_ENV)
    if not url:
        pytest.skip(f"{MARIADB_URL_ENV} is not set; MariaDB cases need a server")
    name = f"convostore_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}`"))
    engine = create_async_engine(make_url(url).set(database=name))
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


def _migrate(connection: Connection, revision: str, *, down: bool = False) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


def _drift(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={"version_table": VERSION_TABLE, "include_name": compared, "compare_type": True},
    )
    return list(compare_metadata(context, metadata))


def _names(connection: Connection) -> tuple[set[str], set[str]]:
    inspector = inspect(connection)
    return set(inspector.get_table_names()), set(inspector.get_view_names())


def _revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(script_location()))
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


async def test_every_revision_upgrades_and_the_schema_matches_the_metadata(
    mariadb: AsyncEngine,
) -> None:
    """From empty, one revision at a time to head; then autogenerate finds no difference
    between the database and the tables convostore's code describes."""
    async with mariadb.begin() as conn:
        for revision in _revisions():
            await conn.run_sync(_migrate, revision)
        tables, views = await conn.run_sync(_names)
        assert tables >= TABLES
        assert views >= VIEWS
        assert await conn.run_sync(_drift) == []


async def test_downgrade_to_base_removes_everything_and_upgrades_again(
    mariadb: AsyncEngine,
) -> None:
    """Down to base leaves only alembic's version table; up to head again works."""
    async with mariadb.begin() as conn:
        await conn.run_sync(_migrate, "head")
        await conn.run_sync(_migrate, "base", down=True)
        tables, views = await conn.run_sync(_names)
        assert tables <= {VERSION_TABLE}
        assert not views
        await conn.run_sync(_migrate, "head")
        tables, _ = await conn.run_sync(_names)
        assert tables >= TABLES


async def test_the_tables_compare_text_exactly(mariadb: AsyncEngine) -> None:
    """The tables' collation is binary and no-pad: session ids and slot names that differ
    only in case or a trailing space are different keys, as on SQLite and PostgreSQL."""
    async with mariadb.begin() as conn:
        await conn.run_sync(_migrate, "head")
        rows = await conn.execute(
            text(
                "SELECT DISTINCT TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :names"
            ).bindparams(bindparam("names", expanding=True)),
            {"names": sorted(TABLES)},
        )
        assert list(rows.scalars()) == ["utf8mb4_nopad_bin"]


async def test_the_server_stops_a_statement_at_its_bound_before_the_client_gives_up(
    mariadb: AsyncEngine,
) -> None:
    """An engine convostore creates with a timeout has the server stop a statement that runs
    past 0.8 of it (``max_statement_time``), before the client's own bound (``read_timeout``,
    for a server that stops answering): the error is a statement timeout, not a lost
    connection, so a call raises ``StatementTimeout`` instead of sending it again, and the
    connection serves on. Without a timeout the same statement runs to its end."""
    url = mariadb.url.render_as_string(hide_password=False)
    bounded = create_engine(StoreConfig(database_url=url), timeout=0.5)
    try:
        async with bounded.connect() as conn:
            started = time.monotonic()
            with (
                pytest.raises(StatementTimeout, match="ran past its time bound") as raised,
                translate_errors("sleeping"),
            ):
                await conn.execute(text("SELECT SLEEP(5)"))
            assert time.monotonic() - started < 0.5
            assert not is_disconnect(raised.value)
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await bounded.dispose()
    unbounded = create_engine(StoreConfig(database_url=url))
    try:
        async with unbounded.connect() as conn:
            assert (await conn.execute(text("SELECT SLEEP(1)"))).scalar() == 0
    finally:
        await unbounded.dispose()


_KEYSET_INDEXES = {
    "last_activity": {
        "sessions": "ix_sessions_user_id_last_activity_conversation_id",
        "conversations": "ix_conversations_user_id_last_activity_conversation_id",
    },
    "started": {"conversations": "ix_conversations_user_id_conversation_id"},
}
_EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
_LISTED = 400
"""Conversations of the user in ``test_a_page_in_the_middle_reads_only_its_own_rows``: half
live, half ended (the ended ones older)."""


def _reads(plan: object) -> list[dict[str, Any]]:
    """The table reads of an ``ANALYZE FORMAT=JSON`` plan, however nested."""
    if isinstance(plan, list):
        return [read for part in plan for read in _reads(part)]
    if not isinstance(plan, dict):
        return []
    found = [plan] if "table_name" in plan and "access_type" in plan else []
    return found + [read for part in plan.values() for read in _reads(part)]


@pytest.mark.parametrize("order", ["last_activity", "started"])
@pytest.mark.parametrize("where", [0.25, 0.75])
async def test_a_page_in_the_middle_reads_only_its_own_rows(
    mariadb: AsyncEngine, order: str, where: float
) -> None:
    """A ``list_sessions`` page whose cursor is in the middle of the user's list reads its
    table through the keyset index from the cursor on, at most ``limit`` rows of it, as the
    first page does (MariaDB's own choice was to read the index from the user's newest row
    and discard every row before the cursor)."""
    async with mariadb.begin() as conn:
        await conn.run_sync(_migrate, "head")
    half = _LISTED // 2
    stamp = f"TIMESTAMP'{_EPOCH:%Y-%m-%d %H:%M:%S}' + INTERVAL seq SECOND"
    async with mariadb.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO conversations (session_id, conversation_id, user_id, started_at, "
                f"ended_at, last_activity) SELECT CONCAT('s', seq), seq, 'u', {stamp}, "
                f"IF(seq <= {half}, {stamp}, NULL), IF(seq <= {half}, {stamp}, NULL) "
                f"FROM seq_1_to_{_LISTED}"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO sessions (session_id, conversation_id, user_id, created_at, "
                "last_accessed, expires_at, access_count, current_slots, turn_count, version, "
                f"last_activity) SELECT CONCAT('s', seq), seq, 'u', {stamp}, {stamp}, "
                f"{stamp} + INTERVAL 1 DAY, 0, '{{}}', 0, 1, {stamp} "
                f"FROM seq_{half + 1}_to_{_LISTED}"
            )
        )
        await conn.execute(text("ANALYZE TABLE conversations, sessions"))
    backend = backend_for(mariadb)
    limit = 21
    cid = _LISTED - int(where * _LISTED)
    values: dict[str, Any] = {
        "uid": "u",
        "limit": limit,
        "after_cid": cid,
        "after_at": (_EPOCH + timedelta(seconds=cid)).strftime("%Y-%m-%d %H:%M:%S"),
    }
    compiled = listing(backend, Shape(order, None, True, 0)).compile(dialect=mariadb.dialect)
    params = tuple(values[name] for name in compiled.positiontup or ())
    async with mariadb.connect() as conn:
        result = await conn.exec_driver_sql(f"ANALYZE FORMAT=JSON {compiled.string}", params)
        reads = _reads(json.loads(result.scalar_one()))
        listed = (await conn.exec_driver_sql(compiled.string, params)).all()
    assert [row.conversation_id for row in listed] == list(range(cid - 1, cid - 1 - limit, -1))
    indexes = _KEYSET_INDEXES[order]
    paged = [r for r in reads if r["table_name"] in indexes and r["access_type"] != "eq_ref"]
    assert sorted((read["table_name"], read["key"]) for read in paged) == sorted(indexes.items())
    assert max(read["r_rows"] for read in paged) <= limit
