"""docs/scaling.md's premises: every key leads with ``session_id`` (so a conversation's rows
share a shard), and ``python -m bench sizes`` measures what the page quotes."""

from __future__ import annotations

import pytest
from sqlalchemy import ForeignKeyConstraint, PrimaryKeyConstraint
from sqlalchemy.engine import make_url

from bench.sizes import EXCHANGES, TABLES, fill, measure
from convostore._core.schema import metadata


def test_every_key_leads_with_session_id() -> None:
    """Each table's primary key, each foreign key (on both ends) and each unique index starts
    with ``session_id``, the distribution column docs/scaling.md proposes."""
    assert set(metadata.tables) == set(TABLES)
    for table in metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, PrimaryKeyConstraint):
                assert constraint.columns.keys()[0] == "session_id", table.name
            if isinstance(constraint, ForeignKeyConstraint):
                assert constraint.column_keys[0] == "session_id", table.name
                assert constraint.elements[0].column.name == "session_id", table.name
        for index in table.indexes:
            if index.unique:
                assert index.columns.keys()[0] == "session_id", index.name


@pytest.mark.postgresql
async def test_sizes_measures_every_table(url: str, backend: str) -> None:
    """A small fill through the API is measured: every table has bytes, indexes among them,
    and a turn takes a plausible few hundred bytes to a few kilobytes."""
    if backend != "postgresql":
        pytest.skip("sizes are PostgreSQL's")
    sessions = 20
    await fill(url, sessions, concurrency=4)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    sizes = await measure(dsn, sessions, sessions * EXCHANGES * 2)
    assert all(0 < sizes.indexes[name] < sizes.total[name] for name in TABLES)
    assert 100 < sizes.per_turn() < 20_000
    assert "| turns | 200 |" in sizes.table()
