"""The ``convostore`` command, on click with rich tables: ``demo``, ``migrate``, and for the
people who run convostore ``stats``, ``show``, ``sweep``, ``export``, ``import``,
``import-redis``, ``erase-user``, ``export-user``, ``search`` and ``report``.

A thin layer over library functions (``admin``, ``report``, ``migrate``, the repository): each
command parses its options, calls the library and prints what comes back. Every command that
opens a database takes ``--url``, else env ``CONVOSTORE_DATABASE_URL``, else the SQLite file
``convostore.db``, and ``--schema``, else env ``CONVOSTORE_SCHEMA`` (``StoreConfig.schema``:
where convostore's tables live beside a host's), checked before any connection. A user's
mistake (a bad URL or id, a database without the schema, an unknown session) is one line on
stderr and exit code 1; wrong arguments are click's usage error, exit code 2. Output to a pipe
whose reader leaves (``| head``) ends quietly, exit code 0. A file a command writes replaces
the old one only once complete (``files.replaced``). A new command is one decorated function on
``cli``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, TypeVar

import click
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.owners import ORDERS
from convostore._core.validation import (
    Limits,
    check_language,
    check_query,
    check_session_id,
    check_template_id,
    check_user_id,
)
from convostore._ops import admin
from convostore._ops.demo import run_demo
from convostore._ops.files import replaced
from convostore.backends._search import MARK
from convostore.backends._urls import hide_password
from convostore.config import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    ENV_PREFIX,
    StoreConfig,
    check_setting,
    encryption_keys_from_env,
    resolve_database_url,
)
from convostore.errors import ConfigError, ConvostoreError, causes
from convostore.migrate import current_revision_url, migrate_url
from convostore.models import ConversationTurn
from convostore.repository import SessionRepository

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])
SCHEMA_ENV = f"{ENV_PREFIX}SCHEMA"
T = TypeVar("T")


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
            result = super().invoke(ctx)
            sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at exit
            return result
        except Exception as exc:
            if not _reader_left(exc):
                if isinstance(exc, ConvostoreError):
                    raise Failure(str(exc)) from None
                raise
        # The program reading stdout stopped (``| head``): end quietly, as Unix tools do.
        _discard_stdout()
        return None


def _reader_left(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, writing to a pipe whose reader closed it."""
    return any(isinstance(cause, BrokenPipeError) for cause in causes(exc))


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's last flush at exit cannot fail again."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: click's test runner
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def url_option(command: F) -> F:
    """``--url``, resolved as everywhere in convostore: the option, else env
    ``CONVOSTORE_DATABASE_URL``, else the SQLite file ``convostore.db``; and ``--schema``, the
    option else env ``CONVOSTORE_SCHEMA``, checked as ``StoreConfig`` checks it."""
    with_schema = click.option(
        "--schema",
        metavar="NAME",
        envvar=SCHEMA_ENV,
        callback=setting_of("schema"),
        help=f"Where convostore's tables are (default: env {SCHEMA_ENV}, else the URL's own).",
    )(command)
    return click.option(
        "--url",
        metavar="URL",
        callback=lambda _ctx, _param, value: resolve_database_url(value),
        help=f"Database URL (default: env {DATABASE_URL_ENV}, else {DEFAULT_DATABASE_URL}).",
    )(with_schema)


def json_option(command: F) -> F:
    """``--json``: print JSON for scripts instead of tables."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
    )(command)


def checked_by(check: Callable[[str], object]) -> Callable[[click.Context, Any, Any], Any]:
    """A parameter callback that checks an id or filter with the library's rule (``check``,
    from ``validation``) before the command runs: a value the library refuses is the same
    one-line error in every command, never an empty result."""

    def callback(_ctx: click.Context, _param: Any, value: Any) -> Any:
        return None if value is None else check(value)

    return callback


def setting_of(name: str) -> Callable[[click.Context, Any, Any], Any]:
    """A parameter callback that checks a value as ``StoreConfig``'s field ``name``: a value a
    repository would refuse is a usage error (exit code 2)."""

    def callback(_ctx: click.Context, _param: Any, value: Any) -> Any:
        try:
            return check_setting(name, value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def read(url: str, schema: str | None, query: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``query`` on the migrated database at ``url``, in ``schema``
    (``admin.open_database``)."""

    async def run() -> T:
        async with admin.open_database(url, schema=schema) as engine:
            return await query(engine)

    return asyncio.run(run())


def with_repository(config: StoreConfig, call: Callable[[SessionRepository], Awaitable[T]]) -> T:
    """Run ``call`` on a repository started for this one command (see
    ``admin.command_config``), stopped afterwards."""

    async def run() -> T:
        async with SessionRepository(config) as repo:
            return await call(repo)

    return asyncio.run(run())


def write_file(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to ``path`` (see ``files.replaced``: an existing file is replaced only
    once the new one is complete); ``private``: readable by its owner only. A path that
    cannot be written is a one-line error."""
    try:
        with replaced(path, private=private) as file:
            file.write(text)
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror or exc}") from None


class _Output(Console):
    """Rich output on stdout whose closed pipe raises ``BrokenPipeError`` for the group to end
    quietly (rich's own reaction is exit code 1)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout closed it")


_UNLIMITED = 1_000_000
"""Columns of output that is no terminal: tables as wide as their longest cells."""


def console() -> Console:
    """Rich output on stdout; no syntax highlighting, as the text is data. When stdout is no
    terminal (a file, a pipe) and env COLUMNS sets no width, nothing wraps, so no word is
    cut in two and each table row stays on one line for grep."""
    out = _Output(highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = _UNLIMITED
    return out


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, non-ASCII text as it is."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _bytes(size: int) -> str:
    """``size`` bytes for people: 152.0 KiB."""
    if size < 1024:
        return f"{size} B"
    amount, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, larger
    return f"{amount:.1f} {unit}"


def _plural(number: int, noun: str) -> str:
    """``3 sessions``, ``1 session``."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _duration(seconds: float) -> str:
    """``30 days``, ``1 hour``, ``90 seconds``."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return _plural(int(seconds // size), unit)
    return f"{seconds:g} seconds"


def _when(moment: datetime | None) -> str:
    """A UTC timestamp to the second, or nothing."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


@click.group("convostore", cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convostore", message="%(prog)s %(version)s")
def cli() -> None:
    """Conversation state in SQL: the demo, migrations, and tools for operators.

    Every command that opens a database takes --url, else env CONVOSTORE_DATABASE_URL, else
    the SQLite file convostore.db in the working directory, and --schema, else env
    CONVOSTORE_SCHEMA, where convostore's tables live beside a host's (PostgreSQL: a schema;
    MariaDB: a database on the same server).

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
    the transcript and an analytics query. It runs on a new SQLite file in a temporary folder,
    removed at the end, unless --url names a database; env CONVOSTORE_DATABASE_URL is not
    read, so the demo never writes into your database by accident.

    \b
    Example:
      convostore demo
    """
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
def migrate(
    action: str | None, url: str, schema: str | None, revision: str | None, allow_downgrade: bool
) -> None:
    """Bring the database's schema to the newest version (or to --revision).

    Prints the revision read back from the database afterwards. ACTION "current" only prints
    the database's revision; "check" exits 1 unless this convostore can start on it.

    \b
    Examples:
      convostore migrate --url postgresql+asyncpg://app@db/app
      convostore migrate check --url postgresql+asyncpg://app@db/app
      convostore migrate --revision 0001 --allow-downgrade --url sqlite+aiosqlite:///chat.db
      convostore migrate --schema convostore --url postgresql+asyncpg://app@db/app
    """
    if action is not None and (revision or allow_downgrade):
        raise click.UsageError(f"migrate {action} takes no --revision or --allow-downgrade")
    if action is None:
        target = revision or "head"
        now = asyncio.run(migrate_url(url, target, allow_downgrade=allow_downgrade, schema=schema))
    else:
        now = asyncio.run(current_revision_url(url, require_head=action == "check", schema=schema))
    shown = now if now.startswith("no ") else f"convostore schema at {now}"
    where = "" if schema is None else f" in schema {schema}"
    click.echo(f"{shown}{where} on {hide_password(url)}")


@cli.command()
@url_option
@json_option
def stats(url: str, schema: str | None, as_json: bool) -> None:
    """How much the database holds.

    Live sessions, expired sessions waiting for the sweep, ended conversations whose
    transcripts are kept, turns, conversations per language, questions per template, and
    the database's size as the backend reports it.

    \b
    Examples:
      convostore stats --url postgresql+asyncpg://app@db/app
      convostore stats --json
    """
    numbers = read(url, schema, admin.stats)
    if as_json:
        print_json({"database": hide_password(url), **numbers.as_json()})
        return
    size = "size unknown" if numbers.database_bytes is None else _bytes(numbers.database_bytes)
    out = console()
    out.print(Text(f"{hide_password(url)} ({numbers.backend}, {size})"))
    totals = Table(
        "", Column("count", justify="right"), title="Sessions and turns", title_justify="left"
    )
    totals.add_row("live sessions", f"{numbers.live_sessions:,}")
    totals.add_row("expired sessions waiting for the sweep", f"{numbers.expired_sessions:,}")
    totals.add_row("ended conversations (transcripts kept)", f"{numbers.ended_conversations:,}")
    totals.add_row("turns", f"{numbers.turns:,}")
    out.print(totals)
    for title, header, counts in (
        ("Conversations per language", ("language", "conversations"), numbers.languages),
        ("Questions per template", ("template", "questions"), numbers.templates),
    ):
        name_header, count_header = header
        table = Table(
            name_header, Column(count_header, justify="right"), title=title, title_justify="left"
        )
        for name, count in counts:
            table.add_row(Text("(none)" if name is None else name), f"{count:,}")
        out.print(table)


@cli.command()
@click.argument("session_id", callback=checked_by(check_session_id))
@url_option
@click.option(
    "--all",
    "include_ended",
    is_flag=True,
    help="Also show the ended conversations kept under this id (oldest first).",
)
@json_option
def show(session_id: str, url: str, schema: str | None, include_ended: bool, as_json: bool) -> None:
    """Print a session's conversation as a transcript.

    One row per turn: time (UTC), role, content, resolved question, template and slots.
    Reading it does not keep the session alive. A session id with no live conversation
    (with --all: no conversation at all) is an error, exit code 1.

    \b
    Examples:
      convostore show 3q2T1xvJ0rNW --url postgresql+asyncpg://app@db/app
      convostore show 3q2T1xvJ0rNW --all --json
    """
    keys = encryption_keys_from_env()
    found = read(
        url,
        schema,
        lambda engine: admin.transcripts(
            engine, session_id, include_ended=include_ended, encryption_keys=keys
        ),
    )
    if not found:
        raise Failure(
            f"no conversation under session id {session_id!r}"
            if include_ended
            else f"no live session {session_id!r} (--all shows ended conversations too)"
        )
    if as_json:
        print_json({"session_id": session_id, "conversations": [t.as_json() for t in found]})
        return
    out = console()
    for transcript in found:
        if transcript.live:
            state = "live"
        elif transcript.ended_at is not None:
            state = f"ended {_when(transcript.ended_at)} UTC"
        else:
            state = "expired, waiting for the sweep"
        owner = f"user {transcript.user_id}" if transcript.user_id else "no user"
        if transcript.title is not None:
            out.print(Text(transcript.title, style="bold"))
        out.print(
            Text(
                f"session {transcript.session_id}, conversation {transcript.conversation_id} "
                f"({state}, {owner}, language {transcript.language or '(none)'}, "
                f"started {_when(transcript.started_at)} UTC)"
            )
        )
        out.print(_turns_table(transcript.turns))


def _turns_table(turns: Sequence[ConversationTurn]) -> Table:
    """One row per turn, each slot a line, the tool a message names under its role; the time
    column shows the date only where it changes. Long cells wrap, so a narrow terminal gets
    a taller table, never a cut one."""
    table = Table(
        Column("time", no_wrap=True),
        "role",
        *(
            Column(header, overflow="fold")
            for header in ("content", "resolved question", "template", "slots")
        ),
    )
    day = None
    for turn in turns:
        stamp = turn.created_at
        if stamp is None:
            time = ""
        elif stamp.date() == day:
            time = stamp.strftime("%H:%M:%S")
        else:
            time, day = stamp.strftime("%Y-%m-%d\n%H:%M:%S"), stamp.date()
        slots = "\n".join(f"{name}={value}" for name, value in turn.slots.items())
        table.add_row(
            time,
            turn.role if turn.tool_name is None else f"{turn.role}\n({turn.tool_name})",
            Text(turn.content),
            Text(turn.resolved_question or ""),
            Text(turn.template_id or ""),
            Text(slots),
        )
    return table


_RETENTION = float(StoreConfig.model_fields["transcript_retention"].default)


@cli.command()
@url_option
@click.option(
    "--retention",
    type=float,
    default=_RETENTION,
    callback=setting_of("transcript_retention"),
    metavar="SECONDS",
    help=(
        "Transcript retention: ended conversations whose last activity is older go. Give "
        f"the transcript_retention your workers use (default: {_RETENTION:.0f}, "
        f"{_duration(_RETENTION)})."
    ),
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
def sweep(url: str, schema: str | None, retention: float, dry_run: bool) -> None:
    """Run the expiry sweep now.

    Deletes the expired sessions (their conversations end and are kept as transcripts),
    then the transcripts older than the retention, in short batches, as the workers'
    background sweep does. --dry-run counts both without deleting.

    \b
    Examples:
      convostore sweep --url postgresql+asyncpg://app@db/app
      convostore sweep --dry-run --retention 604800
    """
    config = admin.command_config(url, transcript_retention=retention, schema=schema)
    on = f"on {hide_password(url)} (retention {_duration(retention)})"
    if dry_run:
        ending, deleting = read(
            url, schema, lambda engine: admin.sweep_preview(engine, retention=retention)
        )
        click.echo(
            f"would end {_plural(ending, 'expired session')} and delete "
            f"{_plural(deleting, 'transcript')} {on}; dry run, nothing was deleted"
        )
        return

    async def run_sweep(repo: SessionRepository) -> dict[str, int]:
        await repo.sweep_expired()
        return await repo.get_stats()

    counts = with_repository(config, run_sweep)
    click.echo(
        f"ended {_plural(counts['sessions_expired'], 'expired session')} and deleted "
        f"{_plural(counts['transcripts_deleted'], 'transcript')} {on}"
    )


@cli.command("erase-user")
@click.argument("user_id", callback=checked_by(check_user_id))
@url_option
@click.option("--yes", "-y", is_flag=True, help="Erase without asking first.")
def erase_user(user_id: str, url: str, schema: str | None, yes: bool) -> None:
    """Delete every row of a user (right to erasure).

    Live sessions, retained transcripts, their turns and slots, in batches; prints the rows
    deleted per table. Asks first unless --yes. Block the user before, so that no new
    session of theirs starts while it runs.

    \b
    Example:
      convostore erase-user u-17 --yes --url postgresql+asyncpg://app@db/app
    """
    config = admin.command_config(url, schema=schema)
    question = f"Erase every conversation of user {user_id!r} on {hide_password(url)} for good?"
    if not yes and not click.confirm(question, err=True):
        raise Failure("nothing was erased")
    counts = with_repository(config, lambda repo: repo.erase_user(user_id))
    out = console()
    out.print(Text(f"erased user {user_id!r} on {hide_password(url)}"))
    table = Table("table", Column("rows deleted", justify="right"))
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    out.print(table)


@cli.command()
@click.argument("user_id", callback=checked_by(check_user_id))
@url_option
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Per page."
)
@click.option("--cursor", metavar="C", help="The next page's cursor, as the last page printed it.")
@click.option(
    "--order",
    type=click.Choice(ORDERS),
    default="last_activity",
    show_default=True,
    help="Newest activity first, or newest start first.",
)
@click.option("--live/--ended", default=None, help="Only live sessions, or only ended ones.")
@json_option
def sessions(
    user_id: str,
    url: str,
    schema: str | None,
    limit: int,
    cursor: str | None,
    order: str,
    live: bool | None,
    as_json: bool,
) -> None:
    """List a user's conversations, a page at a time (the catalog).

    One row per conversation: its session, title, state, turns and last activity, newest
    first; then the cursor of the next page, if there is one.

    \b
    Examples:
      convostore sessions u-17 --url postgresql+asyncpg://app@db/app
      convostore sessions u-17 --ended --json
    """
    config = admin.command_config(url, schema=schema)
    page = with_repository(
        config,
        lambda repo: repo.list_sessions(
            user_id, limit=limit, cursor=cursor, order=order, live=live
        ),
    )
    if as_json:
        print_json(
            {
                "user_id": user_id,
                "sessions": [summary.model_dump(mode="json") for summary in page],
                "next_cursor": page.next_cursor,
            }
        )
        return
    table = Table(
        "conversation",
        "session",
        Column("title", overflow="fold"),
        "state",
        Column("turns", justify="right"),
        Column("last activity (UTC)", no_wrap=True),
    )
    for summary in page:
        table.add_row(
            str(summary.conversation_id),
            summary.session_id,
            Text(summary.title or ""),
            "live" if summary.live else "ended",
            f"{summary.turns:,}",
            _when(summary.last_activity),
        )
    out = console()
    out.print(table)
    if page.next_cursor is not None:
        out.print(Text(f"next page: --cursor {page.next_cursor}"))


@cli.command()
@click.argument("query")
@click.option(
    "--user",
    "user_id",
    metavar="U",
    callback=checked_by(check_user_id),
    help="Only the conversations of user U.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="How many hits to print, best first.",
)
@url_option
@json_option
def search(
    query: str, user_id: str | None, limit: int, url: str, schema: str | None, as_json: bool
) -> None:
    """Find the stored turns that hold every word of QUERY.

    Searches the questions, resolved questions and answers of every conversation, live and
    retained. QUERY is plain words: quotes, *, - and AND are not operators. One row per
    turn, best first: session, conversation, seq, rank and a snippet with the words in bold.

    \b
    Examples:
      convostore search "archives Utrecht" --url postgresql+asyncpg://app@db/app
      convostore search invoice --user u-17 --limit 5 --json
    """
    config = admin.command_config(url, schema=schema)
    words = check_query(query, Limits(config.max_text_chars, config.max_results_bytes))
    page = with_repository(config, lambda repo: repo.search(words, user_id=user_id, limit=limit))
    if as_json:
        print_json([hit.model_dump() for hit in page.hits])
        return
    table = Table(
        "session",
        Column("conversation", justify="right"),
        Column("seq", justify="right"),
        Column("rank", justify="right"),
        Column("snippet", overflow="fold"),
    )
    for hit in page.hits:
        table.add_row(
            Text(hit.session_id),
            str(hit.conversation_id),
            str(hit.seq),
            f"{hit.rank:.4g}",
            _marked(hit.snippet),
        )
    out = console()
    out.print(table)
    out.print(Text(f"{_plural(len(page.hits), 'hit')} for {query!r}"))


def _marked(snippet: str) -> Text:
    """A snippet with the words between ``MARK``s in bold, the marks left out."""
    text = Text()
    for index, part in enumerate(snippet.split(MARK)):
        text.append(part, style="bold" if index % 2 else None)
    return text


@cli.command("export-user")
@click.argument("user_id", callback=checked_by(check_user_id))
@url_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the JSON to FILE (readable by you only) instead of stdout.",
)
def export_user(user_id: str, url: str, schema: str | None, output: Path | None) -> None:
    """Print everything stored about a user as JSON (right of access).

    Every conversation of the user, live and retained, with turns, slots, results and
    timestamps. A user with no data gets an empty list of conversations.

    \b
    Examples:
      convostore export-user u-17 --url postgresql+asyncpg://app@db/app
      convostore export-user u-17 -o u-17.json
    """
    config = admin.command_config(url, schema=schema)
    data = with_repository(config, lambda repo: repo.export_user(user_id))
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
        return
    write_file(output, text + "\n", private=True)
    conversations = _plural(len(data["conversations"]), "conversation")
    click.echo(f"wrote {conversations} of user {user_id!r} to {output}")


@cli.command()
@url_option
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    metavar="FILE",
    help="Where to write the HTML page.",
)
def report(url: str, schema: str | None, out: Path) -> None:
    """Write a usage report as one self-contained HTML page.

    Charts of conversations and exchanges per day, top templates, the follow-up rate,
    conversation lengths, top slot values and the load per hour, over live conversations
    and retained transcripts. The page has no scripts and loads nothing from elsewhere:
    open it in a browser, mail it or archive it.

    \b
    Example:
      convostore report --out report.html --url postgresql+asyncpg://app@db/app
    """
    from convostore._ops import report as usage

    with Console(stderr=True).status("reading the figures"):
        data = read(url, schema, usage.collect)
    write_file(out, usage.render(data, hide_password(url)))
    days = len(data.per_day)
    questions = _plural(data.questions, "question")
    click.echo(f"wrote {out}: {_plural(days, 'day')} of exchanges, {questions}")


def _utc_option(name: str, text: str) -> Callable[[F], F]:
    """A date option (``2026-11-30`` or ``2026-11-30T14:00``), taken as UTC."""

    def utc(_ctx: click.Context, _param: click.Parameter, value: datetime | None) -> Any:
        return None if value is None else value.replace(tzinfo=timezone.utc)

    return click.option(
        name,
        type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
        callback=utc,
        help=text,
    )


@contextmanager
def _progress(what: str, shown: bool) -> Iterator[Callable[[int], None]]:
    """A count of ``what`` done so far, on stderr while it is a terminal; else nothing."""
    if not shown:
        yield lambda _done: None
        return
    columns = (TextColumn(f"{what}: {{task.completed:,.0f}}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done: bar.update(task, completed=done)


@cli.command()
@url_option
@click.option(
    "--format",
    "kind",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: a conversation per line with its turns; csv: a turn per row.",
)
@click.option(
    "-o",
    "--out",
    default="-",
    metavar="FILE",
    help="Where to write; - (the default) is stdout.",
)
@_utc_option("--since", "Only conversations started at or after this time (UTC).")
@_utc_option("--until", "Only conversations started before this time (UTC).")
@click.option(
    "--template",
    metavar="ID",
    callback=checked_by(check_template_id),
    help="Only conversations with a question of it.",
)
@click.option(
    "--language",
    metavar="LANG",
    callback=checked_by(check_language),
    help="Only conversations in this language.",
)
@click.option(
    "--user",
    metavar="USER_ID",
    callback=checked_by(check_user_id),
    help="Only this user's conversations.",
)
def export(
    url: str,
    schema: str | None,
    kind: Literal["jsonl", "csv"],
    out: str,
    since: datetime | None,
    until: datetime | None,
    template: str | None,
    language: str | None,
    user: str | None,
) -> None:
    """Export conversations, live and retained, streaming in constant memory.

    \b
    Examples:
      convostore export -o transcripts.jsonl --since 2026-11-01
      convostore export --format csv --template archives_in_place -o - | head
    """
    from convostore._ops.transfer import export_conversations

    admin.command_config(url, schema=schema)  # a URL or schema it cannot use, a missing file
    keys = encryption_keys_from_env()

    def write_to(file: TextIO, shown: bool) -> int:
        with _progress("conversations exported", shown) as progress:
            return asyncio.run(
                export_conversations(
                    url,
                    file,
                    format=kind,
                    since=since,
                    until=until,
                    template=template,
                    language=language,
                    user=user,
                    progress=progress,
                    schema=schema,
                    encryption_keys=keys,
                )
            )

    if out == "-":
        write_to(sys.stdout, shown=False)
        return
    try:
        with replaced(out, newline="") as file:
            written = write_to(file, shown=Console(stderr=True).is_terminal)
    except OSError as exc:
        raise Failure(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out}: {_plural(written, 'conversation')}")


def _list_on_stderr(items: Sequence[tuple[str, str]]) -> None:
    """What was not imported and why, a line each on stderr: every one, so that a script
    can find them all."""
    for where, reason in items:
        click.echo(f"  {where}: {reason}", err=True)


@cli.command("import")
@click.argument("file", type=click.File("rb"))
@url_option
@click.option(
    "--on-conflict",
    type=click.Choice(["skip", "replace"]),
    default="skip",
    show_default=True,
    help="A conversation already stored (same session id and start): keep it, or replace it.",
)
def import_(
    file: BinaryIO, url: str, schema: str | None, on_conflict: Literal["skip", "replace"]
) -> None:
    """Import conversations from a JSONL export (- reads stdin). Importing a file twice
    changes nothing.

    The file is UTF-8 (a byte order mark at its start is accepted). A line that is not
    UTF-8, not JSON or not a conversation is reported on stderr with its number and passed
    over; the rest is imported.

    \b
    Example:
      convostore import transcripts.jsonl --url postgresql+asyncpg://app@db/app
    """
    from convostore._ops.transfer import import_conversations

    keys = encryption_keys_from_env()
    with _progress("lines read", Console(stderr=True).is_terminal) as progress:
        counts = asyncio.run(
            import_conversations(
                url,
                file,
                on_conflict=on_conflict,
                progress=progress,
                schema=schema,
                encryption_keys=keys,
            )
        )
    click.echo(
        f"imported {_plural(counts.conversations, 'conversation')} "
        f"({_plural(counts.turns, 'turn')}, {_plural(counts.sessions, 'live session')}); "
        f"{counts.skipped} already stored, {counts.replaced} replaced, "
        f"{_plural(len(counts.problems), 'line')} not imported"
    )
    _list_on_stderr([(f"line {problem.line}", problem.reason) for problem in counts.problems])


@cli.command("import-redis")
@click.option("--redis-url", required=True, metavar="URL", help="The old store's Redis.")
@url_option
@click.option("--prefix", default="heritage:session:", show_default=True, help="The keys' prefix.")
@click.option(
    "--db", type=click.IntRange(min=0), default=1, show_default=True, help="The Redis database."
)
@click.option(
    "--session-ttl",
    type=float,
    default=1800,
    callback=setting_of("session_ttl"),
    show_default=True,
    help="Seconds of life for an entry whose key has no TTL.",
)
@click.option(
    "--on-conflict",
    type=click.Choice(["skip", "replace"]),
    default="skip",
    show_default=True,
    help="A session id already live here: keep it, or end it and import the entry.",
)
def import_redis_command(
    redis_url: str,
    url: str,
    schema: str | None,
    prefix: str,
    db: int,
    session_ttl: float,
    on_conflict: Literal["skip", "replace"],
) -> None:
    """Move sessions over from the original SessionManager's Redis store, each keeping its
    remaining TTL. Malformed entries are reported and passed over. Needs the `redis` extra.

    \b
    Example:
      convostore import-redis --redis-url redis://cache:6379 --db 1 --url sqlite+aiosqlite:///chat.db
    """
    from convostore._ops.redis_import import import_redis

    keys = encryption_keys_from_env()
    with _progress("keys read", Console(stderr=True).is_terminal) as progress:
        done = asyncio.run(
            import_redis(
                url,
                redis_url,
                prefix=prefix,
                db=db,
                session_ttl=session_ttl,
                on_conflict=on_conflict,
                progress=progress,
                schema=schema,
                encryption_keys=keys,
            )
        )
    click.echo(
        f"imported {_plural(done.imported, 'session')} ({_plural(done.turns, 'turn')}); "
        f"{done.already_present} already present, {done.replaced} replaced, "
        f"{_plural(len(done.skipped), 'key')} skipped"
    )
    _list_on_stderr([(skipped.key, skipped.reason) for skipped in done.skipped])


@cli.command()
@url_option
@click.option(
    "--batch-size",
    type=int,
    default=None,
    callback=setting_of("sweep_batch_size"),
    metavar="TURNS",
    help="Turns re-encrypted per transaction (default: 500).",
)
def rekey(url: str, schema: str | None, batch_size: int) -> None:
    """Re-encrypt every turn with the first encryption key.

    The keys come from env CONVOSTORE_ENCRYPTION_KEYS (comma-separated, the new key first,
    the old ones after it), as the workers read them. Turns under an older key, and turns
    stored in plaintext before encryption was turned on, are encrypted with the first key,
    in batches of one transaction each; workers may keep running. Run it again after an
    interruption: it goes on where it stopped. Once it finds nothing left to do, the old keys
    can be removed.

    \b
    Example:
      CONVOSTORE_ENCRYPTION_KEYS="$NEW_KEY,$OLD_KEY" convostore rekey --url postgresql+asyncpg://app@db/app
    """
    from convostore._ops.rekey import rekey as rekey_turns

    admin.command_config(url, schema=schema)  # a URL or schema it cannot use, a missing file
    keys = encryption_keys_from_env()
    with _progress("turns re-encrypted", Console(stderr=True).is_terminal) as progress:
        counts = asyncio.run(
            rekey_turns(url, keys, batch_size=batch_size, schema=schema, progress=progress)
        )
    click.echo(
        f"re-encrypted {_plural(counts.rekeyed, 'turn')} ({counts.from_plaintext} of them "
        f"plaintext) with key id {counts.key_id} in {_plural(counts.batches, 'transaction')} on "
        f"{hide_password(url)}"
    )


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
