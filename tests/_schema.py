"""Reading a database's schema for comparisons: alembic's drift against
``convostore._core.schema.metadata``, and a fingerprint of everything the migrations create (tables,
keys, indexes, views, triggers), so that two databases that should have the same schema can be
compared whole, including the triggers alembic's comparison does not look at."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from convostore._core.schema import compared, metadata
from convostore.migrate import VERSION_TABLE


def drift(conn: Connection) -> list[Any]:
    """alembic's autogenerate differences between the database and ``schema.metadata``."""
    context = MigrationContext.configure(
        conn,
        opts={"compare_type": True, "version_table": VERSION_TABLE, "include_name": compared},
    )
    return list(compare_metadata(context, metadata))


def _triggers(conn: Connection) -> list[tuple[str, ...]]:
    """Every trigger: SQLite's with its SQL, PostgreSQL's with its definition; and on
    PostgreSQL the trigger functions too."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
        )
        return sorted(tuple(row) for row in rows)
    rows = conn.execute(
        text(
            "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"
        )
    )
    functions = conn.execute(
        text(
            "SELECT proname, 'function', pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        )
    )
    return sorted(tuple(row) for row in [*rows, *functions])


def fingerprint(conn: Connection) -> dict[str, Any]:
    """The schema as comparable data: per table its columns (in order, with type, nullability
    and default), primary key, foreign keys, indexes and unique constraints; the views with
    their definitions; the triggers."""
    inspector = inspect(conn)
    tables: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        columns = [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"))
            for c in inspector.get_columns(table)
        ]
        foreign_keys = sorted(
            (
                fk["name"],
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
                tuple(sorted((fk.get("options") or {}).items())),
            )
            for fk in inspector.get_foreign_keys(table)
        )
        indexes = sorted(
            (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
            for ix in inspector.get_indexes(table)
        )
        uniques = sorted(
            (uq["name"], tuple(uq["column_names"]))
            for uq in inspector.get_unique_constraints(table)
        )
        tables[table] = {
            "columns": columns,
            "primary_key": inspector.get_pk_constraint(table),
            "foreign_keys": foreign_keys,
            "indexes": indexes,
            "uniques": uniques,
        }
    views = {
        view: " ".join(str(inspector.get_view_definition(view)).split())
        for view in sorted(inspector.get_view_names())
    }
    return {"tables": tables, "views": views, "triggers": _triggers(conn)}
