"""Settings from the environment: every ``StoreConfig`` field has a ``CONVOSTORE_*`` variable, a
constructor argument wins over it, a ``.env`` file is read only through ``from_env``, a bad value
from either is a ``ConfigError`` naming the variable, and the original SessionConfig's Redis
fields warn with a ``FutureWarning`` that Python shows by default. The README's settings table
and its list of old names cover every field."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from convostore import ConfigError, ConvostoreError, SessionConfig, StoreConfig
from convostore.config import resolve_database_url

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

_KEY, _OLD_KEY = (Fernet.generate_key().decode() for _ in range(2))

SAMPLES: dict[str, tuple[str, Any]] = {
    "database_url": ("postgresql+asyncpg://app@db/chat", "postgresql+asyncpg://app@db/chat"),
    "session_ttl": ("600", 600),
    "transcript_retention": ("0", 0),
    "cleanup_interval": ("0", 0),
    "refresh_delay": ("0.5", 0.5),
    "max_sessions": ("50", 50),
    "auto_migrate": ("false", False),
    "sweep_batch_size": ("100", 100),
    "pool_size": ("2", 2),
    "max_overflow": ("0", 0),
    "cache_coherence": ("strict", "strict"),
    "listen_url": ("postgresql+asyncpg://app@direct/chat", "postgresql+asyncpg://app@direct/chat"),
    "pooler": ("pgbouncer", "pgbouncer"),
    "reconnect_timeout": ("2.5", 2.5),
    "fast_path": ("0", False),
    "max_text_chars": ("20", 20),
    "max_results_bytes": ("50", 50),
    "default_language": ("en", "en"),
    "schema": ("convostore", "convostore"),
    "auto_title": ("true", True),
    "max_turns_per_session": ("40", 40),
    "encryption_keys": (f"{_KEY},{_OLD_KEY}", (_KEY, _OLD_KEY)),
}
"""Per field: a value as an environment variable holds it, and the setting it gives, which is
not the default."""

NOT_FROM_THE_ENVIRONMENT = {"redact"}
"""Fields no environment variable can hold (a callable)."""

ORIGINAL_FIELDS = (
    "session_ttl",
    "cleanup_interval",
    "max_sessions",
    "redis_enabled",
    "redis_url",
    "redis_prefix",
    "redis_db",
)
"""The fields of the original SessionManager's SessionConfig."""


def env_name(field: str) -> str:
    return f"CONVOSTORE_{field.upper()}"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests run in."""
    for field in StoreConfig.model_fields:
        monkeypatch.delenv(env_name(field), raising=False)


def test_every_field_is_read_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field, set only by ``CONVOSTORE_<FIELD>``, takes the variable's value; a field added
    without a sample here fails the first assertion."""
    assert sorted(SAMPLES) == sorted(set(StoreConfig.model_fields) - NOT_FROM_THE_ENVIRONMENT)
    defaults = StoreConfig()
    for field, (raw, expected) in SAMPLES.items():  # one at a time: some exclude others
        monkeypatch.setenv(env_name(field), raw)
        assert getattr(StoreConfig(), field) == expected, field
        assert getattr(defaults, field) != expected, field
        monkeypatch.delenv(env_name(field))


def test_constructor_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """An argument beats the variable, even one that is invalid; the other fields still come
    from the environment."""
    monkeypatch.setenv(env_name("session_ttl"), "600")
    monkeypatch.setenv(env_name("database_url"), "sqlite+aiosqlite:///from-env.db")
    config = StoreConfig(session_ttl=60)
    assert (config.session_ttl, config.database_url) == (60, "sqlite+aiosqlite:///from-env.db")
    assert StoreConfig(database_url="sqlite+aiosqlite:///given.db").database_url == (
        "sqlite+aiosqlite:///given.db"
    )
    monkeypatch.setenv(env_name("session_ttl"), "not a number")
    assert StoreConfig(session_ttl=60).session_ttl == 60


@pytest.mark.parametrize("value", [None, "", "sqlite+aiosqlite:///from-env.db"])
def test_database_url_variable_works_as_before(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """``CONVOSTORE_DATABASE_URL`` set, empty or unset gives the URL the command line and the
    migrations use (an empty one means the default)."""
    if value is not None:
        monkeypatch.setenv(env_name("database_url"), value)
    assert StoreConfig().database_url == resolve_database_url()
    assert StoreConfig().database_url == (value or "sqlite+aiosqlite:///convostore.db")


def test_env_file_only_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``.env`` in the working directory is not read by ``StoreConfig()`` nor by ``from_env()``
    without a file; ``from_env(env_file=...)`` reads its fields and ignores its other entries
    (other programs' settings, other CONVOSTORE_ variables). The environment wins over the file,
    arguments over both, and a missing file is skipped."""
    (tmp_path / ".env").write_text(
        "CONVOSTORE_SESSION_TTL=42\n"
        "CONVOSTORE_MAX_SESSIONS=7\n"
        "CONVOSTORE_TEST_POSTGRES_URL=postgresql+asyncpg://elsewhere/db\n"
        "CHAT_ALLOW_CLIENT_SESSION_IDS=true\n"
        "DEBUG=1\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    assert StoreConfig().session_ttl == 1800
    assert StoreConfig.from_env().session_ttl == 1800
    from_file = StoreConfig.from_env(env_file=".env")
    assert (from_file.session_ttl, from_file.max_sessions) == (42, 7)
    assert StoreConfig.from_env(env_file=tmp_path / ".env").session_ttl == 42
    monkeypatch.setenv(env_name("session_ttl"), "600")
    assert StoreConfig.from_env(env_file=".env").session_ttl == 600
    config = StoreConfig.from_env(env_file=".env", session_ttl=5, max_sessions=3)
    assert (config.session_ttl, config.max_sessions) == (5, 3)
    assert StoreConfig.from_env(env_file="missing.env").max_sessions == 10_000


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("session_ttl", "half an hour", "CONVOSTORE_SESSION_TTL: Input should be a valid number"),
        ("session_ttl", "-5", "CONVOSTORE_SESSION_TTL: Input should be greater than 0"),
        ("max_sessions", "1.5", "CONVOSTORE_MAX_SESSIONS: Input should be a valid integer"),
        ("fast_path", "perhaps", "CONVOSTORE_FAST_PATH: Input should be a valid boolean"),
        ("cache_coherence", "eventual", "CONVOSTORE_CACHE_COHERENCE: Input should be 'bounded'"),
    ],
)
def test_bad_environment_value_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, message: str
) -> None:
    """The error is convostore's ConfigError (a ValueError), names the variable and what is
    wrong, not the value, and chains pydantic's ValidationError."""
    monkeypatch.setenv(env_name(field), raw)
    with pytest.raises(ConfigError) as raised:
        StoreConfig()
    assert str(raised.value).startswith("invalid StoreConfig settings from the environment: ")
    assert message in str(raised.value)
    assert raw not in str(raised.value)
    assert isinstance(raised.value, ConvostoreError)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value.__cause__, ValidationError)


def test_bad_env_file_value_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "chat.env"
    env_file.write_text("CONVOSTORE_POOLER=pgpool\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"from the environment or {re.escape(str(env_file))}: "):
        StoreConfig.from_env(env_file=env_file)


def test_bad_arguments_stay_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only constructor arguments wrong: pydantic's ValidationError, as before. Both wrong: the
    ConfigError lists the argument's problem too."""
    with pytest.raises(ValidationError):
        StoreConfig(session_ttl=0)
    monkeypatch.setenv(env_name("max_sessions"), "0")
    with pytest.raises(ConfigError) as raised:
        StoreConfig(session_ttl=0)
    assert "session_ttl: Input should be greater than 0" in str(raised.value)
    assert "CONVOSTORE_MAX_SESSIONS: Input should be greater than or equal to 1" in str(
        raised.value
    )


@pytest.mark.parametrize("build", [StoreConfig, SessionConfig, StoreConfig.from_env])
def test_redis_fields_warn_at_the_callers_line(build: Any) -> None:
    """The FutureWarning names the fields given and the line that gave them, whichever way the
    config is built."""
    with pytest.warns(FutureWarning, match=r"\(redis_enabled, redis_db\)") as record:
        config = build(session_ttl=60, redis_enabled=True, redis_db=1)
    assert config.session_ttl == 60
    assert [warning.filename for warning in record] == [__file__]


def test_redis_warning_is_shown_by_default() -> None:
    """A plain interpreter (Python's default warning filters) prints the warning."""
    code = "from convostore import SessionConfig; SessionConfig(redis_url='redis://localhost')"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "<string>:1: FutureWarning: StoreConfig ignores the Redis settings" in done.stderr


def _section(heading: str) -> str:
    """The README text from ``heading`` to the next heading."""
    start = README.index(heading)
    end = README.find("\n#", start + len(heading))
    return README[start:end]


def test_readme_settings_table_has_every_field_and_variable() -> None:
    table = _section("### Settings (`StoreConfig`")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for field in StoreConfig.model_fields:
        (row,) = [row for row in rows if f"`{field}`" in row.split("|")[1]]
        if field in NOT_FROM_THE_ENVIRONMENT:
            assert "(none" in row.split("|")[2], row
        else:
            assert f"`{env_name(field)}`" in row, row


def test_readme_lists_every_original_field() -> None:
    names = _section("#### Old configuration names")
    for field in ORIGINAL_FIELDS:
        assert f"`{field}`" in names, field


OUT_OF_RANGE: list[tuple[str, str, str]] = [
    ("session_ttl", "inf", "Input should be a finite number"),
    ("session_ttl", "nan", "Input should be a finite number"),
    ("session_ttl", "1e12", "Input should be less than or equal to 3155760000"),
    ("session_ttl", "1e-9", "Input should be at least 0.001 (a millisecond)"),
    ("transcript_retention", "inf", "Input should be a finite number"),
    ("transcript_retention", "1e12", "Input should be less than or equal to 3155760000"),
    ("cleanup_interval", "inf", "Input should be a finite number"),
    ("refresh_delay", "1e12", "Input should be less than or equal to 3155760000"),
    ("reconnect_timeout", "nan", "Input should be a finite number"),
    ("sweep_batch_size", str(2**31), "Input should be less than or equal to 1000000"),
]
"""Settings a repository would accept and then fail on, every call or every sweep (a date
past year 9999, an infinite sleep, a TTL that ends a session as it is created, a batch size
past a 32-bit parameter), as an environment variable holds them."""


@pytest.mark.parametrize(("field", "raw", "message"), OUT_OF_RANGE)
def test_settings_out_of_range_are_refused_when_built(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, message: str
) -> None:
    """As a constructor argument: pydantic's ValidationError, as for every bad argument; from
    the environment: ConfigError naming the variable."""
    value: Any = float(raw) if "." in raw or "e" in raw or raw in ("inf", "nan") else int(raw)
    with pytest.raises(ValidationError, match=re.escape(message)):
        StoreConfig(**{field: value})
    monkeypatch.setenv(env_name(field), raw)
    with pytest.raises(ConfigError, match=re.escape(f"{env_name(field)}: {message}")):
        StoreConfig()
