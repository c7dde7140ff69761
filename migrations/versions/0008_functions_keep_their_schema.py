"""PostgreSQL: the trigger functions resolve names in the schema they were created in

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-07

The functions behind the triggers on ``sessions`` (``convostore_record_change``, 0005;
``convostore_end_conversation``, 0003) name ``convostore_changes`` and ``conversations``
unqualified. PostgreSQL resolves those names when the function runs, through the
``search_path`` of whoever deleted the session row. With convostore in a schema of its own
(``StoreConfig.schema``), a host's or an analyst's connection deleting from
``<schema>.sessions`` would find no feed table, or the host's own ``conversations``. Each
function now carries the ``search_path`` of the migration (``SET search_path FROM CURRENT``):
convostore's schema, or the database's default where it has none, as before. SQLite and
MariaDB are unchanged: their triggers' names resolve in the triggers' own database.

Downgrading resets the functions' ``search_path``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = True
"""Older code runs the same statements; only where the functions look for their tables moves,
and it moves to where the tables are."""

_FUNCTIONS = ("convostore_record_change()", "convostore_end_conversation()")


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        for function in _FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} SET search_path FROM CURRENT")


def downgrade() -> None:
    if _postgresql():
        for function in _FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} RESET search_path")
