"""conversations that outlive their session, owners, and the analytics views

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- ``conversations``: one row per conversation, keyed by (``session_id``, ``conversation_id``),
  with ``user_id``, ``started_at``, ``ended_at``, ``language``; on PostgreSQL and MariaDB the
  sequence ``conversation_ids`` hands out the ids. Every existing session becomes one live
  conversation, started at the session's ``created_at``.
- ``sessions`` gains ``conversation_id`` (its live conversation) and ``user_id`` (its owner;
  NULL for existing sessions).
- ``turns`` and ``turn_slots`` gain ``conversation_id`` after ``session_id`` in their keys, with
  foreign keys to ``conversations`` instead of ``sessions``: deleting a session no longer
  deletes its turns. The idempotency keys are unique per conversation (a partial index: only
  the turns that carry one).
- A trigger on ``sessions`` marks a conversation ended (``ended_at`` = the session's
  ``last_accessed``, and its ``language``) when its session row is deleted.
- Views ``exchanges`` and ``slot_values`` for analysts.

Turns and slots left without their session row (deleted with foreign keys off) are deleted
first: no release could read them.

Downgrading keeps only live conversations: transcripts of ended sessions and the owners are
dropped, because 0002's schema has nowhere to keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""0002's code writes turns without ``conversation_id``."""

_MARIADB = ("mariadb", "mysql")
"""SQLAlchemy's two names for a MariaDB connection (``mariadb+asyncmy://``, ``mysql+...://``)."""

_key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MARIADB)
"""MariaDB: DATETIME(6) holding UTC, as 0001's."""

_PG_END_FUNCTION = """
CREATE FUNCTION convostore_end_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET ended_at = OLD.last_accessed, language = OLD.language
    WHERE session_id = OLD.session_id AND conversation_id = OLD.conversation_id;
    RETURN NULL;
END
$$
"""
_PG_END_TRIGGER = """
CREATE TRIGGER convostore_conversation_ended AFTER DELETE ON sessions
FOR EACH ROW EXECUTE FUNCTION convostore_end_conversation()
"""
_SQLITE_END_TRIGGER = """
CREATE TRIGGER convostore_conversation_ended AFTER DELETE ON sessions
BEGIN
    UPDATE conversations SET ended_at = OLD.last_accessed, language = OLD.language
    WHERE session_id = OLD.session_id AND conversation_id = OLD.conversation_id;
END
"""
_MARIADB_END_TRIGGER = """
CREATE TRIGGER convostore_conversation_ended AFTER DELETE ON sessions FOR EACH ROW
UPDATE conversations SET ended_at = OLD.last_accessed, language = OLD.language
WHERE session_id = OLD.session_id AND conversation_id = OLD.conversation_id
"""
_EXCHANGES = """
CREATE VIEW exchanges AS
SELECT q.session_id, q.conversation_id, q.seq, c.user_id,
       q.content AS question, q.resolved_question, a.content AS answer, q.template_id,
       COALESCE(s.language, c.language) AS language, q.created_at,
       c.ended_at IS NULL AS live
FROM turns q
JOIN conversations c ON c.session_id = q.session_id AND c.conversation_id = q.conversation_id
LEFT JOIN sessions s ON s.session_id = q.session_id AND s.conversation_id = q.conversation_id
LEFT JOIN turns a
    ON a.session_id = q.session_id AND a.conversation_id = q.conversation_id
    AND a.seq = q.seq + 1 AND a.role = 'assistant'
WHERE q.role = 'user'
"""
_SLOT_VALUES = """
CREATE VIEW slot_values AS
SELECT t.session_id, t.conversation_id, t.seq, c.user_id, t.name, t.value, q.template_id,
       q.created_at
FROM turn_slots t
JOIN turns q
    ON q.session_id = t.session_id AND q.conversation_id = t.conversation_id AND q.seq = t.seq
JOIN conversations c ON c.session_id = t.session_id AND c.conversation_id = t.conversation_id
"""


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _mariadb() -> bool:
    return op.get_context().dialect.name in _MARIADB


def _table_options() -> dict[str, str]:
    """MariaDB: as 0001's tables (InnoDB, utf8mb4, a binary collation without padding)."""
    dialect = op.get_context().dialect.name
    if dialect not in _MARIADB:
        return {}
    options = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_nopad_bin"}
    return {f"{dialect}_{name}": value for name, value in options.items()}


def _session_triggers() -> list[str]:
    """SQLite: the triggers on ``sessions``, which recreating the table drops."""
    rows = op.get_bind().execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'sessions'")
    )
    return [row[0] for row in rows]


def _recreated(table: str) -> Any:
    """A batch of changes to ``table``: SQLite copies the table, PostgreSQL alters it."""
    return op.batch_alter_table(table, recreate="always" if _sqlite() else "never")


def _rekey(table: str, key: list[str], referred: str) -> None:
    """Key ``table`` by ``key`` and point its foreign key at ``referred`` (``conversations``
    or ``sessions``) instead of the other one. ``conversation_id`` is filled already.

    On SQLite, dropping a table that others reference deletes their rows by cascade, so a
    table is only ever copied while nothing references it."""
    columns = ["session_id", "conversation_id"] if referred == "conversations" else ["session_id"]
    before = "sessions" if referred == "conversations" else "conversations"
    with _recreated(table) as batch:
        batch.drop_constraint(f"fk_{table}_{before}", type_="foreignkey")
        batch.drop_constraint(f"pk_{table}", type_="primary")
        batch.alter_column("conversation_id", existing_type=_key, nullable=False)
        batch.create_primary_key(f"pk_{table}", key)
        batch.create_foreign_key(
            f"fk_{table}_{referred}", referred, columns, columns, ondelete="CASCADE"
        )


def upgrade() -> None:
    # Turns and slots whose session row is gone (deleted with foreign keys off, as SQLite
    # leaves them outside convostore) were readable by no release and would belong to no
    # conversation: they go, rather than fail the NOT NULL below.
    for table in ("turn_slots", "turns"):
        op.execute(
            f"DELETE FROM {table} WHERE NOT EXISTS "
            f"(SELECT 1 FROM sessions WHERE sessions.session_id = {table}.session_id)"
        )
    op.create_table(
        "conversations",
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("conversation_id", _key, nullable=False, autoincrement=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("started_at", _timestamp, nullable=False),
        sa.Column("ended_at", _timestamp, nullable=True),
        sa.Column("language", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("session_id", "conversation_id", name="pk_conversations"),
        **_table_options(),
    )
    op.create_index("ix_conversations_conversation_id", "conversations", ["conversation_id"])
    op.create_index(
        "ix_conversations_user_id_conversation_id", "conversations", ["user_id", "conversation_id"]
    )
    op.create_index("ix_conversations_ended_at", "conversations", ["ended_at"])
    if _sqlite():
        number = "row_number() OVER (ORDER BY created_at, session_id)"
    else:
        op.execute("CREATE SEQUENCE conversation_ids")
        # MariaDB names the sequence, PostgreSQL takes its name as text.
        number = "NEXTVAL(conversation_ids)" if _mariadb() else "nextval('conversation_ids')"
    op.execute(
        "INSERT INTO conversations (session_id, conversation_id, started_at) "
        f"SELECT session_id, {number}, created_at FROM sessions ORDER BY created_at, session_id"
    )
    for table in ("sessions", "turns", "turn_slots"):
        op.add_column(table, sa.Column("conversation_id", _key, nullable=True))
    op.add_column("sessions", sa.Column("user_id", sa.String(128), nullable=True))
    op.execute(
        "UPDATE sessions SET conversation_id = (SELECT c.conversation_id FROM conversations c "
        "WHERE c.session_id = sessions.session_id)"
    )
    for table in ("turns", "turn_slots"):
        op.execute(
            f"UPDATE {table} SET conversation_id = (SELECT s.conversation_id FROM sessions s "
            f"WHERE s.session_id = {table}.session_id)"
        )
    op.drop_index("ix_turns_session_id_idempotency_key", table_name="turns")
    _rekey("turn_slots", ["session_id", "conversation_id", "seq", "name"], "conversations")
    _rekey("turns", ["session_id", "conversation_id", "seq"], "conversations")
    triggers = _session_triggers() if _sqlite() else []
    with _recreated("sessions") as batch:
        batch.alter_column("conversation_id", existing_type=_key, nullable=False)
    for trigger in triggers:
        op.execute(trigger)
    op.create_index(
        "ix_turns_session_id_conversation_id_idempotency_key",
        "turns",
        ["session_id", "conversation_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    if _sqlite():
        op.execute(_SQLITE_END_TRIGGER)
    elif _mariadb():
        op.execute(_MARIADB_END_TRIGGER)
    else:
        op.execute(_PG_END_FUNCTION)
        op.execute(_PG_END_TRIGGER)
    op.execute(_EXCHANGES)
    op.execute(_SLOT_VALUES)


def downgrade() -> None:
    op.execute("DROP VIEW slot_values")
    op.execute("DROP VIEW exchanges")
    if _sqlite() or _mariadb():
        op.execute("DROP TRIGGER convostore_conversation_ended")
    else:
        op.execute("DROP TRIGGER convostore_conversation_ended ON sessions")
        op.execute("DROP FUNCTION convostore_end_conversation()")
    live = "SELECT conversation_id FROM sessions"
    op.execute(f"DELETE FROM turn_slots WHERE conversation_id NOT IN ({live})")
    op.execute(f"DELETE FROM turns WHERE conversation_id NOT IN ({live})")
    op.drop_index("ix_turns_session_id_conversation_id_idempotency_key", table_name="turns")
    triggers = _session_triggers() if _sqlite() else []
    with _recreated("sessions") as batch:
        batch.drop_column("user_id")
        batch.drop_column("conversation_id")
    for trigger in triggers:
        op.execute(trigger)
    _rekey("turn_slots", ["session_id", "seq", "name"], "sessions")
    _rekey("turns", ["session_id", "seq"], "sessions")
    for table in ("turn_slots", "turns"):
        with _recreated(table) as batch:
            batch.drop_column("conversation_id")
    op.create_index(
        "ix_turns_session_id_idempotency_key",
        "turns",
        ["session_id", "idempotency_key"],
        unique=True,
    )
    op.drop_table("conversations")
    if not _sqlite():
        op.execute("DROP SEQUENCE conversation_ids")
