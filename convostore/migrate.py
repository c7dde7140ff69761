"""Schema migrations through alembic: upgrade a database, and check that one is current.

The migration scripts ship inside the wheel (as ``convostore/_migrations``), so an installed
package migrates without the source tree; in a source checkout they are ``migrations/`` at the
top. convostore keeps its history in its own version table, ``convostore_alembic_version``,
beside any alembic history of the host application.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError, RevisionMap
from alembic.util.exc import CommandError
from sqlalchemy import Column, Connection, MetaData, String, Table, inspect, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.engine import engine_for_url
from convostore.backends import backend_for
from convostore.backends._urls import check_database_url
from convostore.errors import ConfigError, SchemaNotReady, translate_errors

__all__ = [
    "COMPATIBLE_ATTRIBUTE",
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "create_schema",
    "current_revision_url",
    "head_revision",
    "lock_for_migration",
    "migrate_url",
    "record_compatibility",
    "release_migration_lock",
    "script_location",
    "take_migration_lock",
    "upgrade",
    "upgrade_url",
]

VERSION_TABLE = "convostore_alembic_version"


def script_location() -> Path:
    """The folder of migration scripts: the copy inside the installed package, else the
    source tree's ``migrations/``."""
    package = Path(__file__).resolve().parent
    shipped = package / "_migrations"
    if (shipped / "env.py").is_file():
        return shipped
    return package.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An alembic ``Config`` for convostore's scripts, optionally bound to ``url``."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision the scripts know."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return tuple(context.get_current_heads())


def _migrate_on(connection: Connection, revision: str, allow_downgrade: bool) -> None:
    """Upgrade to ``revision``, or downgrade when it lies below the database's revision (only
    with ``allow_downgrade``: alembic's upgrade to an older revision silently does nothing).
    Relative revisions (``-1``) are refused: alembic resolves them from head, not from the
    database's revision, so they would not mean what they say."""
    if "+" in revision or "-" in revision:
        raise ConfigError(
            f"revision {revision!r}: relative revisions are not supported; "
            "name a revision id, head or base"
        )
    script = ScriptDirectory.from_config(alembic_config())
    try:
        targets = {r.revision for r in script.get_revisions(revision) if r is not None}
    except (CommandError, RevisionError) as exc:
        raise ConfigError(f"revision {revision!r}: {exc}") from None
    current = _current_revisions(connection)
    below: set[str] = set()
    for head in current:
        try:
            below |= {r.revision for r in script.iterate_revisions(head, "base")} - {head}
        except (CommandError, RevisionError):
            raise SchemaNotReady(
                f"the database has schema revision {head}, which this convostore does not "
                "know: it was migrated by a newer convostore"
            ) from None
    downgrade = bool(current) and targets <= below
    if downgrade and not allow_downgrade:
        raise ConfigError(
            f"the database is at {_describe(current)}; going to {revision!r} is a downgrade, "
            "which needs --allow-downgrade"
        )
    config = alembic_config()
    config.attributes["connection"] = connection
    try:
        if downgrade:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)
    except (CommandError, RevisionError) as exc:
        raise ConfigError(f"revision {revision!r}: {exc}") from None


async def upgrade(
    engine: AsyncEngine,
    revision: str = "head",
    *,
    allow_downgrade: bool = False,
    schema: str | None = None,
) -> None:
    """Bring the database to ``revision`` in one transaction, one process at a time.

    Several workers starting together with ``auto_migrate=True`` queue up: PostgreSQL holds an
    advisory lock, SQLite the database's write lock, MariaDB a named lock, for the whole
    upgrade; whoever comes second finds the schema current and does nothing. A revision below
    the database's is a downgrade, run only with ``allow_downgrade``; without it, and for a
    revision the scripts do not know, ``ConfigError`` before any change.

    With ``schema`` (``StoreConfig.schema``) the engine's connections must work in it
    (``ConfigError`` otherwise); it is created if missing.
    """
    with translate_errors("schema migration"):
        async with engine.connect() as conn:
            await lock_for_migration(conn)
            if schema is not None:
                await conn.run_sync(_enter_schema, schema)
            await conn.run_sync(_migrate_on, revision, allow_downgrade)
            await conn.commit()
            await release_migration_lock(conn)


def _enter_schema(connection: Connection, schema: str) -> None:
    """Check that ``connection`` works in ``schema``, then create it if missing."""
    backend = backend_for(connection)
    backend.check_in_schema(connection, schema)
    backend.create_schema(connection, schema)


async def create_schema(url: str | URL, schema: str) -> None:
    """Create ``schema`` (``StoreConfig.schema``) if missing, through a connection to the
    database ``url`` names, before an engine of convostore's connects into it (on MariaDB the
    schema is a database, which such a connection opens)."""
    engine = engine_for_url(url)
    try:
        with translate_errors("creating the schema"):
            async with engine.begin() as conn:
                await conn.run_sync(backend_for(conn).create_schema, schema)
    finally:
        await engine.dispose()


def _describe(current: tuple[str, ...]) -> str:
    """``current`` as text: ``0002 (head)``, ``0001``, or ``no convostore schema``."""
    if not current:
        return "no convostore schema"
    head = head_revision()
    return ", ".join(f"{r} (head)" if r == head else r for r in current)


async def migrate_url(
    url: str, revision: str = "head", *, allow_downgrade: bool = False, schema: str | None = None
) -> str:
    """``upgrade`` the database at ``url`` (what ``convostore migrate`` runs), in ``schema`` if
    given, and return the revision it is at afterwards, read back from the database, as text."""
    parsed = _checked(url, schema)
    if schema is not None:
        await create_schema(parsed, schema)
    engine = engine_for_url(parsed, schema=schema)
    try:
        await upgrade(engine, revision, allow_downgrade=allow_downgrade, schema=schema)
        return _describe((await _schema_state(engine, schema))[0])
    finally:
        await engine.dispose()


def _checked(url: str, schema: str | None) -> URL:
    """``url`` parsed, if convostore can use it in ``schema``; else ``ConfigError``."""
    parsed = check_database_url(url)
    if schema is not None:
        backend_for(parsed).check_schema_name(schema)
    return parsed


async def current_revision_url(
    url: str, *, require_head: bool = False, schema: str | None = None
) -> str:
    """The revision the database at ``url`` (in ``schema`` if given) is at, as text: ``0002
    (head)``, ``0001``, or ``no convostore schema``; with ``require_head``, ``SchemaNotReady``
    unless it is at head."""
    engine = engine_for_url(_checked(url, schema), schema=schema)
    try:
        if require_head:
            await check_schema(engine, schema=schema)
        return _describe((await _schema_state(engine, schema))[0])
    finally:
        await engine.dispose()


async def release_migration_lock(conn: AsyncConnection) -> None:
    """Free a migration lock that outlives its transaction (MariaDB's), after the commit."""
    await conn.run_sync(backend_for(conn).release_migration_lock)


async def lock_for_migration(conn: AsyncConnection) -> None:
    """``take_migration_lock`` on an async connection."""
    await conn.run_sync(take_migration_lock)


def take_migration_lock(connection: Connection) -> None:
    """Hold, until the transaction ends, a lock that a second migrator waits for (the
    backend's: an advisory lock on PostgreSQL, the write lock on SQLite)."""
    backend_for(connection).take_migration_lock(connection)


async def upgrade_url(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """``migrate_url`` without reading the revision back."""
    await migrate_url(url, revision, schema=schema)


COMPATIBLE_ATTRIBUTE = "compatible_with_older_code"
"""A revision script that sets this module attribute to True declares that code of the revision
below it still runs on the schema it leaves (an additive change); absent means False."""

_compatibility = Table(
    "convostore_compatibility",
    MetaData(),
    Column("revision", String(32), primary_key=True),
    Column("oldest_code_revision", String(32), nullable=False),
)
"""One row: the database's revision, and the oldest revision whose code can run on it. Every
migration through ``migrations/env.py`` rewrites it, with the newer scripts at hand, so that
older code, which lacks those scripts, can still tell whether it may start. Like the version
table it lives outside alembic's revisions (and outside ``schema.metadata``)."""


def _oldest_code_revision(revisions: RevisionMap, revision: str) -> str:
    """The oldest revision whose code runs on a database at ``revision``: walk down while each
    revision declares itself compatible with the code below it."""
    oldest = revision
    for script in revisions.iterate_revisions(revision, "base"):
        if script is None:
            break
        oldest = script.revision
        if not (isinstance(script, Script) and getattr(script.module, COMPATIBLE_ATTRIBUTE, False)):
            break
    return oldest


def record_compatibility(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[str], run_args: Mapping[str, Any]
) -> None:
    """alembic's ``on_version_apply`` hook (``migrations/env.py`` installs it): after each
    step, store the new revision's oldest compatible code revision, or drop the record at base.
    Future releases must keep this hook, or their databases refuse every older worker."""
    connection = ctx.connection
    if connection is None:
        return
    if len(heads) != 1:
        _compatibility.drop(connection, checkfirst=True)
        return
    (revision,) = heads
    oldest = _oldest_code_revision(step.revision_map, revision)
    _compatibility.create(connection, checkfirst=True)
    connection.execute(_compatibility.delete())
    connection.execute(
        _compatibility.insert().values(revision=revision, oldest_code_revision=oldest)
    )


def _read_schema_state(
    connection: Connection, schema: str | None
) -> tuple[tuple[str, ...], str | None]:
    """The database's revisions, and the oldest code revision recorded for them (None when
    nothing is recorded for exactly that revision); ``ConfigError`` if the connection does not
    work in ``schema``."""
    if schema is not None:
        backend_for(connection).check_in_schema(connection, schema)
    current = _current_revisions(connection)
    if len(current) != 1 or not inspect(connection).has_table(_compatibility.name):
        return current, None
    oldest = connection.execute(
        select(_compatibility.c.oldest_code_revision).where(_compatibility.c.revision == current[0])
    ).scalar_one_or_none()
    return current, oldest


async def _schema_state(
    engine: AsyncEngine, schema: str | None
) -> tuple[tuple[str, ...], str | None]:
    """``_read_schema_state`` on a connection of ``engine``; nothing recorded where the
    schema a connection opens (MariaDB's database) does not exist yet."""
    with translate_errors("reading the schema version"):
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_read_schema_state, schema)
        except DBAPIError as exc:
            if schema is None or not backend_for(engine).is_missing_schema(exc.orig or exc):
                raise
            return (), None


async def check_schema(engine: AsyncEngine, *, schema: str | None = None) -> None:
    """Raise ``SchemaNotReady`` unless this code can run on the database: it is at the newest
    migration, or at a newer one (migrated by a newer convostore, during a rolling deploy) whose
    recorded oldest compatible code revision is one this code's scripts know. An older schema
    is always refused. With ``schema`` (``StoreConfig.schema``), the engine's connections must
    work in it (``ConfigError`` otherwise: an engine passed in keeps its own settings)."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    current, oldest_code = await _schema_state(engine, schema)
    if current == (head,):
        return
    if len(current) == 1 and not _knows(script, current[0]):
        if oldest_code is not None and _knows(script, oldest_code):
            return
        needs = f"code of revision {oldest_code}" if oldest_code else "newer code"
        raise SchemaNotReady(
            f"the database has schema revision {current[0]}, newer than this convostore's "
            f"revision {head}, and it needs {needs}: upgrade convostore before starting it"
        )
    found = "no convostore schema" if not current else f"schema revision {', '.join(current)}"
    where = "" if schema is None else f" in schema {schema!r}"
    option = "" if schema is None else f" --schema {schema}"
    raise SchemaNotReady(
        f"the database has {found}{where}, but this convostore needs revision {head}. "
        f"Run `convostore migrate --url <database url>{option}` (or `alembic upgrade head` "
        "in a source checkout), or start the repository with StoreConfig(auto_migrate=True)."
    )


def _knows(script: ScriptDirectory, revision: str) -> bool:
    """Whether ``revision`` is one of ``script``'s revisions."""
    try:
        return script.get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False
