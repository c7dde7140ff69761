"""The ``convostore`` command, on click: ``demo`` and ``migrate``.

A thin layer over library functions: each command parses its options, calls the library and
prints what comes back. Every command that opens a database takes ``--url``, else env
``CONVOSTORE_DATABASE_URL``, else the SQLite file ``convostore.db``. A user's mistake (a bad
URL, a database without the schema) is one line on stderr and exit code 1; wrong arguments
are click's usage error, exit code 2. A new command is one decorated function on ``cli``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import IO, Any, TypeVar

import click

from .config import DATABASE_URL_ENV, DEFAULT_DATABASE_URL, resolve_database_url
from .errors import ConvostoreError
from .urls import hide_password

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A user's mistake, or a database the command cannot use: ``convostore: <message>`` as
    one line on stderr, exit code 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = " ".join(self.format_message().splitlines())
        click.echo(f"convostore: {message}", file=file, err=True)


class _Commands(click.Group):
    """A group whose commands' ``ConvostoreError`` becomes a one-line ``Failure``, never a
    traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvostoreError as exc:
            raise Failure(str(exc)) from None


def url_option(command: F) -> F:
    """``--url``, resolved as everywhere in convostore: the option, else env
    ``CONVOSTORE_DATABASE_URL``, else the SQLite file ``convostore.db``."""
    return click.option(
        "--url",
        metavar="URL",
        callback=lambda _ctx, _param, value: resolve_database_url(value),
        help=f"Database URL (default: env {DATABASE_URL_ENV}, else {DEFAULT_DATABASE_URL}).",
    )(command)


@click.group("convostore", cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convostore", message="%(prog)s %(version)s")
def cli() -> None:
    """Conversation state in SQL: the demo and migrations.

    Every command that opens a database takes --url, else env CONVOSTORE_DATABASE_URL, else
    the SQLite file convostore.db in the working directory.

    \b
    Example:
      convostore migrate --url postgresql+asyncpg://app@db/app
    """


@cli.command()
@click.option(
    "--url",
    metavar="URL",
    help="Database URL to run it on instead of a new SQLite file (it stores a conversation).",
)
def demo(url: str | None) -> None:
    """Run a short conversation that survives a restart.

    It stores a question, opens a fresh repository on the same database (as a restarted
    worker would), resolves the follow-up "En in Enschede?" from the stored turns, and prints
    the transcript and an analytics query. It runs on a new SQLite file in a temporary folder
    unless --url names a database; env CONVOSTORE_DATABASE_URL is not read, so the demo never
    writes into your database by accident.

    \b
    Example:
      convostore demo
    """
    from .demo import run_demo

    asyncio.run(run_demo(url))


@cli.command()
@click.argument("action", required=False, type=click.Choice(["current", "check"]))
@url_option
@click.option("--revision", metavar="R", help="Target revision (default: head).")
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Let --revision name a revision below the database's (drops tables and data).",
)
def migrate(action: str | None, url: str, revision: str | None, allow_downgrade: bool) -> None:
    """Bring the database's schema to the newest version (or to --revision).

    Prints the revision read back from the database afterwards. ACTION "current" only prints
    the database's revision; "check" exits 1 unless this convostore can start on it.

    \b
    Examples:
      convostore migrate --url postgresql+asyncpg://app@db/app
      convostore migrate check --url postgresql+asyncpg://app@db/app
      convostore migrate --revision 0001 --allow-downgrade --url sqlite+aiosqlite:///chat.db
    """
    from .migrate import current_revision_url, migrate_url

    if action is not None and (revision or allow_downgrade):
        raise click.UsageError(f"migrate {action} takes no --revision or --allow-downgrade")
    if action is None:
        target = revision or "head"
        now = asyncio.run(migrate_url(url, target, allow_downgrade=allow_downgrade))
    else:
        now = asyncio.run(current_revision_url(url, require_head=action == "check"))
    shown = now if now.startswith("no ") else f"convostore schema at {now}"
    click.echo(f"{shown} on {hide_password(url)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code: 0, or 1 after a one-line error. A usage
    error prints click's message and raises ``SystemExit(2)``, as argparse did."""
    args = None if argv is None else list(argv)
    try:
        code = cli.main(args=args, prog_name="convostore", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("convostore: aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0
