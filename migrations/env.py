"""alembic environment for convostore, shared by `alembic upgrade head` and `convostore.migrate`.

A caller that already holds a connection passes it in ``config.attributes["connection"]`` (the
library does, inside its lock); otherwise the URL is ``-x url=...``, else the ``sqlalchemy.url``
option, else env ``CONVOSTORE_DATABASE_URL``, else the default SQLite file. Logging is configured
from the ini file only when it has the logging sections, so a three-line ini (``[alembic]``,
``script_location``, ``sqlalchemy.url``) works too. Every online step records which code may run
on the result (``convostore.migrate.record_compatibility``), for rolling deploys.
"""

from __future__ import annotations

import asyncio
import logging.config

from alembic import context
from sqlalchemy import Connection

from convostore._core.engine import engine_for_url
from convostore._core.schema import compared, metadata
from convostore.config import resolve_database_url
from convostore.migrate import (
    VERSION_TABLE,
    lock_for_migration,
    record_compatibility,
    release_migration_lock,
)

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=compared,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        on_version_apply=record_compatibility,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = engine_for_url(url)
    try:
        async with engine.connect() as connection:
            await lock_for_migration(connection)
            await connection.run_sync(_run)
            await connection.commit()
            await release_migration_lock(connection)
    finally:
        await engine.dispose()


def _configure_logging() -> None:
    """Apply the ini file's logging sections, if it has them (``fileConfig`` raises
    ``KeyError: 'formatters'`` on a file without)."""
    if config.config_file_name is None:
        return
    if all(config.file_config.has_section(name) for name in ("formatters", "handlers", "loggers")):
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    explicit = context.get_x_argument(as_dictionary=True).get("url")
    return resolve_database_url(explicit or config.get_main_option("sqlalchemy.url"))


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run(shared)
    else:
        _configure_logging()
        asyncio.run(_run_with_url(_url()))
