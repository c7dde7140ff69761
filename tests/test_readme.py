"""The README's promises: its analytics queries, its usage example and the command line."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FakeClock, MakeRepo, Sql

from convostore import SessionRepository, StoreConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


async def _fill(repo: SessionRepository) -> None:
    """Three conversations: Utrecht then a follow-up on Enschede; Utrecht alone; a
    question without a template."""
    one, _ = await repo.get_or_create()
    await repo.add_turn(
        one,
        "Welke archieven zijn er in Utrecht?",
        "12",
        template_id="archives_in_place",
        slots={"place": "Utrecht"},
    )
    await repo.add_turn(
        one,
        "En in Enschede?",
        "3",
        resolved_question="Welke archieven zijn er in Enschede?",
        template_id="archives_in_place",
        slots={"place": "Enschede"},
    )
    two, _ = await repo.get_or_create()
    await repo.add_turn(
        two,
        "Archieven in Utrecht?",
        "12",
        template_id="archives_in_place",
        slots={"place": "Utrecht"},
    )
    three, _ = await repo.get_or_create()
    await repo.add_turn(three, "Hallo", "Hoi")


def test_readme_has_three_analytics_queries() -> None:
    """The README shows exactly the three queries the next test runs."""
    assert len(_blocks("sql")) == 3


async def test_analytics_queries(make_repo: MakeRepo, sql: Sql) -> None:
    """Each README analytics query runs unchanged on this backend and counts right."""
    await _fill(await make_repo())
    per_template, places, lengths = [
        [tuple(row) for row in await sql(query)] for query in _blocks("sql")
    ]
    assert per_template == [("archives_in_place", 3), (None, 1)]
    assert places == [("Utrecht", 2), ("Enschede", 1)]
    assert lengths == [(1, 2, 0), (2, 1, 1)]


async def test_usage_example_runs(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's first Python example runs as written (its SQLite URL pointed at this
    test's backend)."""
    example = _blocks("python")[0].replace("sqlite+aiosqlite:///chat.db", url)
    assert "asyncio.run(main())" in example
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0), clock=FakeClock())
    async with repo:
        assert (await repo.get_stats())["cached_sessions"] == 0


@pytest.mark.parametrize("command", [["convostore"], [sys.executable, "-m", "convostore"]])
def test_demo_command(command: list[str], tmp_path: Path) -> None:
    """`convostore demo` (and `python -m convostore demo`) answers the follow-up from the
    turns stored before the restart and prints the analytics."""
    if command == ["convostore"]:
        command = [str(BIN / "convostore")]
    done = subprocess.run(
        [*command, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "resolved from the stored turns: Welke archieven zijn er in Enschede?" in done.stdout
    assert "archives_in_place: 2" in done.stdout
    assert done.stdout.count("user ") >= 2


async def test_migrate_command(empty_url: str) -> None:
    """`convostore migrate --url` prepares an empty database for a repository."""
    migrate = [str(BIN / "convostore"), "migrate", "--url", empty_url]
    done = await asyncio.to_thread(
        subprocess.run, migrate, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    async with SessionRepository(StoreConfig(database_url=empty_url, cleanup_interval=0)) as repo:
        sid, _ = await repo.get_or_create()
        assert await repo.get(sid) is not None


def test_migrate_command_reports_errors(tmp_path: Path) -> None:
    """A database that cannot be reached gives a one-line error and exit code 1."""
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [str(BIN / "convostore"), "migrate", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("convostore: schema migration failed")


def test_installed_package_ships_migrations() -> None:
    """An installed convostore migrates from scripts inside the package, not the source tree."""
    import convostore
    from convostore.migrate import script_location

    package = Path(convostore.__file__).resolve().parent
    if package == ROOT / "convostore":
        pytest.skip(
            "convostore is imported from the source tree (editable install); CI installs it"
        )
    assert script_location() == package / "_migrations"
    assert (package / "_migrations" / "env.py").is_file()
    assert list((package / "_migrations" / "versions").glob("0001_*.py"))
