"""PostgreSQL: the change feed becomes a table, like SQLite's, instead of a NOTIFY per write

Revision ID: 0005
Revises: 0003
Create Date: 2027-01-10

0002's trigger sent ``NOTIFY convostore_changes`` on every write that moved a session's
version. A notifying transaction holds PostgreSQL's one notification lock for the whole
instance from before its commit record until the commit is done, so notifying writers commit
one at a time: 32 writers committed about half as many transactions per second as without the
NOTIFY, everyone else's writes on the server included.

The trigger (same name, ``convostore_session_changed``) now appends a row to the table
``convostore_changes`` instead (``version`` -1 for a deletion), as SQLite's triggers always
have; each worker polls the table (``convostore._core.coherence``). Its ids come from an identity
sequence that must hand them out in order (``CACHE 1``, the default): a watcher relies on an
id it has not seen below one it has belonging to a transaction still running or aborted. The
expiry sweep prunes the table. SQLite and MariaDB are unchanged (0002 gave them the table).

Downgrading drops the table and restores 0002's NOTIFY trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""0003's code listens for the NOTIFY this revision no longer sends: its caches would go stale."""

_RECORD_FUNCTION = """
CREATE FUNCTION convostore_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO convostore_changes (session_id, version) VALUES (OLD.session_id, -1);
    ELSE
        INSERT INTO convostore_changes (session_id, version) VALUES (NEW.session_id, NEW.version);
    END IF;
    RETURN NULL;
END
$$
"""
_RECORD_TRIGGER = """
CREATE TRIGGER convostore_session_changed
AFTER UPDATE OF version OR DELETE ON sessions
FOR EACH ROW EXECUTE FUNCTION convostore_record_change()
"""


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    op.execute("DROP TRIGGER convostore_session_changed ON sessions")
    op.execute("DROP FUNCTION convostore_notify_change()")
    op.create_table(
        "convostore_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True, cache=1), primary_key=True),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.execute(_RECORD_FUNCTION)
    op.execute(_RECORD_TRIGGER)


def downgrade() -> None:
    if not _postgresql():
        return
    op.execute("DROP TRIGGER convostore_session_changed ON sessions")
    op.execute("DROP FUNCTION convostore_record_change()")
    op.drop_table("convostore_changes")
    # 0002's function and trigger, as that revision creates them.
    script = op.get_context().script
    revision_0002 = script.get_revision("0002") if script is not None else None
    assert revision_0002 is not None
    op.execute(revision_0002.module._PG_FUNCTION)
    op.execute(revision_0002.module._PG_TRIGGER)
