"""The public API: exported names, the error tree, StoreConfig, how a SessionRepository is
built, started and stopped, session ids, and that the package type-checks under mypy strict."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import convostore
from convostore import (
    ConfigError,
    ConversationState,
    ConvostoreError,
    ForeignStateError,
    InvalidPage,
    InvalidQuery,
    InvalidSessionId,
    InvalidTurn,
    NotRunning,
    SchemaNotReady,
    SessionConfig,
    SessionRepository,
    StoreConfig,
    StoreError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MYPY = Path(sys.executable).parent / "mypy"
URL_ENV = "CONVOSTORE_DATABASE_URL"
Sql = Callable[..., Awaitable[list[Any]]]

EXPECTED_ALL = [
    "ConfigError",
    "ConversationState",
    "ConversationSummary",
    "ConversationTurn",
    "ConvostoreError",
    "DecryptionFailed",
    "ForeignStateError",
    "InvalidPage",
    "InvalidQuery",
    "InvalidSessionId",
    "InvalidTurn",
    "NotRunning",
    "NotSessionOwner",
    "RedactionFailed",
    "SchemaNotReady",
    "SearchHit",
    "SearchPage",
    "SessionConfig",
    "SessionPage",
    "SessionRepository",
    "StaleStateError",
    "StatementTimeout",
    "StoreConfig",
    "StoreError",
    "StoreUnavailable",
    "get_session_manager",
    "shutdown_session_manager",
]


def test_all_is_sorted_and_pinned() -> None:
    """convostore.__all__ is sorted, is exactly the contract's names, and each one imports."""
    assert convostore.__all__ == sorted(convostore.__all__)
    assert convostore.__all__ == EXPECTED_ALL
    namespace: dict[str, Any] = {}
    exec("from convostore import *", namespace)
    for name in EXPECTED_ALL:
        assert getattr(convostore, name) is namespace[name]
    assert SessionConfig is StoreConfig


@pytest.mark.parametrize(
    "error",
    [ConfigError, InvalidSessionId, InvalidTurn, InvalidPage, InvalidQuery, ForeignStateError],
)
def test_input_errors_are_value_errors(error: type[Exception]) -> None:
    """The errors of bad input are both ConvostoreError and ValueError."""
    assert issubclass(error, ConvostoreError)
    assert issubclass(error, ValueError)


async def test_failures_raise_their_convostore_errors(empty_url: str, url: str, sql: Sql) -> None:
    """A missing schema raises SchemaNotReady, use before start NotRunning, a failing
    statement StoreError (the driver's error chained): all of them ConvostoreErrors."""
    unmigrated = SessionRepository(
        StoreConfig(database_url=empty_url, cleanup_interval=0, auto_migrate=False)
    )
    with pytest.raises(SchemaNotReady) as not_ready:
        await unmigrated.start()
    with pytest.raises(NotRunning) as not_running:
        await unmigrated.get("x")
    async with SessionRepository(StoreConfig(database_url=url, cleanup_interval=0)) as repo:
        await repo.add_turn("s", "q", "a")
        await sql("DROP VIEW slot_values")
        await sql("DROP TABLE turn_slots")
        with pytest.raises(StoreError) as failed:
            await repo.add_turn("s", "q", "a", slots={"place": "Utrecht"})
    assert failed.value.__cause__ is not None
    for raised in (not_ready, not_running, failed):
        assert isinstance(raised.value, ConvostoreError)


def test_store_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env CONVOSTORE_DATABASE_URL the defaults are the spec's."""
    monkeypatch.delenv(URL_ENV, raising=False)
    cfg = StoreConfig()
    assert cfg.database_url == "sqlite+aiosqlite:///convostore.db"
    assert cfg.session_ttl == 1800
    assert cfg.cleanup_interval == 300
    assert cfg.max_sessions == 10_000
    assert cfg.auto_migrate is None


def test_store_config_reads_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """env CONVOSTORE_DATABASE_URL is the default URL; an explicit one still wins."""
    monkeypatch.setenv(URL_ENV, "postgresql+asyncpg://u@db.example/app")
    assert StoreConfig().database_url == "postgresql+asyncpg://u@db.example/app"
    explicit = "sqlite+aiosqlite:///other.db"
    assert StoreConfig(database_url=explicit).database_url == explicit


@pytest.mark.parametrize(
    ("ttl", "interval"), [(60, 10), (0.5, 0.25), (1800.0, 0)], ids=["int", "float", "mixed"]
)
def test_durations_accept_int_and_float(ttl: float, interval: float) -> None:
    """session_ttl and cleanup_interval take seconds as int or float, kept exactly."""
    cfg = StoreConfig(session_ttl=ttl, cleanup_interval=interval)
    assert cfg.session_ttl == ttl
    assert cfg.cleanup_interval == interval


@pytest.mark.parametrize(
    "bad",
    [
        {"session_ttl": -1},
        {"session_ttl": 0},
        {"cleanup_interval": -5},
        {"max_sessions": 0},
        {"max_sessions": -10},
        {"session_ttl": "soon"},
    ],
    ids=["negative-ttl", "zero-ttl", "negative-interval", "zero-max", "negative-max", "text-ttl"],
)
def test_bad_config_values_are_rejected(bad: dict[str, Any]) -> None:
    """Out-of-range or mistyped settings raise pydantic's ValidationError."""
    with pytest.raises(ValidationError):
        StoreConfig(**bad)


def test_unknown_config_fields_are_rejected() -> None:
    """A misspelt setting is an error, not silently ignored."""
    with pytest.raises(ValidationError, match="session_tll"):
        StoreConfig(session_tll=60)  # type: ignore[call-arg]


def test_original_redis_fields_are_accepted_with_a_future_warning() -> None:
    """The original SessionConfig's redis_* settings still construct, with a FutureWarning
    (shown by default, unlike a DeprecationWarning), and the other settings are kept."""
    with pytest.warns(FutureWarning, match="Redis"):
        cfg = SessionConfig(  # type: ignore[call-arg]
            session_ttl=600,
            cleanup_interval=60,
            max_sessions=50,
            redis_enabled=True,
            redis_url="redis://localhost:6379",
            redis_prefix="heritage:session:",
            redis_db=1,
        )
    assert (cfg.session_ttl, cfg.cleanup_interval, cfg.max_sessions) == (600, 60, 50)
    assert not any(key.startswith("redis") for key in cfg.model_dump())


async def test_repository_accepts_a_url_string(url: str) -> None:
    """SessionRepository("<url>") builds its config from the URL and works."""
    repo = SessionRepository(url)
    assert repo.config.database_url == url
    async with repo:
        sid, _ = await repo.get_or_create()
        state = await repo.add_turn(sid, "Hoi?", "Hallo.")
        assert [turn.content for turn in state.turns] == ["Hoi?", "Hallo."]


async def test_repository_uses_given_engine_and_leaves_it_open(url: str, tmp_path: Path) -> None:
    """SessionRepository(cfg, engine=...) runs on that engine, not on cfg's URL, and stop()
    does not dispose it."""
    unreachable = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'unused.db'}"
    engine = create_async_engine(url)
    try:
        repo = SessionRepository(
            StoreConfig(database_url=unreachable, cleanup_interval=0), engine=engine
        )
        await repo.start()
        try:
            assert repo.engine is engine
            sid, _ = await repo.get_or_create()
            await repo.add_turn(sid, "Vraag", "Antwoord")
        finally:
            await repo.stop()
        async with engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT count(*) FROM turns WHERE session_id = :s"), {"s": sid}
            )
        assert count == 2
        assert not (tmp_path / "no-such-dir").exists()
    finally:
        await engine.dispose()


async def test_use_before_start_raises_not_running(tmp_path: Path) -> None:
    """Every operation of a repository that was never started raises NotRunning."""
    never = tmp_path / "never-opened.db"
    repo = SessionRepository(StoreConfig(database_url=f"sqlite+aiosqlite:///{never}"))
    sid = repo.generate_session_id()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: repo.get(sid),
        "get_or_create(None)": lambda: repo.get_or_create(),
        "get_or_create(sid)": lambda: repo.get_or_create(sid),
        "add_turn": lambda: repo.add_turn(sid, "q", "a"),
        "add_turn_to_session": lambda: repo.add_turn_to_session(sid, "q", "a"),
        "update": lambda: repo.update(sid, ConversationState()),
        "delete": lambda: repo.delete(sid),
        "sweep_expired": lambda: repo.sweep_expired(),
    }
    did_not_raise = []
    for name, call in calls.items():
        try:
            await call()
        except NotRunning:
            continue
        did_not_raise.append(name)
    assert did_not_raise == []
    with pytest.raises(NotRunning):
        _ = repo.engine
    for name in ("fast_path", "connections_kept"):
        with pytest.raises(NotRunning):
            getattr(repo, name)
    assert not never.exists()


async def test_async_with_starts_and_stops(url: str) -> None:
    """`async with repo` starts it (operations work) and stops it on exit (they raise)."""
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0))
    async with repo as entered:
        assert entered is repo
        sid, _ = await repo.get_or_create()
        assert await repo.get(sid) is not None
    with pytest.raises(NotRunning):
        await repo.get(sid)
    with pytest.raises(NotRunning):
        await repo.start()


def test_generated_session_ids_are_url_safe_long_and_distinct(tmp_path: Path) -> None:
    """generate_session_id() gives URL-safe ids of at least 32 characters, all distinct."""
    repo = SessionRepository(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    ids = [repo.generate_session_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for sid in ids:
        assert len(sid) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", sid), sid


def test_package_is_typed_and_passes_mypy_strict() -> None:
    """py.typed ships with the package and `mypy` (strict, configured in pyproject) passes."""
    assert (Path(convostore.__file__).parent / "py.typed").is_file()
    done = subprocess.run([str(MYPY)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mypy failed:\n{done.stdout}\n{done.stderr}"
