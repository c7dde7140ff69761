"""idempotency keys on turns, and a feed of session changes for other workers' caches

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- ``turns.idempotency_key``: every append stores one on its first turn, unique within the
  session at this revision (0003 makes it unique per conversation), so a write whose outcome
  was unknown (the connection died after the statement was sent) can be sent again without
  storing the exchange twice. Existing turns keep NULL.
- Change feed, so other workers can evict what they cached: on PostgreSQL a trigger sends
  ``NOTIFY convostore_changes`` with ``<version> <session_id>`` whenever a session's version
  moves or the session is deleted (``*`` for a deletion); on SQLite and MariaDB the same
  triggers append to the table ``convostore_changes``, which other processes poll.

Downgrading drops the keys (the exchanges stay) and the feed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""0001's code neither listens for cache invalidations nor writes idempotency keys."""

_MARIADB = ("mariadb", "mysql")
"""SQLAlchemy's two names for a MariaDB connection (``mariadb+asyncmy://``, ``mysql+...://``)."""

_PG_FUNCTION = """
CREATE FUNCTION convostore_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('convostore_changes', '* ' || OLD.session_id);
    ELSE
        PERFORM pg_notify('convostore_changes', NEW.version || ' ' || NEW.session_id);
    END IF;
    RETURN NULL;
END
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER convostore_session_changed
AFTER UPDATE OF version OR DELETE ON sessions
FOR EACH ROW EXECUTE FUNCTION convostore_notify_change()
"""
_SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER convostore_session_changed AFTER UPDATE OF version ON sessions
    BEGIN
        INSERT INTO convostore_changes (session_id, version)
        VALUES (NEW.session_id, NEW.version);
    END
    """,
    """
    CREATE TRIGGER convostore_session_deleted AFTER DELETE ON sessions
    BEGIN
        INSERT INTO convostore_changes (session_id, version) VALUES (OLD.session_id, -1);
    END
    """,
)
_MARIADB_TRIGGERS = (
    """
    CREATE TRIGGER convostore_session_changed AFTER UPDATE ON sessions FOR EACH ROW
    INSERT INTO convostore_changes (session_id, version)
    SELECT NEW.session_id, NEW.version FROM DUAL WHERE NEW.version <> OLD.version
    """,
    """
    CREATE TRIGGER convostore_session_deleted AFTER DELETE ON sessions FOR EACH ROW
    INSERT INTO convostore_changes (session_id, version) VALUES (OLD.session_id, -1)
    """,
)
"""MariaDB has no ``UPDATE OF column``: the trigger compares the versions instead. Each trigger
is one statement (no BEGIN ... END), so that ``alembic upgrade --sql`` output runs in the
``mariadb`` client without DELIMITER lines."""


def _table_options() -> dict[str, str]:
    """MariaDB: as 0001's tables (InnoDB, utf8mb4, a binary collation without padding)."""
    dialect = op.get_context().dialect.name
    if dialect not in _MARIADB:
        return {}
    options = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_nopad_bin"}
    return {f"{dialect}_{name}": value for name, value in options.items()}


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.create_index(
        "ix_turns_session_id_idempotency_key",
        "turns",
        ["session_id", "idempotency_key"],
        unique=True,
    )
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.create_table(
            "convostore_changes",
            # SQLite: a plain rowid key: new rows take max(id) + 1, which only ever grows
            # because the sweep's pruning always keeps the newest row (AUTOINCREMENT's
            # bookkeeping would cost every append a second write). MariaDB: a BIGINT
            # AUTO_INCREMENT, which InnoDB keeps across restarts.
            sa.Column(
                "id", sa.Integer().with_variant(sa.BigInteger(), *_MARIADB), primary_key=True
            ),
            sa.Column("session_id", sa.String(128), nullable=False),
            sa.Column("version", sa.BigInteger(), nullable=False),
            **_table_options(),
        )
        for trigger in _MARIADB_TRIGGERS if dialect in _MARIADB else _SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER convostore_session_changed ON sessions")
        op.execute("DROP FUNCTION convostore_notify_change()")
    else:
        op.execute("DROP TRIGGER convostore_session_deleted")
        op.execute("DROP TRIGGER convostore_session_changed")
        op.drop_table("convostore_changes")
    op.drop_index("ix_turns_session_id_idempotency_key", table_name="turns")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("idempotency_key")
