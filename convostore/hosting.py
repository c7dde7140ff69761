"""convostore inside a host application's own alembic environment.

A host that keeps its schema in alembic calls ``upgrade_in(connection)`` from its ``env.py``, so
one ``alembic upgrade head`` brings both schemas to head, and passes ``exclude_convostore`` as
``include_name`` so its autogenerate leaves convostore's tables alone. convostore's revisions
stay in ``convostore_alembic_version``: adding its scripts to the host's ``version_locations``
instead would record them in the host's ``alembic_version``, where convostore never looks.

A host whose own tables have convostore's names (``sessions``, ``conversations``, ...) puts
convostore in a schema of its own (``StoreConfig.schema``): ``upgrade_in(connection,
schema="convostore")``. The host's autogenerate, which compares its default schema only unless
it sets ``include_schemas=True``, then never sees convostore's tables; with
``include_schemas=True`` it filters with ``exclude_convostore_in(schema)``.
"""

from __future__ import annotations

from collections.abc import Callable

from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import Connection

from convostore._core.schema import SEARCH_TABLES
from convostore.backends import backend_for
from convostore.backends._private import alembic_proxies_kept
from convostore.config import check_setting
from convostore.migrate import VERSION_TABLE, _migrate_on, take_migration_lock

__all__ = ["CONVOSTORE_TABLES", "exclude_convostore", "exclude_convostore_in", "upgrade_in"]

CONVOSTORE_TABLES = frozenset(
    {
        "conversations",
        "sessions",
        "turns",
        "turn_slots",
        "turn_feedback",
        "exchanges",
        "slot_values",
        "conversation_status",
        "feedback",
        "convostore_changes",
        "convostore_compatibility",
        VERSION_TABLE,
        *SEARCH_TABLES,
    }
)
"""Every table convostore's migrations create (on SQLite the search's FTS5 tables too)."""


def upgrade_in(connection: Connection, *, schema: str | None = None) -> None:
    """Bring convostore's schema to head on the host's ``connection``, recording it in
    ``convostore_alembic_version``.

    Inside the host's transaction (``context.begin_transaction()``) the work commits with the
    host's; otherwise in a transaction of its own. It takes the lock convostore's own migrations
    take, so workers starting with ``auto_migrate=True`` meanwhile wait and then find the schema
    current. The host's alembic ``context`` and ``op`` are put back afterwards, so it may be
    called anywhere in ``env.py``.

    With ``schema`` (the repositories' ``StoreConfig.schema``) every table, view, sequence and
    the version table go there, created if missing (PostgreSQL: a schema; MariaDB: a database
    on the same server, whose creation commits the host's transaction so far); the connection
    works there for the upgrade only (``Backend.in_schema``). ``ConfigError`` before any SQL for
    a name ``StoreConfig`` refuses, or on SQLite.
    """
    if schema is not None:
        check_setting("schema", schema)
        backend_for(connection).check_schema_name(schema)
    with alembic_proxies_kept():
        if connection.in_transaction():
            _locked_upgrade(connection, schema)
        else:
            with connection.begin():
                _locked_upgrade(connection, schema)


def _locked_upgrade(connection: Connection, schema: str | None) -> None:
    """The upgrade under the lock convostore's own migrations take, in ``schema`` if given."""
    take_migration_lock(connection)
    if schema is None:
        _migrate_on(connection, "head", allow_downgrade=False)
        return
    backend = backend_for(connection)
    backend.create_schema(connection, schema)
    with backend.in_schema(connection, schema):
        _migrate_on(connection, "head", allow_downgrade=False)


def exclude_convostore(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """alembic's ``include_name`` filter for the host's autogenerate: False for convostore's
    tables (its version table included) and anything on them, so the host's migrations never
    propose dropping them. Only the default schema is convostore's (for convostore in a schema
    of its own: ``exclude_convostore_in``)."""
    if parent_names.get("schema_name") is not None:
        return True
    if type_ == "table":
        return name not in CONVOSTORE_TABLES
    return parent_names.get("table_name") not in CONVOSTORE_TABLES


IncludeName = Callable[[str | None, NameFilterType, NameFilterParentNames], bool]


def exclude_convostore_in(schema: str) -> IncludeName:
    """alembic's ``include_name`` filter for a host whose autogenerate compares every schema
    (``include_schemas=True``) while convostore lives in ``schema``: False for that schema and
    everything in it, True for the rest (the host's own ``sessions`` table included)."""

    def include(
        name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
    ) -> bool:
        if type_ == "schema":
            return name != schema
        return parent_names.get("schema_name") != schema

    return include
