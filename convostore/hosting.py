"""convostore inside a host application's own alembic environment.

A host that keeps its schema in alembic calls ``upgrade_in(connection)`` from its ``env.py``, so
one ``alembic upgrade head`` brings both schemas to head, and passes ``exclude_convostore`` as
``include_name`` so its autogenerate leaves convostore's tables alone. convostore's revisions
stay in ``convostore_alembic_version``: adding its scripts to the host's ``version_locations``
instead would record them in the host's ``alembic_version``, where convostore never looks.
"""

from __future__ import annotations

from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import Connection

from convostore.backends._private import alembic_proxies_kept
from convostore.migrate import VERSION_TABLE, _migrate_on, take_migration_lock

__all__ = ["CONVOSTORE_TABLES", "exclude_convostore", "upgrade_in"]

CONVOSTORE_TABLES = frozenset(
    {
        "conversations",
        "sessions",
        "turns",
        "turn_slots",
        "exchanges",
        "slot_values",
        "conversation_status",
        "convostore_changes",
        "convostore_compatibility",
        VERSION_TABLE,
    }
)
"""Every table convostore's migrations create."""


def upgrade_in(connection: Connection) -> None:
    """Bring convostore's schema to head on the host's ``connection``, recording it in
    ``convostore_alembic_version``.

    Inside the host's transaction (``context.begin_transaction()``) the work commits with the
    host's; otherwise in a transaction of its own. It takes the lock convostore's own migrations
    take, so workers starting with ``auto_migrate=True`` meanwhile wait and then find the schema
    current. The host's alembic ``context`` and ``op`` are put back afterwards, so it may be
    called anywhere in ``env.py``.
    """
    with alembic_proxies_kept():
        if connection.in_transaction():
            _locked_upgrade(connection)
        else:
            with connection.begin():
                _locked_upgrade(connection)


def _locked_upgrade(connection: Connection) -> None:
    """The upgrade under the lock convostore's own migrations take."""
    take_migration_lock(connection)
    _migrate_on(connection, "head", allow_downgrade=False)


def exclude_convostore(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """alembic's ``include_name`` filter for the host's autogenerate: False for convostore's
    tables (its version table included) and anything on them, so the host's migrations never
    propose dropping them. Only the default schema is convostore's."""
    if parent_names.get("schema_name") is not None:
        return True
    if type_ == "table":
        return name not in CONVOSTORE_TABLES
    return parent_names.get("table_name") not in CONVOSTORE_TABLES
