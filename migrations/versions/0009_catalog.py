"""the catalog: titles, metadata and last activity, on sessions and on their conversations;
summaries on sessions; where a conversation was forked from, and turns a rewind or a cap
superseded

Revision ID: 0009
Revises: 0008
Create Date: 2027-03-01

- ``sessions.title``, ``sessions.metadata`` (a JSON object) and ``sessions.last_activity``
  (when the session was created or last had turns appended); each write sets the last.
- ``conversations`` gets the same three columns: NULL while its session lives, copied from
  the session row by the trigger that ends the conversation (``convostore_conversation_ended``,
  which copies ``language`` already).
- ``list_sessions`` pages a user's conversations through two indexes: live sessions by
  ``(user_id, last_activity, conversation_id)`` on ``sessions``, ended conversations by the
  same columns on ``conversations``.
- ``sessions.summary`` and ``sessions.summary_upto``: a summary of the session's turns up to
  that one (``set_summary``); NULL: none. Summaries serve the live session's windowed reads,
  so its conversation does not keep them.
- ``conversations.forked_from``, ``forked_from_conversation`` and ``forked_upto``: the
  session, conversation and last turn a fork (``fork``) copied its history from.
- ``conversations.superseded_by`` and ``superseded_reason``: a conversation holding turns
  taken out of the live conversation ``superseded_by``, by a rewind (``"rewind"``, one such
  conversation each) or by ``max_turns_per_session`` (``"cap"``, one for the live
  conversation), kept as a transcript until retention.
- ``conversation_status`` shows each conversation's ``title``, ``metadata`` and
  ``last_activity``.

Populated databases: a session's ``last_activity`` becomes its newest turn's time (its
creation if it has none); an ended conversation's likewise (its start if it has none).

Downgrading drops the columns and the indexes and gives back 0006's view and 0003's trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""Older code neither sets ``last_activity`` when it creates or appends to a session, so its
sessions would be listed out of order or not at all."""

_MARIADB = ("mariadb", "mysql")


class _MariaDBJSON(sa.types.UserDefinedType[object]):
    """MariaDB's JSON in the tables' collation, as 0001 made ``current_slots``: a load puts
    both in one JSON_OBJECT, which refuses a mix of collations."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "JSON COLLATE utf8mb4_nopad_bin"


_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), *_MARIADB)

_COLUMNS = (
    ("title", _TEXT),
    (
        "metadata",
        sa.JSON()
        .with_variant(postgresql.JSONB(), "postgresql")
        .with_variant(_MariaDBJSON(), *_MARIADB),
    ),
    ("last_activity", sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MARIADB)),
)

_COPIED = "ended_at = OLD.last_accessed, language = OLD.language"
_COPIED_NOW = (
    f"{_COPIED}, title = OLD.title, metadata = OLD.metadata, last_activity = OLD.last_activity"
)
_WHERE = "WHERE session_id = OLD.session_id AND conversation_id = OLD.conversation_id"

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION convostore_end_conversation() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE conversations SET {copied}
    {where};
    RETURN NULL;
END
$$
"""
_SQLITE_TRIGGER = """
CREATE TRIGGER convostore_conversation_ended AFTER DELETE ON sessions
BEGIN
    UPDATE conversations SET {copied}
    {where};
END
"""
_MARIADB_TRIGGER = """
CREATE TRIGGER convostore_conversation_ended AFTER DELETE ON sessions FOR EACH ROW
UPDATE conversations SET {copied}
{where}
"""

_NOW = {
    "postgresql": "CURRENT_TIMESTAMP",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "mariadb": "UTC_TIMESTAMP(6)",
}
_LIVE = "s.expires_at IS NOT NULL AND s.expires_at > {now} AS live"
_STATUS = """
CREATE VIEW conversation_status AS
SELECT c.session_id, c.conversation_id, c.user_id,
       COALESCE(s.language, c.language) AS language, c.started_at, c.ended_at, s.expires_at,
       {live}{catalog}
FROM conversations c
LEFT JOIN sessions s ON s.session_id = c.session_id AND s.conversation_id = c.conversation_id
"""
_CATALOG = """,
       COALESCE(s.title, c.title) AS title,
       COALESCE(s.metadata, c.metadata) AS metadata,
       COALESCE(s.last_activity, c.last_activity) AS last_activity,
       c.forked_from, c.forked_from_conversation, c.forked_upto,
       c.superseded_by, c.superseded_reason"""

_LAST_TURN = (
    "(SELECT MAX(t.created_at) FROM turns t WHERE t.session_id = {table}.session_id "
    "AND t.conversation_id = {table}.conversation_id)"
)


def _dialect() -> str:
    name = op.get_context().dialect.name
    return "mariadb" if name in ("mariadb", "mysql") else name


def _status(catalog: bool) -> str:
    return _STATUS.format(
        live=_LIVE.format(now=_NOW[_dialect()]), catalog=_CATALOG if catalog else ""
    )


def _end_trigger(copied: str) -> None:
    """Make ``convostore_conversation_ended`` copy ``copied`` into the ending conversation."""
    dialect = _dialect()
    if dialect == "postgresql":
        op.execute(_PG_FUNCTION.format(copied=copied, where=_WHERE))
        return
    op.execute("DROP TRIGGER convostore_conversation_ended")
    trigger = _SQLITE_TRIGGER if dialect == "sqlite" else _MARIADB_TRIGGER
    op.execute(trigger.format(copied=copied, where=_WHERE))


_LINEAGE = (
    ("forked_from", sa.String(128)),
    ("forked_from_conversation", sa.BigInteger()),
    ("forked_upto", sa.Integer()),
    ("superseded_by", sa.BigInteger()),
    ("superseded_reason", sa.String(16)),
)

_SUMMARY = (
    ("summary", _TEXT),
    ("summary_upto", sa.Integer()),
)


def upgrade() -> None:
    for table in ("sessions", "conversations"):
        for name, type_ in _COLUMNS:
            op.add_column(table, sa.Column(name, type_, nullable=True))
    for name, type_ in _SUMMARY:
        op.add_column("sessions", sa.Column(name, type_, nullable=True))
    for name, type_ in _LINEAGE:
        op.add_column("conversations", sa.Column(name, type_, nullable=True))
    op.execute(
        "UPDATE sessions SET last_activity = "
        f"COALESCE({_LAST_TURN.format(table='sessions')}, created_at)"
    )
    op.execute(
        "UPDATE conversations SET last_activity = "
        f"COALESCE({_LAST_TURN.format(table='conversations')}, started_at) "
        "WHERE ended_at IS NOT NULL"
    )
    for table in ("sessions", "conversations"):
        op.create_index(
            f"ix_{table}_user_id_last_activity_conversation_id",
            table,
            ["user_id", "last_activity", "conversation_id"],
        )
    _end_trigger(_COPIED_NOW)
    op.execute("DROP VIEW conversation_status")
    op.execute(_status(catalog=True))


def downgrade() -> None:
    op.execute("DROP VIEW conversation_status")
    op.execute(_status(catalog=False))
    _end_trigger(_COPIED)
    for name, _ in reversed(_LINEAGE):
        op.drop_column("conversations", name)
    for name, _ in reversed(_SUMMARY):
        op.drop_column("sessions", name)
    for table in ("sessions", "conversations"):
        op.drop_index(f"ix_{table}_user_id_last_activity_conversation_id", table_name=table)
        for name, _ in reversed(_COLUMNS):
            op.drop_column(table, name)
