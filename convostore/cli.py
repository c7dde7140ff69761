"""The ``convostore`` command: ``demo`` and ``migrate``. A thin layer over library functions:
it parses arguments, prints, and sets the exit code."""

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
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            asyncio.run(run_demo(args.url))
        else:
            from .migrate import upgrade_url

            url = resolve_database_url(args.url)
            asyncio.run(upgrade_url(url, args.revision))
            print(f"convostore schema at {args.revision} on {hide_password(url)}")
    except ConvostoreError as exc:
        print(f"convostore: {exc}", file=sys.stderr)
        return 1
    return 0
