"""sessions, turns and turn_slots

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARIADB = ("mariadb", "mysql")
"""SQLAlchemy's two names for a MariaDB connection (``mariadb+asyncmy://``, ``mysql+...://``)."""


class _MariaDBJSON(sa.types.UserDefinedType[object]):
    """MariaDB's JSON (a LONGTEXT checked by JSON_VALID) in the tables' collation: left to
    itself it is utf8mb4_bin, and a function given columns of both (JSON_OBJECT, as a load
    builds the session's object) fails with "Illegal mix of collations"."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "JSON COLLATE utf8mb4_nopad_bin"


_json = (
    sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(_MariaDBJSON(), *_MARIADB)
)
_timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MARIADB)
"""MariaDB: DATETIME(6), holding UTC; a plain DATETIME keeps whole seconds only."""
_text = sa.Text().with_variant(mysql.LONGTEXT(), *_MARIADB)
"""MariaDB: LONGTEXT; its TEXT holds 65,535 bytes, less than a turn's text may take."""
_slot_name = sa.Text().with_variant(sa.String(512), *_MARIADB)
"""MariaDB: VARCHAR(512), as a TEXT column cannot be part of a key; 512 characters of 4 bytes
keep ``pk_turn_slots`` within InnoDB's 3,072 bytes a key."""


def _table_options() -> dict[str, str]:
    """MariaDB: InnoDB, utf8mb4 and a binary collation without padding, so that text compares
    and sorts as on SQLite and PostgreSQL ("a" is not "A", nor "a "), session ids included."""
    dialect = op.get_context().dialect.name
    if dialect not in _MARIADB:
        return {}
    options = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_nopad_bin"}
    return {f"{dialect}_{name}": value for name, value in options.items()}


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("created_at", _timestamp, nullable=False),
        sa.Column("last_accessed", _timestamp, nullable=False),
        sa.Column("expires_at", _timestamp, nullable=False),
        sa.Column("access_count", sa.BigInteger(), nullable=False),
        sa.Column("language", sa.String(32), nullable=False),
        sa.Column("current_template_id", _text, nullable=True),
        sa.Column("current_slots", _json, nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_sessions"),
        **_table_options(),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_table(
        "turns",
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", _text, nullable=False),
        sa.Column("resolved_question", _text, nullable=True),
        sa.Column("template_id", _text, nullable=True),
        sa.Column("results", _json, nullable=False),
        sa.Column("created_at", _timestamp, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_turns"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name="fk_turns_sessions",
            ondelete="CASCADE",
        ),
        **_table_options(),
    )
    op.create_table(
        "turn_slots",
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", _slot_name, nullable=False),
        sa.Column("value", _text, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "seq", "name", name="pk_turn_slots"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name="fk_turn_slots_sessions",
            ondelete="CASCADE",
        ),
        **_table_options(),
    )


def downgrade() -> None:
    op.drop_table("turn_slots")
    op.drop_table("turns")
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    op.drop_table("sessions")
