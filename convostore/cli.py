"""The ``convostore`` command: ``demo`` and ``migrate``. A thin layer over library functions:
it parses arguments, prints, and sets the exit code.

``convostore migrate [--revision R] [--allow-downgrade]`` moves the schema and prints the
revision read back afterwards; ``convostore migrate current`` prints the revision;
``convostore migrate check`` exits 1 unless the schema is at head. Errors are one line on stderr
and exit code 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .config import DATABASE_URL_ENV, resolve_database_url
from .errors import ConvostoreError
from .urls import hide_password

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convostore", description="Conversation state in SQL: demo and migrations."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run a short multi-turn conversation on a new SQLite file"
    )
    demo.add_argument("--url", help="database URL to use instead of a new SQLite file")
    migrate = commands.add_parser("migrate", help="bring a database's schema to the newest version")
    migrate.add_argument(
        "--url",
        help=f"database URL (default: env {DATABASE_URL_ENV}, else sqlite+aiosqlite:///convostore.db)",
    )
    migrate.add_argument(
        "action",
        nargs="?",
        choices=("current", "check"),
        help="current: print the database's revision; check: exit 1 unless it is at head",
    )
    migrate.add_argument("--revision", help="target revision (default: head)")
    migrate.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="let --revision name a revision below the database's (drops tables and data)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "migrate" and args.action and (args.revision or args.allow_downgrade):
        parser.error(f"migrate {args.action} takes no --revision or --allow-downgrade")
    try:
        if args.command == "demo":
            from .demo import run_demo

            asyncio.run(run_demo(args.url))
        else:
            _migrate(args)
    except ConvostoreError as exc:
        print(f"convostore: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> None:
    """Run ``convostore migrate``: every action prints the revision read back from the
    database, never the one asked for."""
    from .migrate import current_revision_url, migrate_url

    url = resolve_database_url(args.url)
    if args.action is None:
        revision = args.revision or "head"
        now = asyncio.run(migrate_url(url, revision, allow_downgrade=args.allow_downgrade))
    else:
        now = asyncio.run(current_revision_url(url, require_head=args.action == "check"))
    shown = now if now.startswith("no ") else f"convostore schema at {now}"
    print(f"{shown} on {hide_password(url)}")
