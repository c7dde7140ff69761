"""Rolling deploys: code at its head starts on a database a newer release migrated, when every
newer revision declares itself compatible with older code, and refuses it otherwise; an older
schema is still refused. The newer releases are copies of ``migrations/`` with test-only
revisions after the head (``NEXT`` and up)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import SchemaNotReady, SessionRepository, StoreConfig
from convostore.migrate import (
    VERSION_TABLE,
    alembic_config,
    check_schema,
    head_revision,
    script_location,
    upgrade_url,
)

RECORD = "convostore_compatibility"
HEAD = head_revision() or ""
_below_head = ScriptDirectory.from_config(alembic_config()).get_revision(HEAD)
PREVIOUS = str(_below_head.down_revision if _below_head is not None else "")
"""The revision below the head (revision ids are numbers, but not every number is one)."""


def _oldest_code_for(revision: str) -> str:
    """The oldest revision whose code runs at ``revision``, read off the scripts' flags: below
    it while each revision says it is compatible with the code before it."""
    scripts = ScriptDirectory.from_config(alembic_config())
    oldest = revision
    script = scripts.get_revision(revision)
    while script is not None and getattr(script.module, "compatible_with_older_code", False):
        oldest = str(script.down_revision)
        script = scripts.get_revision(oldest)
    return oldest


OLDEST_FOR_HEAD = _oldest_code_for(HEAD)


def _after_head(steps: int) -> str:
    """The test-only revision ``steps`` after the head."""
    return f"{int(HEAD) + steps:04d}"


_REVISION = '''"""test-only revision {revision}: an additive table"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
compatible_with_older_code = {compatible}


def upgrade() -> None:
    op.create_table(
        "rolling_{revision}",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("note", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rolling_{revision}")
'''


def _newer_release(tmp_path: Path, *compatible: bool) -> Path:
    """A copy of this release's migrations plus revisions after the head whose
    ``compatible_with_older_code`` are ``compatible``, in order."""
    location = tmp_path / "newer_migrations"
    shutil.copytree(script_location(), location, ignore=shutil.ignore_patterns("__pycache__"))
    down = HEAD
    for steps, flag in enumerate(compatible, start=1):
        revision = _after_head(steps)
        text_ = _REVISION.format(revision=revision, down=down, compatible=flag)
        (location / "versions" / f"{revision}_rolling_test.py").write_text(text_)
        down = revision
    return location


async def _alembic(location: Path, url: str, verb: str, revision: str) -> None:
    """``alembic upgrade|downgrade revision`` with the scripts at ``location``."""
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # env.py runs its own event loop when no connection is passed in: call it from a thread.
    await asyncio.to_thread(getattr(command, verb), config, revision)


async def _check(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await check_schema(engine)
    finally:
        await engine.dispose()


async def _rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table(RECORD)):
                return []
            return [tuple(row) for row in await conn.execute(text(statement))]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("compatible", [(True,), (True, True)])
async def test_older_code_starts_on_a_compatible_newer_schema(
    empty_url: str, tmp_path: Path, compatible: tuple[bool, ...]
) -> None:
    """When every revision above the head is compatible with older code, check_schema and a
    repository that does not migrate accept the newer database, and work on it."""
    await _alembic(_newer_release(tmp_path, *compatible), empty_url, "upgrade", "head")

    await _check(empty_url)
    config = StoreConfig(database_url=empty_url, auto_migrate=False, cleanup_interval=0)
    async with SessionRepository(config) as repo:
        sid, _ = await repo.get_or_create()
        await repo.add_turn(sid, "Archieven in Utrecht?", "Twaalf.")
        assert await repo.get(sid) is not None


@pytest.mark.parametrize(
    ("compatible", "needs"), [((False,), 1), ((True, False), 2), ((False, True), 1)]
)
async def test_older_code_refuses_a_newer_schema_with_an_incompatible_revision(
    empty_url: str, tmp_path: Path, compatible: tuple[bool, ...], needs: int
) -> None:
    """One incompatible revision above the head is enough for SchemaNotReady, naming the
    database's revision, this code's, and the code the database needs; with auto_migrate
    too, since this code cannot downgrade what it does not know."""
    await _alembic(_newer_release(tmp_path, *compatible), empty_url, "upgrade", "head")
    newest = _after_head(len(compatible))

    pattern = rf"revision {newest}, newer than this convostore's revision {HEAD}.*code of revision "
    with pytest.raises(SchemaNotReady, match=pattern + _after_head(needs)):
        await _check(empty_url)
    for migrate in (False, True):
        config = StoreConfig(database_url=empty_url, auto_migrate=migrate, cleanup_interval=0)
        with pytest.raises(SchemaNotReady, match=newest):
            await SessionRepository(config).start()


async def test_older_schema_is_refused_and_head_accepted(empty_url: str) -> None:
    """Code at the head refuses a database at the revision before (older, whatever it
    records) and accepts one at exactly the head, which records the oldest code that runs on
    it, as the scripts' flags say."""
    await upgrade_url(empty_url, PREVIOUS)
    assert await _rows(empty_url, f"SELECT * FROM {RECORD}") == [
        (PREVIOUS, _oldest_code_for(PREVIOUS))
    ]
    pattern = rf"schema revision {PREVIOUS}, but .* needs revision {HEAD}"
    with pytest.raises(SchemaNotReady, match=pattern):
        await _check(empty_url)

    await upgrade_url(empty_url)
    await _check(empty_url)
    assert await _rows(empty_url, f"SELECT * FROM {RECORD}") == [(HEAD, OLDEST_FOR_HEAD)]


async def test_unknown_revision_without_a_record_is_refused(url: str) -> None:
    """A newer revision with no record for it (migrated without convostore's env.py, or a
    stale record of another revision) is refused: nothing says older code may run."""
    engine = create_async_engine(url)
    newer = _after_head(1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '{newer}'"))
        with pytest.raises(SchemaNotReady, match=rf"revision {newer}, newer .* needs newer code"):
            await check_schema(engine)
    finally:
        await engine.dispose()


async def test_downgrades_rewrite_the_record(empty_url: str, tmp_path: Path) -> None:
    """Each migration step rewrites the record: downgrading the newer release to the head
    records the head again, and downgrading to base drops the record's table."""
    newer = _newer_release(tmp_path, True)
    await _alembic(newer, empty_url, "upgrade", "head")
    record = await _rows(empty_url, f"SELECT * FROM {RECORD}")
    assert record == [(_after_head(1), OLDEST_FOR_HEAD)]

    await _alembic(newer, empty_url, "downgrade", HEAD)
    assert await _rows(empty_url, f"SELECT * FROM {RECORD}") == [(HEAD, OLDEST_FOR_HEAD)]

    await _alembic(newer, empty_url, "downgrade", "base")
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            assert not await conn.run_sync(lambda c: inspect(c).has_table(RECORD))
    finally:
        await engine.dispose()
