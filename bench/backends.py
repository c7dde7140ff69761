"""The databases a run uses: SQLite files in a temporary folder, or PostgreSQL databases
created for the run (and dropped after it), each migrated with ``convostore.migrate``."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import asyncpg
from sqlalchemy.engine import make_url

from convostore.migrate import upgrade_url

__all__ = [
    "POSTGRES_URL_ENV",
    "BackendName",
    "Database",
    "PostgresServer",
    "Server",
    "SqliteServer",
    "open_server",
]

POSTGRES_URL_ENV = "CONVOSTORE_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BackendName = Literal["sqlite", "postgresql"]
_PREFIX = "convostore_bench_"


@dataclass(frozen=True, slots=True)
class Database:
    """A migrated database: its SQLAlchemy URL, and what the raw driver connects to."""

    backend: BackendName
    url: str
    target: str
    """The SQLite file's path, or the asyncpg DSN."""


class Server(Protocol):
    """Where a backend's databases come from."""

    name: BackendName
    label: str
    version: str

    async def database(self, tag: str) -> Database: ...

    async def drop(self, database: Database) -> None: ...

    async def close(self) -> None: ...


class SqliteServer:
    """SQLite files in a temporary folder (WAL: convostore sets it on every connection)."""

    name: BackendName = "sqlite"
    label = "SQLite"

    def __init__(self) -> None:
        self.version = sqlite3.sqlite_version
        self._folder = Path(tempfile.mkdtemp(prefix="convostore-bench-"))

    async def database(self, tag: str) -> Database:
        path = self._folder / f"{tag}.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade_url(url)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: every client of the file
        return Database("sqlite", url, str(path))

    async def drop(self, database: Database) -> None:
        _remove_database_files(Path(database.target))

    async def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


class PostgresServer:
    """Databases named ``convostore_bench_<pid>_<tag>`` on the server of ``url``."""

    name: BackendName = "postgresql"
    label = "PostgreSQL"

    def __init__(self, url: str, version: str) -> None:
        self._url = make_url(url)
        self.version = version
        self._created: list[str] = []

    @classmethod
    async def connect(cls, url: str) -> PostgresServer:
        """Check the server answers, and drop databases left by runs that died."""
        server = cls(url, "")
        admin = await server._admin()
        try:
            server.version = str(await admin.fetchval("SHOW server_version"))
            names = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", _PREFIX + "%"
            )
            for (name,) in names:
                match = re.match(rf"{_PREFIX}(\d+)_", name)
                if match and not _alive(int(match.group(1))):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        return server

    def _dsn(self, database: str | None = None) -> str:
        url = self._url.set(drivername="postgresql")
        if database is not None:
            url = url.set(database=database)
        return url.render_as_string(hide_password=False)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn())

    async def database(self, tag: str) -> Database:
        name = f"{_PREFIX}{os.getpid()}_{tag}"
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self._created.append(name)
        url = self._url.set(database=name).render_as_string(hide_password=False)
        await upgrade_url(url)
        return Database("postgresql", url, self._dsn(name))

    async def drop(self, database: Database) -> None:
        """Drop one database of this run before the run ends (to free its disk early)."""
        name = make_url(database.url).database
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        with contextlib.suppress(ValueError):
            self._created.remove(str(name))

    async def close(self) -> None:
        if not self._created:
            return
        admin = await self._admin()
        try:
            for name in self._created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        self._created.clear()


def _remove_database_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def open_server(name: BackendName) -> Server:
    """The server for a backend name; PostgreSQL's URL comes from
    ``CONVOSTORE_BENCH_POSTGRES_URL`` (default: the local server's ``test`` database)."""
    if name == "sqlite":
        return SqliteServer()
    return await PostgresServer.connect(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
