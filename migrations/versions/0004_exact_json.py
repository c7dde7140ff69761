"""turns.results kept as the JSON text written

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-15

- PostgreSQL: ``turns.results`` becomes ``json`` instead of ``jsonb``. JSONB normalizes what it
  stores: ``1e20`` read back as the int 100000000000000000000, ``-0.0`` as ``0.0``, and object
  keys came back in an order of its own, so a cold read differed from what the writer cached.
  ``json`` keeps the text as written. The table is rewritten (under an exclusive lock, for as
  long as copying ``turns`` takes); the results stored before keep the values JSONB gave them.
- SQLite stores JSON as text already, and so does MariaDB (its JSON is a LONGTEXT checked by
  JSON_VALID): nothing changes there.

Code of 0003 cannot run on it: its load reads ``results`` and the session's JSONB
``current_slots`` in one column of a UNION, which ``json`` and ``jsonb`` cannot share.

Downgrading turns ``results`` back into ``jsonb`` (which normalizes it again).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = False
"""0003's load cannot read ``results`` as ``json`` (see above)."""


def _results_as(type_: str) -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE turns ALTER COLUMN results TYPE {type_} USING results::{type_}")


def upgrade() -> None:
    _results_as("json")


def downgrade() -> None:
    _results_as("jsonb")
