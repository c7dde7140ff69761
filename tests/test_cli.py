"""The ``convostore`` command for operators: ``stats``, ``show``, ``sweep``, ``erase-user``,
``export-user``, ``search`` and ``report`` on every backend, their one-line errors, ``--help`` and
``--version``, and that ``import convostore`` loads neither click nor rich.

Data is seeded through the API with a clock set to the real time minus a few hours, because
the commands read the real clock: one session expired and not swept, one session id with an
ended conversation and a live one, and one more live session.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result
from conftest import FakeClock, MakeRepo, Sql
from sqlalchemy.engine import make_url

from convostore import ConversationTurn
from convostore._ops import report
from convostore._ops.admin import open_database
from convostore._ops.cli import cli

BIN = Path(sys.executable).parent
HOUR = 3600.0
DB_COMMANDS = {
    "stats": ["stats"],
    "show": ["show", "live-session"],
    "sweep": ["sweep"],
    "sweep --dry-run": ["sweep", "--dry-run"],
    "erase-user": ["erase-user", "u-1", "--yes"],
    "export-user": ["export-user", "u-1"],
    "sessions": ["sessions", "u-1"],
    "search": ["search", "archieven"],
    "report": ["report", "--out", "report.html"],
}
"""Every command that opens a database, with the arguments it needs."""


async def _invoke(*args: str, input: str | None = None) -> Result:
    """Run the command line in-process (click's runner) in a thread: each command runs its
    own event loop. The URL never comes from the environment, and tables are 200 columns
    wide, so that no cell wraps."""
    env = {"CONVOSTORE_DATABASE_URL": None, "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), input=input, env=env)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def _fails(result: Result, says: str) -> str:
    """The command failed as a user's mistake should: exit 1, nothing on stdout, one line on
    stderr naming the problem, no traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    assert result.stderr.startswith("convostore: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.output
    return result.stderr


async def _seed(make_repo: MakeRepo, clock: FakeClock) -> float:
    """The data the tests count (times relative to the real clock, which the commands read):

    - ``old-session``: one exchange three hours ago, expired, not swept;
    - ``live-session`` of user ``u-1``: a conversation three hours ago, then deleted (its
      transcript is kept), and a new live one a minute ago: two exchanges, the second a
      follow-up, language ``en``;
    - ``other-session``: one exchange a minute ago, no template, a slot value with markup.

    Returns the time the old ones were written (epoch seconds)."""
    earlier = time.time() - 3 * HOUR
    repo = await make_repo()
    clock.now = earlier
    await repo.add_turn(
        "old-session",
        "Welke archieven zijn er in Utrecht?",
        "Twaalf.",
        template_id="archives_in_place",
        slots={"place": "Utrecht"},
    )
    await repo.add_turn(
        "live-session",
        "Archieven in Zwolle?",
        "Vier.",
        template_id="archives_in_place",
        slots={"place": "Zwolle"},
        user_id="u-1",
    )
    assert await repo.delete("live-session")
    clock.now = time.time() - 60
    await repo.add_turn(
        "live-session",
        "Welke archieven zijn er in Utrecht?",
        "Twaalf.",
        template_id="archives_in_place",
        slots={"place": "Utrecht"},
        user_id="u-1",
    )
    state = await repo.add_turn(
        "live-session",
        "En in Enschede?",
        "Drie.",
        resolved_question="Welke archieven zijn er in Enschede?",
        template_id="archives_in_place",
        slots={"place": "Enschede"},
        user_id="u-1",
    )
    state.language = "en"
    await repo.update("live-session", state)
    await repo.add_turn("other-session", "Hallo", "Hoi", slots={"place": "<script>x</script>"})
    assert await repo.add_feedback("live-session", 2, 2, user_id="u-1")
    assert await repo.add_feedback("live-session", 4, -1, comment="Vier?", user_id="u-1")
    return earlier


async def test_stats(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """The figures, exactly, as JSON; the table shows the same; env CONVOSTORE_DATABASE_URL
    stands in for --url."""
    await _seed(make_repo, clock)
    figures = json.loads(_ok(await _invoke("stats", "--json", "--url", url)))
    size = figures.pop("database_bytes")
    assert isinstance(size, int)
    assert size > 0
    assert figures == {
        "database": url,
        "backend": make_url(url).get_backend_name(),
        "live_sessions": 2,
        "expired_sessions": 1,
        "ended_conversations": 1,
        "turns": 10,
        "languages": [
            {"language": None, "conversations": 3},
            {"language": "en", "conversations": 1},
        ],
        "templates": [
            {"template_id": "archives_in_place", "questions": 4},
            {"template_id": None, "questions": 1},
        ],
    }
    table = _ok(await _invoke("stats", "--url", url))
    for line in (
        r"live sessions\s+│\s+2 │",
        r"expired sessions waiting for the sweep\s+│\s+1 │",
        r"ended conversations \(transcripts kept\)\s+│\s+1 │",
        r"turns\s+│\s+10 │",
        r"│ \(none\)\s+│\s+3 │",
        r"│ archives_in_place\s+│\s+4 │",
        r"│ \(none\)\s+│\s+1 │",
    ):
        assert re.search(line, table), (line, table)

    runner = CliRunner()
    from_env = await asyncio.to_thread(
        runner.invoke, cli, ["stats", "--json"], env={"CONVOSTORE_DATABASE_URL": url}
    )
    assert json.loads(_ok(from_env))["live_sessions"] == 2


async def test_stats_on_an_empty_database(url: str) -> None:
    """A migrated database without sessions: zeros and empty lists."""
    figures = json.loads(_ok(await _invoke("stats", "--json", "--url", url)))
    assert (figures["live_sessions"], figures["turns"], figures["templates"]) == (0, 0, [])


async def test_show(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """The live conversation as a table of its turns; --all adds the ended one under the same
    id; --json parses and holds every turn field."""
    await _seed(make_repo, clock)
    table = _ok(await _invoke("show", "live-session", "--url", url))
    assert "(live, user u-1, language en," in table
    for text in ("Welke archieven zijn er in Utrecht?", "En in Enschede?", "Drie.", "Twaalf."):
        assert text in table
    assert "place=Enschede" in table
    assert "Zwolle" not in table  # the ended conversation needs --all

    everything = _ok(await _invoke("show", "live-session", "--all", "--url", url))
    assert "Archieven in Zwolle?" in everything
    assert re.search(r"\(ended \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, user u-1", everything)

    shown = json.loads(_ok(await _invoke("show", "live-session", "--all", "--json", "--url", url)))
    assert shown["session_id"] == "live-session"
    ended, live = shown["conversations"]
    assert (ended["live"], live["live"]) == (False, True)
    assert ended["ended_at"] is not None
    assert live["ended_at"] is None
    assert [turn["content"] for turn in live["turns"]] == [
        "Welke archieven zijn er in Utrecht?",
        "Twaalf.",
        "En in Enschede?",
        "Drie.",
    ]
    assert live["turns"][2] == {
        "role": "user",
        "content": "En in Enschede?",
        "resolved_question": "Welke archieven zijn er in Enschede?",
        "template_id": "archives_in_place",
        "slots": {"place": "Enschede"},
        "results": [],
        "created_at": live["turns"][2]["created_at"],
        "tool_name": None,
        "tool_call_id": None,
        "tool_arguments": None,
    }
    assert datetime.fromisoformat(live["turns"][2]["created_at"]).tzinfo is not None


async def test_show_names_the_tools_of_messages(
    url: str, make_repo: MakeRepo, clock: FakeClock
) -> None:
    """``show`` lists messages of every role, the tool a message names under its role, and
    --json carries the tool fields."""
    clock.now = time.time()  # the command reads the real clock
    repo = await make_repo()
    await repo.add_messages(
        "agent",
        [
            ConversationTurn(role="system", content="Wees kort."),
            ConversationTurn(role="user", content="Archieven in Utrecht?"),
            ConversationTurn(
                role="assistant",
                tool_name="search_archives",
                tool_call_id="call_1",
                tool_arguments={"city": "Utrecht"},
            ),
            ConversationTurn(role="tool", content="[]", tool_name="search_archives"),
        ],
    )
    table = _ok(await _invoke("show", "agent", "--url", url))
    assert "system" in table
    assert table.count("(search_archives)") == 2
    shown = json.loads(_ok(await _invoke("show", "agent", "--json", "--url", url)))
    turns = shown["conversations"][0]["turns"]
    assert [turn["role"] for turn in turns] == ["system", "user", "assistant", "tool"]
    assert turns[2]["tool_arguments"] == {"city": "Utrecht"}
    assert turns[2]["tool_call_id"] == "call_1"


async def test_show_expired_session(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """An expired session not yet swept is no live session; --all shows it as expired."""
    await _seed(make_repo, clock)
    _fails(await _invoke("show", "old-session", "--url", url), "no live session 'old-session'")
    shown = _ok(await _invoke("show", "old-session", "--all", "--url", url))
    assert "expired, waiting for the sweep" in shown


async def test_show_unknown_or_bad_session(url: str) -> None:
    """An unknown session id and a malformed one are one-line errors."""
    _fails(await _invoke("show", "nobody", "--url", url), "no live session 'nobody'")
    _fails(
        await _invoke("show", "nobody", "--all", "--url", url),
        "no conversation under session id 'nobody'",
    )
    _fails(await _invoke("show", "sessie-é", "--url", url), "outside printable ASCII")


async def test_sweep_and_dry_run(url: str, make_repo: MakeRepo, clock: FakeClock, sql: Sql) -> None:
    """--dry-run counts what the sweep then deletes; with the default retention of 30 days no
    transcript goes, with one hour the ended conversation and the expired one go."""
    await _seed(make_repo, clock)
    on = f"on {url} (retention 30 days)"
    assert _ok(await _invoke("sweep", "--dry-run", "--url", url)) == (
        f"would end 1 expired session and delete 0 transcripts {on}; dry run, nothing was deleted\n"
    )
    on = f"on {url} (retention 1 hour)"
    assert _ok(await _invoke("sweep", "--dry-run", "--retention", "3600", "--url", url)) == (
        f"would end 1 expired session and delete 2 transcripts {on}; dry run, nothing was deleted\n"
    )
    assert (await sql("SELECT COUNT(*) FROM conversations"))[0][0] == 4

    assert _ok(await _invoke("sweep", "--retention", "3600", "--url", url)) == (
        f"ended 1 expired session and deleted 2 transcripts {on}\n"
    )
    rows = await sql("SELECT session_id FROM conversations ORDER BY session_id")
    assert [row[0] for row in rows] == ["live-session", "other-session"]
    assert (await sql("SELECT COUNT(*) FROM sessions WHERE session_id = 'old-session'")) == [(0,)]
    assert _ok(await _invoke("sweep", "--dry-run", "--retention", "3600", "--url", url)) == (
        f"would end 0 expired sessions and delete 0 transcripts {on}; dry run, nothing was "
        "deleted\n"
    )


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["sweep", "dry-run"])
@pytest.mark.parametrize(
    ("retention", "says"),
    [
        ("inf", "transcript_retention: Input should be a finite number"),
        ("nan", "transcript_retention: Input should be a finite number"),
        ("1e12", "transcript_retention: Input should be less than or equal to 3155760000"),
    ],
)
async def test_sweep_refuses_a_retention_out_of_range(
    url: str,
    make_repo: MakeRepo,
    clock: FakeClock,
    sql: Sql,
    retention: str,
    says: str,
    dry_run: list[str],
) -> None:
    """A retention no date can be counted back by is a usage error naming the setting,
    before anything is deleted (it was an OverflowError's traceback)."""
    await _seed(make_repo, clock)
    result = await _invoke("sweep", *dry_run, "--retention", retention, "--url", url)
    assert result.exit_code == 2, (result.output, result.exception)
    assert says in result.stderr
    assert "Traceback" not in result.output
    expired = "SELECT COUNT(*) FROM sessions WHERE session_id = 'old-session'"
    assert (await sql(expired)) == [(1,)]


async def test_sweep_keeps_transcripts_by_default(
    url: str, make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """With the default retention the sweep ends the expired session and keeps its
    transcript."""
    await _seed(make_repo, clock)
    assert _ok(await _invoke("sweep", "--url", url)) == (
        f"ended 1 expired session and deleted 0 transcripts on {url} (retention 30 days)\n"
    )
    rows = await sql("SELECT ended_at FROM conversations WHERE session_id = 'old-session'")
    assert len(rows) == 1
    assert rows[0][0] is not None


async def _user_rows(sql: Sql) -> list[int]:
    """Rows of user u-1 (whose sessions are all under ``live-session``) in every table."""
    return [
        (await sql(statement))[0][0]
        for statement in (
            "SELECT COUNT(*) FROM sessions WHERE user_id = 'u-1'",
            "SELECT COUNT(*) FROM conversations WHERE user_id = 'u-1'",
            "SELECT COUNT(*) FROM turns WHERE session_id = 'live-session'",
            "SELECT COUNT(*) FROM turn_slots WHERE session_id = 'live-session'",
        )
    ]


async def test_erase_user(url: str, make_repo: MakeRepo, clock: FakeClock, sql: Sql) -> None:
    """Answering no erases nothing; --yes erases every row of the user and prints the counts
    per table; other users' rows stay."""
    await _seed(make_repo, clock)
    assert await _user_rows(sql) == [1, 2, 6, 3]
    declined = await _invoke("erase-user", "u-1", "--url", url, input="n\n")
    assert declined.exit_code == 1
    assert declined.stdout == ""
    assert declined.stderr.startswith("Erase every conversation of user 'u-1' on ")
    assert declined.stderr.endswith("[y/N]: n\nconvostore: nothing was erased\n")
    assert await _user_rows(sql) == [1, 2, 6, 3]

    erased = _ok(await _invoke("erase-user", "u-1", "--url", url, input="y\n"))
    assert f"erased user 'u-1' on {url}" in erased
    for name, count in (("sessions", 1), ("conversations", 2), ("turns", 6), ("turn_slots", 3)):
        assert re.search(rf"│ {name}\s+│\s+{count} │", erased), erased
    assert await _user_rows(sql) == [0, 0, 0, 0]
    assert (await sql("SELECT COUNT(*) FROM conversations")) == [(2,)]

    again = _ok(await _invoke("erase-user", "u-1", "--yes", "--url", url))
    assert re.search(r"│ turns\s+│\s+0 │", again)


async def test_erase_user_bad_id_asks_nothing(url: str) -> None:
    """A malformed user id is refused before the question."""
    _fails(await _invoke("erase-user", "", "--url", url), "must not be empty")


async def test_export_user(url: str, make_repo: MakeRepo, clock: FakeClock, tmp_path: Path) -> None:
    """The user's conversations as JSON on stdout, or in a file only its owner can read."""
    await _seed(make_repo, clock)
    data = json.loads(_ok(await _invoke("export-user", "u-1", "--url", url)))
    assert data["user_id"] == "u-1"
    assert [len(c["turns"]) for c in data["conversations"]] == [2, 4]
    assert [c["live"] for c in data["conversations"]] == [False, True]

    out = tmp_path / "u-1.json"
    said = _ok(await _invoke("export-user", "u-1", "-o", str(out), "--url", url))
    assert said == f"wrote 2 conversations of user 'u-1' to {out}\n"
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["conversations"] == data["conversations"]
    assert out.stat().st_mode & 0o077 == 0

    nobody = json.loads(_ok(await _invoke("export-user", "nobody", "--url", url)))
    assert nobody["conversations"] == []
    _fails(
        await _invoke("export-user", "u-1", "-o", str(tmp_path / "no" / "f.json"), "--url", url),
        "cannot write",
    )


async def test_sessions(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """The user's catalog, newest activity first, a page at a time: the table ends with the
    next page's cursor, and --json holds the summaries and the cursor."""
    await _seed(make_repo, clock)
    repo = await make_repo()
    assert await repo.set_title("live-session", "Archieven in Utrecht", user_id="u-1")
    table = _ok(await _invoke("sessions", "u-1", "--url", url))
    assert re.search(r"live-session\s+.\s+Archieven in Utrecht\s+.\s+live\s+.\s+4\b", table)
    assert re.search(r"live-session\s+.\s+.\s+ended\s+.\s+2\b", table)
    assert "next page" not in table
    first = _ok(await _invoke("sessions", "u-1", "--limit", "1", "--url", url))
    assert "Archieven in Utrecht" in first
    cursor = re.search(r"next page: --cursor (\S+)", first)
    assert cursor is not None
    rest = json.loads(
        _ok(await _invoke("sessions", "u-1", "--cursor", cursor[1], "--json", "--url", url))
    )
    assert [(c["live"], c["turns"]) for c in rest["sessions"]] == [(False, 2)]
    assert rest["next_cursor"] is None
    ended = json.loads(_ok(await _invoke("sessions", "u-1", "--ended", "--json", "--url", url)))
    assert ended["sessions"] == rest["sessions"]
    shown = _ok(await _invoke("show", "live-session", "--url", url))
    assert shown.startswith("Archieven in Utrecht\n")
    _fails(
        await _invoke("sessions", "u-1", "--cursor", "nonsense", "--url", url),
        "is not a next_cursor",
    )


async def test_search(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """A table of the turns holding every word, best first, live conversations and retained
    transcripts alike (of any owner, or of ``--user`` only), the matched words in the
    snippet; ``--limit`` bounds the rows; ``--json`` has the same hits; a limit out of range
    is a usage error."""
    await _seed(make_repo, clock)
    table = _ok(await _invoke("search", "archieven utrecht", "--url", url))
    rows = [line for line in table.splitlines() if "-session " in line]
    assert len(rows) == 2, table
    assert {row.split()[1] for row in rows} == {"old-session", "live-session"}
    assert all("Welke archieven zijn er in Utrecht" in row for row in rows), table
    assert "2 hits for 'archieven utrecht'" in table

    hits = json.loads(_ok(await _invoke("search", "archieven", "--json", "--url", url)))
    assert len(hits) == 4
    assert {(hit["session_id"], hit["role"]) for hit in hits} == {
        ("old-session", "user"),
        ("live-session", "user"),
    }
    assert all("**" in hit["snippet"].lower() for hit in hits)
    ranks = [hit["rank"] for hit in hits]
    assert ranks == sorted(ranks, reverse=True)

    mine = json.loads(
        _ok(await _invoke("search", "enschede", "--user", "u-1", "--json", "--url", url))
    )
    assert [(hit["session_id"], hit["seq"]) for hit in mine] == [("live-session", 3)]
    assert (
        json.loads(_ok(await _invoke("search", "twaalf", "--user", "u-2", "--json", "--url", url)))
        == []
    )

    one = _ok(await _invoke("search", "archieven", "--limit", "1", "--url", url))
    assert len([line for line in one.splitlines() if "-session " in line]) == 1
    result = await _invoke("search", "archieven", "--limit", "0", "--url", url)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["export", "-o"],
        ["export", "--format", "csv", "-o"],
        ["report", "-o"],
        ["export-user", "u-1", "-o"],
    ],
)
def test_a_failed_command_keeps_the_file_it_would_replace(
    command: list[str], backend: str, empty_url: str, tmp_path: Path
) -> None:
    """A URL with a typo in the database's name (here: a database without the schema) fails
    the command, and the file an earlier run wrote is still there, whole, with no temporary
    file beside it. (``export`` emptied it before connecting.)"""
    if backend == "sqlite":
        Path(empty_url.removeprefix("sqlite+aiosqlite:///")).touch()
    out = tmp_path / "earlier" / "previous.out"
    out.parent.mkdir()
    out.write_text("the previous export\n", encoding="utf-8")
    result = CliRunner().invoke(cli, [*command, str(out), "--url", empty_url])
    _fails(result, "convostore schema")
    assert out.read_text(encoding="utf-8") == "the previous export\n"
    assert [path.name for path in out.parent.iterdir()] == ["previous.out"]


EXTERNAL = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


async def test_report(url: str, make_repo: MakeRepo, clock: FakeClock, tmp_path: Path) -> None:
    """One well-formed page with a section per chart, holding an inline SVG for each viewport
    class (one drawing may serve several), the seeded figures, no scripts, no external
    resources, and the database's text escaped."""
    await _seed(make_repo, clock)
    out = tmp_path / "report.html"
    said = _ok(await _invoke("report", "--out", str(out), "--url", url))
    assert said.startswith(f"wrote {out}: ")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>\n")
    root = ElementTree.fromstring(page.removeprefix("<!DOCTYPE html>\n"))
    assert root.tag == "html"
    sections = root.findall(".//section")
    assert len(sections) == 8
    for section in sections[:-2]:
        variants = [name for svg in section.findall("svg") for name in svg.get("class", "").split()]
        assert sorted(variants) == ["l", "m", "s"]
    assert all(svg.get("viewBox") for svg in root.findall(".//svg"))
    assert "<script" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert not EXTERNAL.search(page)
    assert "@import" not in page
    assert "url(" not in page
    for heading in (
        "Conversations and exchanges per day",
        "Top templates",
        "Top slot values",
        "Follow-up rate",
        "Conversation length",
        "Load per hour of the day",
        "Feedback",
        "Messages",
    ):
        assert f"<h2>{heading}</h2>" in page
    feedback, messages = sections[-2:]
    assert [cell.text for cell in messages.findall(".//tbody/tr/td")] == [
        "assistant",
        "5",
        "0",
        "4",
        "user",
        "5",
        "0",
        "4",
    ]
    assert [cell.text for cell in feedback.findall(".//tbody/tr/td")][:5] == [
        "archives_in_place",
        "2",
        "1",
        "1",
        "+0.50",
    ]
    assert "<b>4</b><span>conversations (2 live)</span>" in page
    assert "1 of 5 questions were follow-ups" in page


async def test_report_figures(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """``report.collect`` counts the seeded data exactly, days and hours in UTC."""
    earlier = await _seed(make_repo, clock)
    async with open_database(url) as engine:
        data = await report.collect(engine)
    assert (data.conversations, data.live) == (4, 2)
    assert (data.questions, data.follow_ups) == (5, 1)
    assert data.templates == [("archives_in_place", 4, 3), (None, 1, 1)]
    assert data.lengths == {1: 3, 2: 1}
    assert data.slot_values[0] == ("place", "Utrecht", 2, 2)
    assert sorted(data.slot_values[1:]) == [
        ("place", "<script>x</script>", 1, 1),
        ("place", "Enschede", 1, 1),
        ("place", "Zwolle", 1, 1),
    ]
    then = datetime.fromtimestamp(earlier, timezone.utc)
    recent = datetime.fromtimestamp(clock.now, timezone.utc)
    assert sum(data.per_hour) == 5
    assert data.per_hour[then.hour] >= 2
    assert data.per_hour[recent.hour] >= 3
    assert data.per_day[0][0] == then.date()
    assert data.per_day[-1][0] == recent.date()
    assert sum(exchanges for _, exchanges, _ in data.per_day) == 5
    assert data.feedback_templates == [("archives_in_place", 2, 1, 1, 0.5)]
    assert data.feedback_days == [(recent.date(), 2, 1, 1)]
    assert data.roles == [("assistant", 5, 0, 4), ("user", 5, 0, 4)]


async def test_report_on_an_empty_database(url: str, tmp_path: Path) -> None:
    """With nothing stored every chart says so, still a section each."""
    out = tmp_path / "empty.html"
    _ok(await _invoke("report", "-o", str(out), "--url", url))
    page = out.read_text(encoding="utf-8")
    assert page.count("<section>") == 8
    assert "No exchanges yet" in page
    assert "No feedback yet" in page


@pytest.mark.parametrize("command", list(DB_COMMANDS))
@pytest.mark.parametrize(
    ("bad_url", "says"),
    [
        ("not a url", "is not a database URL"),
        ("postgresql://app:secret@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("mysql+aiomysql://app@db/app", "convostore supports SQLite, PostgreSQL and MariaDB"),
    ],
)
async def test_bad_url(command: str, bad_url: str, says: str) -> None:
    """A URL convostore cannot use is one line, exit 1, without the password."""
    error = _fails(await _invoke(*DB_COMMANDS[command], "--url", bad_url), says)
    assert "secret" not in error


@pytest.mark.parametrize("command", list(DB_COMMANDS))
def test_database_without_schema(command: str, backend: str, empty_url: str) -> None:
    """No schema is one line, exit 1, and nothing is created: on a server SchemaNotReady
    names `convostore migrate`; a SQLite file that does not exist is not made."""
    result = CliRunner().invoke(cli, [*DB_COMMANDS[command], "--url", empty_url])
    if backend != "sqlite":
        _fails(result, "the database has no convostore schema")
    else:
        _fails(result, "names no database file")
        assert not Path(empty_url.removeprefix("sqlite+aiosqlite:///")).exists()


LIBPQ_COMMANDS = {
    **DB_COMMANDS,
    "migrate": ["migrate"],
    "migrate current": ["migrate", "current"],
    "export": ["export"],
    "import": ["import", "nothing.jsonl"],
}
"""Every command that opens a database, migrations and transfers included."""


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)])
@pytest.mark.parametrize("command", list(LIBPQ_COMMANDS))
async def test_libpq_url_options_work_or_are_one_line_errors(
    command: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL with libpq's options, as people paste them: sslmode=require on a server without
    SSL is the server's refusal, a value asyncpg does not know names the ones it does, both
    one line (every command printed a TypeError's traceback); sslmode=disable connects."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nothing.jsonl").write_text("", encoding="utf-8")
    args = LIBPQ_COMMANDS[command]
    _fails(await _invoke(*args, "--url", f"{url}?sslmode=require"), "rejected SSL upgrade")
    _fails(await _invoke(*args, "--url", f"{url}?sslmode=on"), "sslmode must be one of disable")
    _ok(await _invoke("stats", "--url", f"{url}?sslmode=disable&connect_timeout=5"))


async def test_sqlite_file_without_schema(tmp_path: Path) -> None:
    """An existing SQLite file without the schema is SchemaNotReady, not migrated."""
    path = tmp_path / "other.db"
    path.write_bytes(b"")
    _fails(await _invoke("stats", "--url", f"sqlite+aiosqlite:///{path}"), "convostore migrate")


def test_unreachable_database() -> None:
    """A server that does not answer is one line, exit 1."""
    result = CliRunner().invoke(
        cli, ["stats", "--url", "postgresql+asyncpg://nobody@127.0.0.1:1/x"]
    )
    _fails(result, "failed")


def test_default_url_is_the_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --url and env CONVOSTORE_DATABASE_URL a command reads ./convostore.db."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["stats"], env={"CONVOSTORE_DATABASE_URL": None})
    _fails(result, "sqlite+aiosqlite:///convostore.db")


@pytest.mark.parametrize("command", [[], *([name] for name in cli.commands)])
def test_help(command: list[str]) -> None:
    """--help on the group and on each command explains it with an example."""
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    if command and command != ["demo"]:
        assert "--url URL" in result.stdout
        assert "CONVOSTORE_DATABASE_URL" in result.stdout


def test_version() -> None:
    """--version prints the installed version."""
    result = CliRunner().invoke(cli, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"convostore {version('convostore')}\n")


def test_import_loads_neither_click_nor_rich() -> None:
    """`import convostore` (and the library modules the command prints) stay free of the
    command line's dependencies, in a fresh interpreter."""
    code = (
        "import sys, convostore, convostore._ops.admin, convostore._ops.report; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


async def test_console_script(url: str, make_repo: MakeRepo, clock: FakeClock) -> None:
    """The installed `convostore` script runs the same commands."""
    await _seed(make_repo, clock)
    done = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "convostore"), "stats", "--json", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["turns"] == 10


def _run_piped(args: list[str], cwd: Path, *, read: bool) -> subprocess.CompletedProcess[str]:
    """The installed script with stdout a pipe and no COLUMNS: read to the end, or closed at
    once, before the command writes (as ``| head -0`` would)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("COLUMNS", "LINES", "CONVOSTORE_DATABASE_URL")
    }
    with subprocess.Popen(
        [str(BIN / "convostore"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        output = process.stdout.read() if read else ""
        process.stdout.close()
        errors = process.stderr.read()
        return subprocess.CompletedProcess(args, process.wait(timeout=60), output, errors)


PRINTING = {
    **DB_COMMANDS,
    "show --json": ["show", "live-session", "--json"],
    "stats --json": ["stats", "--json"],
    "export": ["export"],
    "import": ["import", "empty.jsonl"],
    "migrate current": ["migrate", "current"],
    "demo": ["demo"],
}
"""Every command that prints to stdout."""


@pytest.mark.parametrize("command", list(PRINTING))
async def test_every_command_ends_quietly_when_the_reader_leaves(
    command: str, url: str, make_repo: MakeRepo, clock: FakeClock, tmp_path: Path
) -> None:
    """``convostore ... | head``: a reader that closes the pipe ends the command with exit
    code 0 and nothing on stderr, as ``export`` did (the others exited 1)."""
    await _seed(make_repo, clock)
    await asyncio.to_thread((tmp_path / "empty.jsonl").write_text, "")
    args = PRINTING[command] + ([] if command == "demo" else ["--url", url])
    done = await asyncio.to_thread(_run_piped, args, tmp_path, read=False)
    assert (done.returncode, done.stderr) == (0, "")


async def test_tables_in_a_pipe_keep_words_whole(
    url: str, make_repo: MakeRepo, clock: FakeClock, tmp_path: Path
) -> None:
    """Printed to a pipe (no terminal, no COLUMNS), a table is as wide as its cells: no word
    is cut, each turn's text is on one line (at rich's 80 columns they wrapped mid-word)."""
    await _seed(make_repo, clock)
    shown = await asyncio.to_thread(
        _run_piped, ["show", "live-session", "--url", url], tmp_path, read=True
    )
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if "│ user " in line]
    assert len(rows) == 2, shown.stdout
    for text in ("Welke archieven zijn er in Utrecht?", "archives_in_place", "place=Utrecht"):
        assert text in rows[0], shown.stdout
    assert "Welke archieven zijn er in Enschede?" in rows[1]
    assert shown.stdout.splitlines()[0].endswith(" UTC)")  # the heading is one line too


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["export", "--user", ""], "user_id must not be empty"),
        (["export", "--user", "gebruiker-é"], "user_id 'gebruiker-é' has characters outside"),
        (["export", "--language", "x" * 33], "language must be 1 to 32 characters"),
        (["export-user", "gebruiker-é"], "user_id 'gebruiker-é' has characters outside"),
        (["erase-user", "gebruiker-é", "--yes"], "user_id 'gebruiker-é' has characters outside"),
        (["show", "s" * 129], "session id is 129 characters long"),
        (["search", "archieven", "--user", "gebruiker-é"], "user_id 'gebruiker-é' has"),
        (["search", " "], "query must hold at least one word"),
    ],
)
async def test_ids_and_filters_follow_the_librarys_rules(
    args: list[str], says: str, url: str, make_repo: MakeRepo, clock: FakeClock
) -> None:
    """An id or filter the library refuses is the same one-line error, exit 1, in every
    command (``export --user ''`` exported nothing, exit 0, while ``erase-user ''`` refused
    the id)."""
    await _seed(make_repo, clock)
    _fails(await _invoke(*args, "--url", url), says)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sweep", "--retention", "-1"], "transcript_retention: Input should be greater than"),
        (
            ["import-redis", "--redis-url", "redis://127.0.0.1:1", "--session-ttl", "0"],
            "session_ttl: Input should be greater than 0",
        ),
    ],
)
async def test_settings_follow_the_store_configs_rules(args: list[str], says: str) -> None:
    """A duration the library's ``StoreConfig`` refuses is a usage error naming the setting,
    before anything is read (``import-redis --session-ttl 0`` went on to Redis)."""
    result = await _invoke(*args, "--url", "sqlite+aiosqlite:///nowhere.db")
    assert result.exit_code == 2, (result.output, result.exception)
    assert says in result.stderr


def test_demo_leaves_no_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's SQLite file goes with its temporary folder when the demo ends (every run
    left a convostore-demo-* folder behind)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    said = _ok(CliRunner().invoke(cli, ["demo"]))
    assert f"database: sqlite+aiosqlite:///{tmp_path}/convostore-demo-" in said
    assert "resolved from the stored turns" in said
    assert list(tmp_path.iterdir()) == []


def test_demo_on_a_bad_url_says_only_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``demo --url notaurl`` fails with one line and prints nothing before it (it announced
    the schema as migrated first)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _fails(CliRunner().invoke(cli, ["demo", "--url", "notaurl"]), "is not a database URL")
    assert list(tmp_path.iterdir()) == []
