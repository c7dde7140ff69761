"""feedback on answers, and the OpenTelemetry trace of each turn

Revision ID: 0011
Revises: 0010
Create Date: 2027-03-15

- ``turns.trace_id`` and ``turns.span_id``: the OpenTelemetry trace and span an exchange was
  produced in (lowercase hex), NULL where none was given and on every turn stored before.
- ``turn_feedback``: one row per assistant turn that got feedback (``add_feedback``): a score
  of -2..2 and an optional comment. Its foreign key points at the conversation with ON DELETE
  CASCADE, as ``turn_slots``' does, so feedback goes with its transcript.
- A view ``feedback``: each feedback row with its exchange (question, answer, template, the
  answer's trace and span) and the conversation's owner.

Downgrading drops the view, the table (and so every feedback given) and the two columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = True
"""Additions only: older code never names the new table, and the new columns are nullable
without a default, so its inserts into ``turns`` (which list their columns) store NULL there
and its reads, which select their columns by name, never see them."""

_MARIADB = ("mariadb", "mysql")

_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MARIADB)
_text = sa.Text().with_variant(mysql.LONGTEXT(), *_MARIADB)

_FEEDBACK = """
CREATE VIEW feedback AS
SELECT f.session_id, f.conversation_id, f.seq, c.user_id, f.score, f.comment, f.created_at,
       q.content AS question, q.resolved_question, a.content AS answer, q.template_id,
       a.trace_id, a.span_id
FROM turn_feedback f
JOIN conversations c ON c.session_id = f.session_id AND c.conversation_id = f.conversation_id
JOIN turns a
    ON a.session_id = f.session_id AND a.conversation_id = f.conversation_id AND a.seq = f.seq
LEFT JOIN turns q
    ON q.session_id = f.session_id AND q.conversation_id = f.conversation_id
    AND q.seq = f.seq - 1 AND q.role = 'user'
"""


def _table_options() -> dict[str, str]:
    """MariaDB: as the other tables (InnoDB, utf8mb4, a binary collation without padding)."""
    dialect = op.get_context().dialect.name
    if dialect not in _MARIADB:
        return {}
    options = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_nopad_bin"}
    return {f"{dialect}_{name}": value for name, value in options.items()}


def upgrade() -> None:
    op.add_column("turns", sa.Column("trace_id", sa.String(32), nullable=True))
    op.add_column("turns", sa.Column("span_id", sa.String(16), nullable=True))
    op.create_table(
        "turn_feedback",
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("conversation_id", _key, nullable=False, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("comment", _text, nullable=True),
        sa.Column("created_at", _timestamp, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "conversation_id", "seq", name="pk_turn_feedback"),
        sa.ForeignKeyConstraint(
            ["session_id", "conversation_id"],
            ["conversations.session_id", "conversations.conversation_id"],
            name="fk_turn_feedback_conversations",
            ondelete="CASCADE",
        ),
        **_table_options(),
    )
    op.execute(_FEEDBACK)


def downgrade() -> None:
    op.execute("DROP VIEW feedback")
    op.drop_table("turn_feedback")
    op.drop_column("turns", "span_id")
    op.drop_column("turns", "trace_id")
