"""messages of every role, with tool calls and the framework's own record

Revision ID: 0012
Revises: 0011
Create Date: 2027-04-01

``add_messages`` stores messages of the roles ``system`` and ``tool`` besides ``user`` and
``assistant`` (``turns.role`` is a VARCHAR(16) already, unconstrained), and four columns:

- ``turns.tool_name`` and ``turns.tool_call_id``: the tool a message calls or answers, and the
  call id that ties the two (VARCHAR(255), NULL for every other message and every turn stored
  before), columns so analysts can group and join by them;
- ``turns.tool_arguments``: a tool call's arguments, as JSON text;
- ``turns.data``: the framework's own record of the message (an OpenAI Agents SDK item, a
  LangChain message, a pydantic-ai message), as the JSON text written, so it reads back equal.

A view ``message_roles`` counts each conversation's messages by role, with its owner, the
first and last message's time and how many messages name a tool.

Downgrading drops the view and the columns; messages of the new roles stay, and older code
reads them as it reads any turn (pydantic refuses their role).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = True
"""Additions only: older code lists the columns it inserts into ``turns`` and selects by name,
so the new nullable columns stay NULL under it and out of its reads. It cannot read a message
of a new role, which only new code writes."""

_MARIADB = ("mariadb", "mysql")


class _MariaDBJSON(sa.types.UserDefinedType[object]):
    """MariaDB's JSON (a LONGTEXT checked by JSON_VALID) in the tables' collation, as
    ``turns.results`` is (0001)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "JSON COLLATE utf8mb4_nopad_bin"


_json = sa.JSON().with_variant(_MariaDBJSON(), *_MARIADB)
"""JSON text as written: ``json`` (not ``jsonb``) on PostgreSQL, like ``turns.results``."""

_MESSAGE_ROLES = """
CREATE VIEW message_roles AS
SELECT t.session_id, t.conversation_id, c.user_id, t.role, COUNT(*) AS messages,
       SUM(CASE WHEN t.tool_name IS NOT NULL THEN 1 ELSE 0 END) AS tool_messages,
       MIN(t.created_at) AS first_at, MAX(t.created_at) AS last_at
FROM turns t
JOIN conversations c ON c.session_id = t.session_id AND c.conversation_id = t.conversation_id
GROUP BY t.session_id, t.conversation_id, c.user_id, t.role
"""


def upgrade() -> None:
    op.add_column("turns", sa.Column("tool_name", sa.String(255), nullable=True))
    op.add_column("turns", sa.Column("tool_call_id", sa.String(255), nullable=True))
    op.add_column("turns", sa.Column("tool_arguments", _json, nullable=True))
    op.add_column("turns", sa.Column("data", _json, nullable=True))
    op.execute(_MESSAGE_ROLES)


def downgrade() -> None:
    op.execute("DROP VIEW message_roles")
    for name in ("data", "tool_arguments", "tool_call_id", "tool_name"):
        op.drop_column("turns", name)
