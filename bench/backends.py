"""The databases a run uses: SQLite files in a temporary folder, or PostgreSQL or MariaDB
databases created for the run (and dropped after it), each migrated with
``convostore.migrate``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import asyncmy
import asyncpg
from sqlalchemy.dialects.mysql import asyncmy as mysql_asyncmy
from sqlalchemy.engine import URL, make_url

from convostore.migrate import upgrade_url

__all__ = [
    "BACKENDS",
    "MARIADB_URL_ENV",
    "POSTGRES_URL_ENV",
    "BackendName",
    "Database",
    "MariaDBServer",
    "PostgresServer",
    "Server",
    "SqliteServer",
    "mariadb_connect_args",
    "open_server",
]

POSTGRES_URL_ENV = "CONVOSTORE_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MARIADB_URL_ENV = "CONVOSTORE_BENCH_MARIADB_URL"
DEFAULT_MARIADB_URL = "mariadb+asyncmy://root@127.0.0.1:3306/test"
BackendName = Literal["sqlite", "postgresql", "mariadb"]
BACKENDS: tuple[BackendName, ...] = ("sqlite", "postgresql", "mariadb")
_PREFIX = "convostore_bench_"


@dataclass(frozen=True, slots=True)
class Database:
    """A migrated database: its SQLAlchemy URL, and what the raw driver connects to."""

    backend: BackendName
    url: str
    target: str
    """The SQLite file's path, the asyncpg DSN, or (MariaDB) the SQLAlchemy URL, from which
    ``mariadb_connect_args`` takes asyncmy's arguments."""


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


def mariadb_connect_args(url: str) -> dict[str, Any]:
    """asyncmy's ``connect`` arguments for a ``mariadb+asyncmy://`` URL, as SQLAlchemy's
    dialect makes them for convostore's engines (and its change watcher)."""
    _, options = mysql_asyncmy.dialect().create_connect_args(make_url(url))
    return dict(options)


class MariaDBServer:
    """Databases named ``convostore_bench_<pid>_<tag>`` on the server of ``url``."""

    name: BackendName = "mariadb"
    label = "MariaDB"

    def __init__(self, url: str, version: str) -> None:
        self._url = make_url(url)
        self.version = version
        self._created: list[str] = []

    @classmethod
    async def connect(cls, url: str) -> MariaDBServer:
        """Check the server answers, and drop databases left by runs that died."""
        server = cls(url, "")
        admin = await server._admin()
        try:
            async with admin.cursor() as cursor:
                await cursor.execute("SELECT VERSION()")
                (version,) = await cursor.fetchone()
                server.version = str(version)
                await cursor.execute("SHOW DATABASES LIKE %s", (_PREFIX + "%",))
                for (name,) in await cursor.fetchall():
                    match = re.match(rf"{_PREFIX}(\d+)_", name)
                    if match and not _alive(int(match.group(1))):
                        await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()
        return server

    def _database_url(self, database: str | None) -> URL:
        return self._url.set(database=database)

    async def _admin(self) -> asyncmy.Connection:
        url = self._database_url(None).render_as_string(hide_password=False)
        return await asyncmy.connect(**mariadb_connect_args(url), autocommit=True)

    async def _run(self, *statements: str) -> None:
        admin = await self._admin()
        try:
            with _server_notes_unlogged():
                async with admin.cursor() as cursor:
                    for statement in statements:
                        await cursor.execute(statement)
        finally:
            admin.close()

    async def database(self, tag: str) -> Database:
        name = f"{_PREFIX}{os.getpid()}_{tag}"
        await self._run(f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}`")
        self._created.append(name)
        url = self._database_url(name).render_as_string(hide_password=False)
        with _server_notes_unlogged():
            await upgrade_url(url)
        return Database("mariadb", url, url)

    async def drop(self, database: Database) -> None:
        """Drop one database of this run before the run ends (to free its disk early)."""
        name = str(make_url(database.url).database)
        await self._run(f"DROP DATABASE IF EXISTS `{name}`")
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    async def close(self) -> None:
        if self._created:
            await self._run(*(f"DROP DATABASE IF EXISTS `{name}`" for name in self._created))
        self._created.clear()


@contextlib.contextmanager
def _server_notes_unlogged() -> Iterator[None]:
    """Keep asyncmy from logging the server's expected notes while databases are made and
    dropped: ``DROP DATABASE IF EXISTS`` of one that is not there, and every migration's
    ``Name 'pk_...' ignored for PRIMARY key`` (docs/mariadb.md)."""
    logger = logging.getLogger("asyncmy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    ``CONVOSTORE_BENCH_POSTGRES_URL``, MariaDB's from ``CONVOSTORE_BENCH_MARIADB_URL``
    (defaults: the local server's ``test`` database)."""
    if name == "sqlite":
        return SqliteServer()
    if name == "mariadb":
        return await MariaDBServer.connect(os.environ.get(MARIADB_URL_ENV, DEFAULT_MARIADB_URL))
    return await PostgresServer.connect(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
