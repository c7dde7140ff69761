"""Deploy-time migrations: standalone ``alembic`` with a three-line ini (online, offline
``--sql``, and from an installed wheel), and ``convostore migrate`` with ``current``, ``check``,
``--allow-downgrade`` and its one-line errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore._ops.cli import main
from convostore.migrate import VERSION_TABLE, head_revision, script_location

ALEMBIC = Path(sys.executable).parent / "alembic"
REPO_ROOT = Path(__file__).resolve().parent.parent
OUR_TABLES = {"sessions", "turns", "turn_slots"}


def _minimal_ini(path: Path, url: str, location: str) -> Path:
    """The three-line ini the README shows, with no logging sections."""
    ini = path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {location}\nsqlalchemy.url = {url}\n")
    return ini


def _alembic(ini: Path, *args: str, pythonpath: str | None = None) -> str:
    """Run the ``alembic`` console script outside the source tree; returns stdout."""
    env = {k: v for k, v in os.environ.items() if k != "CONVOSTORE_DATABASE_URL"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [str(ALEMBIC), "-c", str(ini), *args],
        cwd=ini.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"alembic {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``convostore._ops.cli.main`` in-process: exit code, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _cli_async(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # main() runs its own event loop: call it from a thread.
    return await asyncio.to_thread(_cli, capsys, *argv)


async def test_alembic_upgrade_with_minimal_ini(empty_url: str, tmp_path: Path) -> None:
    """`alembic upgrade head` with an ini that has no logging sections migrates the database
    (fileConfig used to fail with KeyError: 'formatters')."""
    ini = _minimal_ini(tmp_path, empty_url, str(script_location()))
    await asyncio.to_thread(_alembic, ini, "upgrade", "head")
    assert await _tables(empty_url) >= OUR_TABLES | {VERSION_TABLE}


def test_alembic_offline_sql_with_minimal_ini(tmp_path: Path) -> None:
    """`alembic upgrade head --sql` prints the PostgreSQL DDL, trigger function included,
    without connecting: the URL names a server that does not exist."""
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    ini = _minimal_ini(tmp_path, url, str(script_location()))
    sql = _alembic(ini, "upgrade", "head", "--sql")
    assert "CREATE TABLE sessions" in sql
    assert "CREATE FUNCTION convostore_notify_change()" in sql
    assert "EXECUTE FUNCTION convostore_notify_change()" in sql
    assert f"UPDATE {VERSION_TABLE} SET version_num='{head_revision()}'" in sql


def test_installed_wheel_migrates_with_package_resource_ini(tmp_path: Path) -> None:
    """Slow (a wheel build, ~10 s): from the built wheel, installed apart from the source tree,
    `alembic upgrade head` with `script_location = convostore:_migrations` migrates a SQLite
    file."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO_ROOT)], check=True, timeout=120
    )
    (wheel,) = wheels.glob("convostore-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=60
    )
    database = tmp_path / "deploy.db"
    ini = _minimal_ini(tmp_path, f"sqlite+aiosqlite:///{database}", "convostore:_migrations")
    _alembic(ini, "upgrade", "head", pythonpath=str(site))
    url = f"sqlite+aiosqlite:///{database}"
    assert asyncio.run(_tables(url)) >= OUR_TABLES | {VERSION_TABLE}


async def test_migrate_prints_the_revision_read_back(
    empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`convostore migrate` (with and without --revision) prints where the schema is, and
    `current` agrees."""
    head = head_revision()
    assert await _cli_async(capsys, "migrate", "current", "--url", empty_url) == (
        0,
        f"no convostore schema on {empty_url}\n",
        "",
    )
    code, out, _ = await _cli_async(capsys, "migrate", "--revision", "0001", "--url", empty_url)
    assert (code, out) == (0, f"convostore schema at 0001 on {empty_url}\n")
    code, out, _ = await _cli_async(capsys, "migrate", "current", "--url", empty_url)
    assert (code, out) == (0, f"convostore schema at 0001 on {empty_url}\n")
    code, out, _ = await _cli_async(capsys, "migrate", "--url", empty_url)
    assert (code, out) == (0, f"convostore schema at {head} (head) on {empty_url}\n")


async def test_migrate_below_current_needs_allow_downgrade(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A revision below the database's is refused without --allow-downgrade (nothing changes),
    and with it is a real downgrade, down to base."""
    head = head_revision()
    code, out, err = await _cli_async(capsys, "migrate", "--revision", "base", "--url", url)
    assert (code, out) == (1, "")
    assert err == (
        f"convostore: the database is at {head} (head); going to 'base' is a downgrade, "
        "which needs --allow-downgrade\n"
    )
    assert await _tables(url) >= OUR_TABLES

    code, out, _ = await _cli_async(
        capsys, "migrate", "--revision", "0001", "--allow-downgrade", "--url", url
    )
    assert (code, out) == (0, f"convostore schema at 0001 on {url}\n")
    code, out, _ = await _cli_async(
        capsys, "migrate", "--revision", "base", "--allow-downgrade", "--url", url
    )
    assert (code, out) == (0, f"no convostore schema on {url}\n")
    assert not await _tables(url) & OUR_TABLES


async def test_migrate_check(empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` exits 1 with one line naming the revision until the schema is at head, then 0."""
    for setup in ((), ("--revision", "0001")):
        if setup:
            assert (await _cli_async(capsys, "migrate", *setup, "--url", empty_url))[0] == 0
        code, out, err = await _cli_async(capsys, "migrate", "check", "--url", empty_url)
        assert (code, out) == (1, "")
        assert err.startswith("convostore: the database has ")
        assert err.count("\n") == 1
    assert "schema revision 0001" in err

    await _cli_async(capsys, "migrate", "--url", empty_url)
    code, out, err = await _cli_async(capsys, "migrate", "check", "--url", empty_url)
    assert (code, out, err) == (
        0,
        f"convostore schema at {head_revision()} (head) on {empty_url}\n",
        "",
    )


async def test_migrate_unknown_revision(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown or relative revision is a one-line error with exit code 1, and changes
    nothing."""
    for revision in ("9999", "+1", "-1", "base-1"):
        code, out, err = await _cli_async(capsys, "migrate", "--revision", revision, "--url", url)
        assert (code, out) == (1, "")
        assert err.startswith(f"convostore: revision {revision!r}: ")
        assert err.count("\n") == 1
    code, out, _ = await _cli_async(capsys, "migrate", "current", "--url", url)
    assert out == f"convostore schema at {head_revision()} (head) on {url}\n"


@pytest.mark.parametrize("action", [(), ("current",), ("check",)])
@pytest.mark.parametrize(
    ("bad_url", "says"),
    [
        ("not a url", "is not a database URL"),
        ("postgresql://app:secret@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("mysql+aiomysql://app@db/app", "convostore supports SQLite, PostgreSQL and MariaDB"),
    ],
)
def test_migrate_bad_url(
    action: tuple[str, ...], bad_url: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL convostore cannot use is a one-line error with exit code 1, password hidden."""
    code, out, err = _cli(capsys, "migrate", *action, "--url", bad_url)
    assert (code, out) == (1, "")
    assert err.startswith("convostore: ")
    assert says in err
    assert "secret" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("action", ["current", "check"])
def test_migrate_action_rejects_revision_options(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`current` and `check` change nothing, so they refuse --revision and --allow-downgrade."""
    for extra in (["--revision", "0001"], ["--allow-downgrade"]):
        with pytest.raises(SystemExit) as exited:
            main(["migrate", action, *extra])
        assert exited.value.code == 2
        assert "takes no --revision" in capsys.readouterr().err


async def test_migrate_database_from_newer_convostore(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database at a revision these scripts do not know is a one-line error, not a traceback."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    finally:
        await engine.dispose()
    code, out, err = await _cli_async(capsys, "migrate", "--url", url)
    assert (code, out) == (1, "")
    assert err == (
        "convostore: the database has schema revision 0099, which this convostore does not "
        "know: it was migrated by a newer convostore\n"
    )
