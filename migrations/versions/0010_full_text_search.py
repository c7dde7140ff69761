"""full-text search over the stored turns: questions, resolved questions and answers

Revision ID: 0010
Revises: 0009
Create Date: 2027-02-14

What ``SessionRepository.search`` reads, kept by the database itself as turns come and go:

- SQLite: the FTS5 table ``turns_search`` over ``turns.content`` and
  ``turns.resolved_question``, external content (it stores only the index and reads the text
  from ``turns`` by rowid, so no turn is stored twice), kept by triggers on ``turns``: after
  insert, after delete (a conversation's cascade fires them too), and after an update of
  those columns, which convostore never makes but raw SQL could. The tokenizer folds case
  and diacritics (``unicode61 remove_diacritics 2``). Filled from the existing turns
  (``rebuild``). A later migration that copies ``turns`` into a new table (alembic's batch
  mode on SQLite) gives its rows new rowids and must ``rebuild`` this index after the copy.
- PostgreSQL: ``turns.search_vector``, a stored generated column
  (``to_tsvector(convostore_search_config(), content || ' ' || resolved_question)``) with the
  GIN index ``ix_turns_search``. Each text counts with its first 100,000 characters (the
  default ``max_text_chars``): a ``tsvector`` holds at most 1 MB, and 200,000 characters of
  distinct words make at most about 0.96 MB, so a longer text (allowed by a larger
  ``max_text_chars``) can never make an append fail. The function
  ``convostore_search_config()`` returns the text search configuration, chosen when this
  migration runs: ``alembic -x search_config=english``, else env
  ``CONVOSTORE_SEARCH_CONFIG``, else ``simple`` (words as written, lower-cased, no stemming
  nor stop words). Searches use the same function, so the index and the queries always
  agree. Adding the column rewrites ``turns`` (filling it), holding its lock meanwhile. A
  later migration that changes the type of ``content`` or ``resolved_question`` must drop
  the column first and add it again after (PostgreSQL refuses otherwise).
- MariaDB: the InnoDB FULLTEXT index ``ix_turns_search`` on ``(content, resolved_question)``,
  built without a stop-word list (InnoDB's default list drops words such as "the" and "with";
  the list in force when the index is built stays with it). Building it fills it. Those two
  columns get the collation ``utf8mb4_unicode_520_ci`` instead of the table's
  ``utf8mb4_nopad_bin``: InnoDB matches words by the column's collation, and the binary one
  made searches case-sensitive. The stored text is unchanged; what changes is SQL comparing
  or grouping those columns (``WHERE content = ...``), which now ignores case and accents.
  No statement of convostore's compares them.

Downgrading drops all of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from alembic import context, op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with_older_code: bool = True
"""Older code names the columns it writes and reads; the index, the generated column and the
triggers keep themselves, whichever code writes the turns."""

SEARCH_CONFIG_ENV = "CONVOSTORE_SEARCH_CONFIG"
"""PostgreSQL: the text search configuration when ``-x search_config`` is not given."""

_SQLITE = (
    """
    CREATE VIRTUAL TABLE turns_search USING fts5(
        content, resolved_question,
        content='turns', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER convostore_turn_indexed AFTER INSERT ON turns BEGIN
        INSERT INTO turns_search (rowid, content, resolved_question)
        VALUES (NEW.rowid, NEW.content, NEW.resolved_question);
    END
    """,
    """
    CREATE TRIGGER convostore_turn_unindexed AFTER DELETE ON turns BEGIN
        INSERT INTO turns_search (turns_search, rowid, content, resolved_question)
        VALUES ('delete', OLD.rowid, OLD.content, OLD.resolved_question);
    END
    """,
    """
    CREATE TRIGGER convostore_turn_reindexed AFTER UPDATE OF content, resolved_question
    ON turns BEGIN
        INSERT INTO turns_search (turns_search, rowid, content, resolved_question)
        VALUES ('delete', OLD.rowid, OLD.content, OLD.resolved_question);
        INSERT INTO turns_search (rowid, content, resolved_question)
        VALUES (NEW.rowid, NEW.content, NEW.resolved_question);
    END
    """,
    "INSERT INTO turns_search (turns_search) VALUES ('rebuild')",
)
_SQLITE_TRIGGERS = (
    "convostore_turn_indexed",
    "convostore_turn_unindexed",
    "convostore_turn_reindexed",
)
_PG_FUNCTION = """
CREATE FUNCTION convostore_search_config() RETURNS regconfig
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '{config}'::regconfig $$
"""
_PG_COLUMN = """
ALTER TABLE turns ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    to_tsvector(
        convostore_search_config(),
        left(content, 100000) || ' ' || left(COALESCE(resolved_question, ''), 100000)
    )
) STORED
"""
_MARIADB_TEXT = (
    "ALTER TABLE turns MODIFY content LONGTEXT COLLATE {collation} NOT NULL, "
    "MODIFY resolved_question LONGTEXT COLLATE {collation} NULL"
)
_CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _search_config() -> str:
    """The text search configuration to index with (PostgreSQL), checked to be a name: it is
    spelled into the function's SQL, and PostgreSQL checks that it exists."""
    name = context.get_x_argument(as_dictionary=True).get("search_config")
    name = name or os.environ.get(SEARCH_CONFIG_ENV) or "simple"
    if not _CONFIG_NAME.fullmatch(name):
        raise ValueError(
            f"search_config {name!r} is not a text search configuration name "
            "(such as simple, english or pg_catalog.dutch)"
        )
    return name


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(_PG_FUNCTION.format(config=_search_config()))
        op.execute(_PG_COLUMN)
        op.execute("CREATE INDEX ix_turns_search ON turns USING gin (search_vector)")
    else:
        op.execute(_MARIADB_TEXT.format(collation="utf8mb4_unicode_520_ci"))
        op.execute("SET SESSION innodb_ft_enable_stopword = OFF")
        op.execute("CREATE FULLTEXT INDEX ix_turns_search ON turns (content, resolved_question)")
        op.execute("SET SESSION innodb_ft_enable_stopword = DEFAULT")


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for trigger in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {trigger}")
        op.execute("DROP TABLE turns_search")
    elif dialect == "postgresql":
        op.execute("DROP INDEX ix_turns_search")
        op.execute("ALTER TABLE turns DROP COLUMN search_vector")
        op.execute("DROP FUNCTION convostore_search_config()")
    else:
        op.execute("DROP INDEX ix_turns_search ON turns")
        op.execute(_MARIADB_TEXT.format(collation="utf8mb4_nopad_bin"))
