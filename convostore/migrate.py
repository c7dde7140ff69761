"""Schema migrations through alembic: upgrade a database, and check that one is current.

The migration scripts ship inside the wheel (as ``convostore/_migrations``), so an installed
package migrates without the source tree; in a source checkout they are ``migrations/`` at the
top. convostore keeps its history in its own version table, ``convostore_alembic_version``,
beside any alembic history of the host application.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import SchemaNotReady, translate_errors
from .urls import check_database_url

__all__ = [
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "head_revision",
    "lock_for_migration",
    "script_location",
    "upgrade",
    "upgrade_url",
]

VERSION_TABLE = "convostore_alembic_version"
_ADVISORY_LOCK_KEY = 0x636F6E766F  # "convo": one migration at a time per PostgreSQL database


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


def _upgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to ``revision`` in one transaction, one process at a time.

    Several workers starting together with ``auto_migrate=True`` queue up: PostgreSQL holds an
    advisory lock, SQLite the database's write lock, for the whole upgrade; whoever comes
    second finds the schema current and does nothing.
    """
    with translate_errors("schema migration"):
        async with engine.connect() as conn:
            await lock_for_migration(conn)
            await conn.run_sync(_upgrade_on, revision)
            await conn.commit()


async def lock_for_migration(conn: AsyncConnection) -> None:
    """Begin the migration's transaction holding a lock that a second migrator waits for:
    an advisory lock on PostgreSQL, the write lock on SQLite. Commit releases it."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def upgrade_url(url: str, revision: str = "head") -> None:
    """``upgrade`` on a database given by URL (what ``convostore migrate`` runs); a URL
    convostore cannot use raises ``ConfigError`` first."""
    engine = create_async_engine(check_database_url(url))
    try:
        await upgrade(engine, revision)
    finally:
        await engine.dispose()


async def check_schema(engine: AsyncEngine) -> None:
    """Raise ``SchemaNotReady`` unless the database is at the newest migration."""
    head = head_revision()
    with translate_errors("reading the schema version"):
        async with engine.connect() as conn:
            current = await conn.run_sync(_current_revisions)
    if current == (head,):
        return
    found = "no convostore schema" if not current else f"schema revision {', '.join(current)}"
    raise SchemaNotReady(
        f"the database has {found}, but this convostore needs revision {head}. "
        "Run `convostore migrate --url <database url>` (or `alembic upgrade head` in a "
        "source checkout), or start the repository with StoreConfig(auto_migrate=True)."
    )
