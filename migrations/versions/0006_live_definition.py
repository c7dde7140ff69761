"""one meaning of live in the views, and sessions without a language

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-05

- A conversation is live while its session is: the session row exists and its expiry is in
  the future, by the database's clock. The API, ``stats``, ``report`` and ``list_sessions``
  already said so; the view ``exchanges`` called every conversation without ``ended_at``
  live, an expired one waiting for the sweep too. Its ``live`` now follows the session's
  ``expires_at``.
- A view ``conversation_status``: one row per conversation with the same ``live``, so that
  counting live and ended conversations needs no join of its own.
- ``sessions.language`` may be NULL: a session nobody tagged with a language has none (it
  used to get "nl", the original application's language). Existing rows keep their value.

Downgrading gives 0003's views back as they were, and the sessions without a language "nl",
the language 0003's code gave every session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""Older code refuses a session whose language is NULL when it writes the session fields."""

_PG_NOW = "CURRENT_TIMESTAMP"
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
"""The current UTC time as SQLite's stored timestamps spell it (to the millisecond), so that
the text comparison with ``expires_at`` is a comparison of times."""
_MARIADB_NOW = "UTC_TIMESTAMP(6)"
"""MariaDB's DATETIME holds UTC without a zone; its ``CURRENT_TIMESTAMP`` is the time in the
session's time zone, so the view compares with the UTC time instead."""

_LIVE = "s.expires_at IS NOT NULL AND s.expires_at > {now} AS live"
"""A session is live while its expiry is in the future (``expires_at`` is NULL when the outer
join found no session row: the conversation ended)."""

_EXCHANGES = """
CREATE VIEW exchanges AS
SELECT q.session_id, q.conversation_id, q.seq, c.user_id,
       q.content AS question, q.resolved_question, a.content AS answer, q.template_id,
       COALESCE(s.language, c.language) AS language, q.created_at,
       {live}
FROM turns q
JOIN conversations c ON c.session_id = q.session_id AND c.conversation_id = q.conversation_id
LEFT JOIN sessions s ON s.session_id = q.session_id AND s.conversation_id = q.conversation_id
LEFT JOIN turns a
    ON a.session_id = q.session_id AND a.conversation_id = q.conversation_id
    AND a.seq = q.seq + 1 AND a.role = 'assistant'
WHERE q.role = 'user'
"""
_CONVERSATION_STATUS = """
CREATE VIEW conversation_status AS
SELECT c.session_id, c.conversation_id, c.user_id,
       COALESCE(s.language, c.language) AS language, c.started_at, c.ended_at, s.expires_at,
       {live}
FROM conversations c
LEFT JOIN sessions s ON s.session_id = c.session_id AND s.conversation_id = c.conversation_id
"""

_0003_LIVE = "c.ended_at IS NULL AS live"
"""0003's ``live``: ``exchanges`` with it is 0003's view word for word, which the downgrade
restores."""


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _now() -> str:
    dialect = op.get_context().dialect.name
    if dialect in ("mariadb", "mysql"):
        return _MARIADB_NOW
    return _SQLITE_NOW if dialect == "sqlite" else _PG_NOW


def _with_live(view: str) -> str:
    return view.format(live=_LIVE.format(now=_now()))


def _language_nullable(nullable: bool) -> None:
    """Let ``sessions.language`` be NULL, or not. SQLite copies the table, which drops its
    triggers (whatever revisions put them there): they are read first and made again."""
    triggers: list[Any] = []
    if _sqlite():
        triggers = [
            row[0]
            for row in op.get_bind().execute(
                sa.text(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'sessions'"
                )
            )
        ]
    with op.batch_alter_table("sessions", recreate="always" if _sqlite() else "never") as batch:
        batch.alter_column("language", existing_type=sa.String(32), nullable=nullable)
    for trigger in triggers:
        op.execute(trigger)


def upgrade() -> None:
    # SQLite renames the copied sessions table into place only while no view names a table
    # that is missing meanwhile, so exchanges goes first.
    op.execute("DROP VIEW exchanges")
    _language_nullable(True)
    op.execute(_with_live(_EXCHANGES))
    op.execute(_with_live(_CONVERSATION_STATUS))


def downgrade() -> None:
    op.execute("DROP VIEW conversation_status")
    op.execute("DROP VIEW exchanges")
    op.execute("UPDATE sessions SET language = 'nl' WHERE language IS NULL")
    _language_nullable(False)
    op.execute(_EXCHANGES.format(live=_0003_LIVE))
