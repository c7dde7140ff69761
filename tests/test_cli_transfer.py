"""``convostore export``, ``import`` and ``import-redis``: the command line over
``convostore._ops.transfer``, on both backends (Redis: the real local one, in the tests' database,
see test_transfer.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from conftest import FakeClock, MakeRepo
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from test_cli import BIN, _fails, _invoke, _ok, _seed
from test_transfer import PREFIX, REDIS_DB, REDIS_URL, _entry, redis_client

from convostore import SessionRepository, StoreConfig
from convostore.migrate import upgrade_url

__all__ = ["redis_client"]  # the fixture, used here by name


async def _target(backend: str, empty_url: str) -> str:
    """An empty database to import into: PostgreSQL migrated by the deploy step; a new SQLite
    file the import migrates itself."""
    if backend != "sqlite":
        await upgrade_url(empty_url)
    return empty_url


async def test_export_then_import_round_trips(
    make_repo: MakeRepo, clock: FakeClock, url: str, empty_url: str, backend: str, tmp_path: Path
) -> None:
    """Every conversation goes out as a JSONL line and comes back in; a second import stores
    nothing; a malformed line is named on stderr and the rest imported."""
    await _seed(make_repo, clock)
    path = tmp_path / "out.jsonl"
    assert _ok(await _invoke("export", "--url", url, "-o", str(path))) == (
        f"wrote {path}: 4 conversations\n"
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["session_id"] for line in lines) == [
        "live-session",
        "live-session",
        "old-session",
        "other-session",
    ]
    target = await _target(backend, empty_url)
    first = _ok(await _invoke("import", str(path), "--url", target))
    assert first.startswith("imported 4 conversations (")
    again = _ok(await _invoke("import", str(path), "--url", target))
    assert again.startswith("imported 0 conversations (0 turns")
    assert "4 already stored" in again
    again_out = tmp_path / "again.jsonl"
    _ok(await _invoke("export", "--url", target, "-o", str(again_out)))
    assert sorted(again_out.read_text(encoding="utf-8").splitlines()) == sorted(lines)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(f"{{oops\n{lines[0]}\n", encoding="utf-8")
    result = await _invoke("import", str(broken), "--url", target, "--on-conflict", "replace")
    assert result.exit_code == 0, result.output
    assert "1 replaced, 1 line not imported" in result.stdout
    assert result.stderr.startswith("  line 1: ")


async def test_export_filters_and_formats(make_repo: MakeRepo, clock: FakeClock, url: str) -> None:
    """--user keeps that user's conversations; --format csv writes a turn per row to stdout."""
    await _seed(make_repo, clock)
    mine = _ok(await _invoke("export", "--url", url, "--user", "u-1")).splitlines()
    assert [json.loads(line)["user_id"] for line in mine] == ["u-1", "u-1"]
    rows = _ok(await _invoke("export", "--url", url, "--format", "csv")).splitlines()
    assert rows[0].startswith("session_id,")
    assert len(rows) == 1 + 2 + 2 + 4 + 2  # header; old; live-session ended, live; other


async def test_export_to_a_reader_that_stops_ends_quietly(make_repo: MakeRepo, url: str) -> None:
    """``convostore export -o - | head``: when the reader closes the pipe, the export stops
    with exit code 0 and nothing on stderr (it printed a "Broken pipe" failure before)."""
    repo = await make_repo()
    for number in range(150):  # about 150 kB of JSONL: more than a pipe buffers
        await repo.add_turn(f"piped-{number}", "q" * 400, "a" * 600)

    def export_into_head() -> tuple[int, bytes, bytes]:
        with subprocess.Popen(
            [str(BIN / "convostore"), "export", "--url", url, "-o", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            first = process.stdout.read(1000)
            process.stdout.close()
            errors = process.stderr.read()
            return process.wait(timeout=60), first, errors

    code, first, errors = await asyncio.to_thread(export_into_head)
    assert first.startswith(b'{"'), first[:80]  # a JSONL line began
    assert (code, errors) == (0, b"")


async def test_export_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    """An export names a database to read: a SQLite file that is not there is one line and
    exit 1, and no empty file is left behind."""
    path = tmp_path / "missing.db"
    _fails(
        await _invoke("export", "--url", f"sqlite+aiosqlite:///{path}"), "names no database file"
    )
    assert not path.exists()


async def test_import_redis_moves_the_old_stores_sessions(redis_client: Redis, url: str) -> None:
    """A well-formed entry becomes a live session with its turns; a malformed one is named
    on stderr with its reason, and the rest goes on."""
    await redis_client.set(f"{PREFIX}kept", _entry("kept"), ex=600)
    await redis_client.set(f"{PREFIX}broken", "{oops", ex=600)
    result = await _invoke(
        "import-redis", "--redis-url", REDIS_URL, "--db", str(REDIS_DB), "--url", url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "imported 1 session (1 turn); 0 already present, 0 replaced, 1 key skipped\n"
    )
    assert result.stderr.startswith(f"  {PREFIX}broken: ")
    async with SessionRepository(StoreConfig(database_url=url, cleanup_interval=0)) as repo:
        state = await repo.get("kept")
    assert state is not None
    assert [turn.content for turn in state.turns] == ["Vraag"]


def _record(session_id: str) -> bytes:
    """A well-formed line: an ended conversation without turns."""
    line = {
        "session_id": session_id,
        "conversation_id": 1,
        "started_at": "2026-11-30T10:00:00+00:00",
        "ended_at": "2026-11-30T10:05:00+00:00",
        "language": "nl",
        "turns": [],
    }
    return json.dumps(line).encode()


async def test_import_reports_every_malformed_line_and_imports_the_rest(
    backend: str, empty_url: str, tmp_path: Path
) -> None:
    """A byte order mark at the start of the file is accepted; a line in Latin-1, one with a
    byte order mark in the middle of the file, and lines that are not JSON or not a
    conversation are each named with their number and reason on stderr, and every good line
    after them is imported too. (A line that was not UTF-8 ended the import in a traceback,
    the lines before it committed.)"""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                b"\xef\xbb\xbf" + _record("bom-at-start"),
                _record("latin-1-\xe9").replace(b"latin-1-\\u00e9", b"latin-1-\xe9"),
                _record("after-latin-1"),
                b"\xef\xbb\xbf" + _record("bom-inside"),
                b"[1, 2]",
                b"{oops",
                b"",
                _record("last"),
            ]
        )
        + b"\n"
    )
    target = await _target(backend, empty_url)
    result = await _invoke("import", str(path), "--url", target)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith("imported 3 conversations (0 turns")
    assert result.stdout.endswith(", 4 lines not imported\n")
    problems = result.stderr.splitlines()
    assert [line.split(":")[0] for line in problems] == [
        "  line 2",
        "  line 4",
        "  line 5",
        "  line 6",
    ]
    assert "not UTF-8: byte 0xe9" in problems[0]
    assert "byte order mark" in problems[1]
    engine = create_async_engine(target)
    try:
        async with engine.connect() as conn:
            stored = await conn.scalars(text("SELECT session_id FROM conversations"))
            assert sorted(stored) == ["after-latin-1", "bom-at-start", "last"]
    finally:
        await engine.dispose()
