"""Fixtures shared by the suite: one database per test on each backend, a movable clock, and
repositories that are stopped when the test ends.

Every test that takes ``url``, ``empty_url`` or ``repo`` runs on a SQLite file and on the
PostgreSQL server named by env ``CONVOSTORE_TEST_POSTGRES_URL`` (skipped, with the reason, when
that is unset; failing when it is set and the server cannot be reached); the conformance suite
(the modules in ``CONFORMANCE``) runs on the MariaDB server named by
``CONVOSTORE_TEST_MARIADB_URL`` too. ``-m sqlite``, ``-m postgresql`` or ``-m mariadb`` picks
one. PostgreSQL tests get a database of their own, copied from a
template migrated once per run; SQLite tests get a copy of a migrated file.

Tests that stop, crash or pool a server never touch that shared one: ``private_postgres`` is a
server of the test's own, and ``pgbouncer`` / ``pgbouncer_on`` put PgBouncer in front of one
(see ``servers.py``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

# bench/ is never installed: find it in the source tree, but after site-packages, so that CI
# still tests the installed convostore (pytest's ``pythonpath`` option would put the source
# tree first, and test_installed_package_ships_migrations would skip).
sys.path.append(str(Path(__file__).resolve().parent.parent))

from servers import LOOPBACK, PgBouncer, PrivatePostgres

from convostore import SessionRepository, StoreConfig
from convostore.migrate import current_revision_url, upgrade_url

POSTGRES_URL_ENV = "CONVOSTORE_TEST_POSTGRES_URL"
FAST_PATH_ENV = "CONVOSTORE_TEST_FAST_PATH"
FAST_PATH = os.environ.get(FAST_PATH_ENV, "1") != "0"
"""Env ``CONVOSTORE_TEST_FAST_PATH=0`` runs ``make_repo``'s repositories with ``fast_path=False``,
so that CI runs the repository tests on both executors."""
MARIADB_URL_ENV = "CONVOSTORE_TEST_MARIADB_URL"
BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


CONFORMANCE = frozenset(
    {
        "test_api",
        "test_analytics",
        "test_catalog",
        "test_change_feed",
        "test_cli",
        "test_cli_transfer",
        "test_compat",
        "test_concurrency",
        "test_config",
        "test_encryption",
        "test_feedback",
        "test_history",
        "test_host_schema",
        "test_idempotency_scope",
        "test_langchain",
        "test_language",
        "test_lifecycle",
        "test_live",
        "test_mariadb",
        "test_messages",
        "test_migrations",
        "test_openai_agents",
        "test_owners",
        "test_pydantic_ai",
        "test_redaction",
        "test_refresh_behind",
        "test_repository",
        "test_retention",
        "test_robustness",
        "test_round_trips",
        "test_search",
        "test_state_machine",
        "test_summaries",
        "test_transfer",
        "test_windowed",
        "test_workers",
    }
)
"""The conformance suite: the modules whose tests every backend must pass (a new backend is
"implement the seam, pass these"). The others test one backend's own machinery (the fast
paths, statement counts, PgBouncer, populated databases of old revisions built per dialect,
README snippets written for SQLite and PostgreSQL) and run on SQLite and PostgreSQL only."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run MariaDB's cases of the conformance suite only."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_mariadb = callspec is not None and callspec.params.get("backend") == "mariadb"
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        (dropped if on_mariadb and module not in CONFORMANCE else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class FakeClock:
    """A clock the test moves by hand, so expiry is tested without sleeping."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set; PostgreSQL cases need a server")
    return url


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    asyncio.run(upgrade_url(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    admin = _postgres_admin_url()
    name = f"convostore_template_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(upgrade_url(_with_database(admin, name)))
        yield name
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _fresh_postgres(template: str | None) -> Iterator[str]:
    admin = _postgres_admin_url()
    name = f"convostore_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield _with_database(admin, name)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _mariadb_admin_url() -> str:
    url = os.environ.get(MARIADB_URL_ENV)
    if not url:
        pytest.skip(f"{MARIADB_URL_ENV} is not set; MariaDB cases need a server")
    return url


def _fresh_mariadb() -> Iterator[str]:
    admin = _mariadb_admin_url()
    name = f"convostore_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin, f"CREATE DATABASE `{name}`"))
    try:
        yield _with_database(admin, name)
    finally:
        asyncio.run(_admin(admin, f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(scope="session")
def mariadb_migrated() -> Iterator[str]:
    """A MariaDB database migrated once per run, emptied before each test that uses it
    (MariaDB has no template databases, and migrating one per test costs half a second)."""
    url_of = _fresh_mariadb()
    url = next(url_of)
    asyncio.run(upgrade_url(url))
    yield url
    next(url_of, None)


_MARIADB_EMPTIED = (
    "SET FOREIGN_KEY_CHECKS = 0",
    *(
        f"TRUNCATE TABLE {table}"
        for table in (
            "turn_feedback",
            "turn_slots",
            "turns",
            "sessions",
            "conversations",
            "convostore_changes",
        )
    ),
    "SET FOREIGN_KEY_CHECKS = 1",
    "ALTER SEQUENCE conversation_ids RESTART WITH 1",
)


_MARIADB_SHAPE = text(
    "SELECT (SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY TRIGGER_NAME) FROM "
    "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()), "
    "(SELECT GROUP_CONCAT(CONSTRAINT_NAME ORDER BY CONSTRAINT_NAME) FROM "
    "information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()), "
    "(SELECT GROUP_CONCAT(TABLE_NAME ORDER BY TABLE_NAME) FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = DATABASE())"
)
"""What tests may add to the shared database and must not leave for the next (triggers,
constraints, tables)."""
_mariadb_shape: list[Any] = []


async def _shape(url: str) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return tuple((await conn.execute(_MARIADB_SHAPE)).one())
    finally:
        await engine.dispose()


async def _mariadb_emptied(url: str) -> None:
    """Empty the run's MariaDB database; build it anew if a test left it otherwise than
    migrated (another revision, a trigger or constraint of its own, a dropped table)."""
    try:
        await _admin(url, *_MARIADB_EMPTIED)
        await current_revision_url(url, require_head=True)
        shape = await _shape(url)
        if not _mariadb_shape:
            _mariadb_shape.append(shape)
        assert shape == _mariadb_shape[0]
    except Exception:
        name = make_url(url).database
        await _admin(url, f"DROP DATABASE IF EXISTS `{name}`", f"CREATE DATABASE `{name}`")
        await upgrade_url(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``sqlite``, ``postgresql`` or ``mariadb``."""
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL with no tables at all."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    elif backend == "mariadb":
        yield from _fresh_mariadb()
    else:
        yield from _fresh_postgres(None)


@pytest.fixture
def url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database URL of this test's own, migrated to head (on MariaDB: the run's migrated
    database, emptied)."""
    if backend == "sqlite":
        path = tmp_path / "store.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
    elif backend == "mariadb":
        migrated = request.getfixturevalue("mariadb_migrated")
        asyncio.run(_mariadb_emptied(migrated))
        yield migrated
    else:
        yield from _fresh_postgres(request.getfixturevalue("postgres_template"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeRepo = Callable[..., Awaitable[SessionRepository]]


@pytest.fixture
async def make_repo(url: str, clock: FakeClock) -> AsyncIterator[MakeRepo]:
    """Start a repository on this test's database; ``StoreConfig`` fields can be overridden
    (``fast_path`` defaults to env ``CONVOSTORE_TEST_FAST_PATH``). Every repository made here
    is stopped when the test ends."""
    made: list[SessionRepository] = []

    async def make(**overrides: Any) -> SessionRepository:
        options: dict[str, Any] = {
            "database_url": url,
            "cleanup_interval": 0,
            "fast_path": FAST_PATH,
        }
        options.update(overrides)
        repository = SessionRepository(StoreConfig(**options), clock=clock)
        await repository.start()
        made.append(repository)
        return repository

    yield make
    for repository in made:
        await repository.stop()


@pytest.fixture
async def repo(make_repo: MakeRepo) -> SessionRepository:
    """A started repository with the default settings and no background sweep."""
    return await make_repo()


Sql = Callable[..., Awaitable[list[Any]]]


@pytest.fixture
async def sql(url: str) -> AsyncIterator[Sql]:
    """Run SQL on this test's database from outside the repository; returns all rows."""
    engine = create_async_engine(url)

    async def run(statement: str, **params: Any) -> list[Any]:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    yield run
    await engine.dispose()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own, started and empty (no convostore schema), to
    stop, kill and restart; removed when the test ends."""
    try:
        server = PrivatePostgres()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    with server:
        yield server


def _pgbouncer(
    server_port: int, user: str = "postgres", database: str = "postgres"
) -> Iterator[PgBouncer]:
    try:
        bouncer = PgBouncer(server_port, user=user, database=database)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    with bouncer:
        yield bouncer


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the shared server; its ``dsn`` and ``url``
    name the database of ``CONVOSTORE_TEST_POSTGRES_URL``."""
    url = make_url(_postgres_admin_url())
    if url.host != LOOPBACK:
        pytest.fail(f"{POSTGRES_URL_ENV} must name a server on {LOOPBACK}, not {url.host}")
    yield from _pgbouncer(
        url.port or 5432, user=url.username or "postgres", database=url.database or "postgres"
    )


@pytest.fixture
def pgbouncer_on(private_postgres: PrivatePostgres) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of this test's ``private_postgres``."""
    yield from _pgbouncer(private_postgres.port)
