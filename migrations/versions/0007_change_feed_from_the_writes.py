"""PostgreSQL: a write records its change-feed row itself; the trigger records deletions only

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-24

0005's row trigger ``convostore_session_changed`` inserted a row into ``convostore_changes``
after every write that moved a session's version. Its call (an after-trigger event queued
per row, then a plpgsql function running an insert of its own) made each append dearer:
writers on one server committed about 5 to 11 % fewer appends a second than without it
(``python -m bench --only coherence_writers``). convostore's writes that move a version now
insert that row from the same statement (a data-modifying CTE: same row, same transaction,
same table), so the trigger fires on ``DELETE`` only: deletions are rare, and a sweep or a
host application's delete must still be recorded. SQLite and MariaDB are unchanged: their
triggers record every write (MariaDB has no data-modifying CTE to fold the row into the write,
and its trigger costs less than a second statement from the library).

Downgrading gives the trigger its updates back.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""Older code's writes count on the trigger to record them: with it gone, other workers'
caches would keep a session those writes changed."""

_TRIGGER = """
CREATE TRIGGER convostore_session_changed
AFTER {events} ON sessions
FOR EACH ROW EXECUTE FUNCTION convostore_record_change()
"""


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _trigger_on(events: str) -> None:
    op.execute("DROP TRIGGER convostore_session_changed ON sessions")
    op.execute(_TRIGGER.format(events=events))


def upgrade() -> None:
    if _postgresql():
        _trigger_on("DELETE")


def downgrade() -> None:
    if _postgresql():
        _trigger_on("UPDATE OF version OR DELETE")
