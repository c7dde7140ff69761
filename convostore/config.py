"""``StoreConfig``: where the store lives and how long sessions and cached states last.

Each setting comes from the constructor argument of its name, else the environment variable
``CONVOSTORE_<NAME>``, else (``StoreConfig.from_env(env_file=...)`` only) that ``.env`` file,
else its default. A value from the environment or the file that does not validate raises
``ConfigError`` naming the variable; a bad constructor argument raises pydantic's
``ValidationError``, as it always did. Durations are bounded (``MAX_SECONDS``,
``MIN_SESSION_TTL``) so that every date computed from them exists; ``SessionRepository`` checks
a config that skipped validation again (``check_settings``) and raises ``ConfigError``.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from convostore._core.crypt import TurnCipher
from convostore._core.validation import check_language
from convostore.backends._urls import hide_password
from convostore.errors import ConfigError

__all__ = [
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE_URL",
    "ENCRYPTION_KEYS_ENV",
    "ENV_PREFIX",
    "MAX_SECONDS",
    "MAX_SWEEP_BATCH",
    "MIN_SESSION_TTL",
    "StoreConfig",
    "check_setting",
    "check_settings",
    "encryption_keys_from_env",
    "resolve_database_url",
    "settings_error",
]

ENV_PREFIX = "CONVOSTORE_"
"""Setting ``name`` is read from the environment variable ``CONVOSTORE_<NAME>``."""
DATABASE_URL_ENV = f"{ENV_PREFIX}DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///convostore.db"
ENCRYPTION_KEYS_ENV = f"{ENV_PREFIX}ENCRYPTION_KEYS"
MAX_SECONDS = 100 * 365.25 * 24 * 3600
"""The longest duration a setting takes: 100 years (3,155,760,000 s). Any expiry or retention
cutoff that far from now is still a date Python and the databases hold; infinity and NaN are
refused, as are the durations of thousands of years that would overflow them on every call."""
MIN_SESSION_TTL = 0.001
"""The shortest ``session_ttl``: a millisecond. Timestamps are stored to the microsecond, so a
shorter one could end a session in the instant it is created."""
MAX_SWEEP_BATCH = 1_000_000
"""The largest ``sweep_batch_size``; a batch is one transaction (about 20 s of locks at this
size on PostgreSQL), and its size a 32-bit parameter."""
_LEGACY_REDIS_FIELDS = ("redis_enabled", "redis_url", "redis_prefix", "redis_db")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A schema name convostore writes into SQL unquoted: lower case, so PostgreSQL and MariaDB
spell it alike, and at most 63 characters (PostgreSQL's longest identifier)."""
_RESERVED_SCHEMAS = frozenset({"information_schema", "mysql", "performance_schema", "sys"})
"""Schemas (MariaDB: databases) that belong to the server; PostgreSQL's ``pg_*`` too."""


def _split_keys(text: str) -> tuple[str, ...]:
    """Keys written as one string, separated by commas (blanks around them dropped)."""
    return tuple(key.strip() for key in text.split(",") if key.strip())


def encryption_keys_from_env() -> tuple[str, ...]:
    """The keys of env ``CONVOSTORE_ENCRYPTION_KEYS`` (comma-separated; unset or empty: none),
    checked as ``StoreConfig`` checks them, for the commands that read turns without a
    repository. ``ConfigError`` naming the variable for a malformed key."""
    keys = _split_keys(os.environ.get(ENCRYPTION_KEYS_ENV, ""))
    if keys:
        try:
            TurnCipher(keys)
        except ConfigError as exc:
            raise ConfigError(f"{ENCRYPTION_KEYS_ENV}: {exc}") from None
    return keys


def resolve_database_url(explicit: str | None = None) -> str:
    """The database URL to use: ``explicit``, else env ``CONVOSTORE_DATABASE_URL``, else a
    SQLite file ``convostore.db`` in the working directory. Migrations use the same rule."""
    return explicit or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


class _FieldsOnly(PydanticBaseSettingsSource):
    """The values a ``.env`` file holds for ``StoreConfig``'s fields. pydantic-settings passes
    every other entry of the file on as an unknown field, which ``StoreConfig`` refuses, while
    the file may well hold other programs' settings too, as the environment does."""

    def __init__(self, dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(dotenv.settings_cls)
        self._dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._dotenv.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {name: value for name, value in self._dotenv().items() if name in fields}


def _environment_error(error: ValidationError, given: dict[str, Any]) -> ConfigError | None:
    """A ``ConfigError`` listing every problem of ``error``, each named by its environment
    variable when its value did not come from the constructor; None if none did."""
    problems: list[str] = []
    from_environment = False
    for name, message in _problems(error):
        if name and name not in given:
            from_environment = True
            name = f"{ENV_PREFIX}{name.upper()}"
        problems.append(f"{name}: {message}")
    if not from_environment:
        return None
    env_file = given.get("_env_file")
    where = f"the environment or {os.fspath(env_file)}" if env_file else "the environment"
    return ConfigError(f"invalid StoreConfig settings from {where}: {'; '.join(problems)}")


def _key_error(error: ValidationError, given: dict[str, Any]) -> ConfigError | None:
    """The ``ConfigError`` an unusable encryption key raised in validation, if one did, naming
    the environment variable if the keys came from there: its message says what is wrong with
    which key, never the key."""
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            if "encryption_keys" in given:
                return cause
            return ConfigError(f"{ENCRYPTION_KEYS_ENV}: {cause}")
    return None


def _problems(error: ValidationError) -> Iterator[tuple[str, str]]:
    """Each problem of ``error``: the field it is about ("" if none) and what is wrong."""
    for item in error.errors():
        yield (str(item["loc"][0]) if item["loc"] else ""), item["msg"]


def check_settings(config: StoreConfig) -> None:
    """Raise ``ConfigError`` unless every setting of ``config`` is valid. ``StoreConfig(...)``
    validates as it is built; a config made with ``model_construct`` or changed with
    ``model_copy(update=...)`` was not, and a duration out of range would fail every call."""
    try:
        type(config).model_validate(config.model_dump())
    except ValidationError as exc:
        raise settings_error(exc) from exc


def check_setting(name: str, value: Any) -> Any:
    """``value`` as ``StoreConfig`` takes its setting ``name`` (None: the setting's default),
    for a function or command that takes one setting on its own; ``ConfigError`` naming the
    setting if it breaks the rules."""
    if value is None:
        return StoreConfig.model_fields[name].default
    try:
        return getattr(StoreConfig.model_validate({name: value}), name)
    except ValidationError as exc:
        raise settings_error(exc) from exc


def settings_error(error: ValidationError) -> ConfigError:
    """``error``, about settings given as ``StoreConfig`` fields, as a ``ConfigError``."""
    problems = "; ".join(f"{name}: {message}" for name, message in _problems(error))
    return ConfigError(f"invalid StoreConfig settings: {problems}")


_PYDANTIC = frozenset({"pydantic", "pydantic_core", "pydantic_settings"})


def _stacklevel_outside() -> int:
    """The ``stacklevel`` at which a warning raised by this module's caller names the line that
    built the config, past the frames of this module and of pydantic."""
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None  # the caller: stacklevel 1
    level = 1
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module != __name__ and module.partition(".")[0] not in _PYDANTIC:
            break
        frame = frame.f_back
        level += 1
    return level


warnings.filterwarnings("ignore", 'Field name "schema" in "StoreConfig" shadows', UserWarning)
"""pydantic warns, as it builds ``StoreConfig``, that the setting ``schema`` hides
``BaseModel.schema()``, deprecated since pydantic 2 (``model_json_schema()``); the setting keeps
the name its environment variable ``CONVOSTORE_SCHEMA`` has."""


class StoreConfig(BaseSettings):
    """Settings of a ``SessionRepository``. Durations are seconds (int or float).

    Each field is also read from the environment variable ``CONVOSTORE_<FIELD>`` (any case; an
    empty one counts as unset), and from a ``.env`` file only through ``from_env``; a
    constructor argument wins over both. Unknown fields are refused; the original
    SessionConfig's ``redis_*`` fields are accepted and ignored, with a ``FutureWarning``.

    ``repr()`` and ``str()`` show the database URL with its password as ``***``, and validation
    errors leave out the values given, so neither shows a password.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy async URL: ``sqlite+aiosqlite:///file.db`` or ``postgresql+asyncpg://...``.
    Default: env ``CONVOSTORE_DATABASE_URL``, else ``sqlite+aiosqlite:///convostore.db``.
    Checked when a ``SessionRepository`` is built (``ConfigError``), not here: a repository
    given an engine does not use it."""

    session_ttl: float = Field(default=1800, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    """Seconds of inactivity after which a session expires (sliding): at least
    ``MIN_SESSION_TTL`` (a millisecond), at most ``MAX_SECONDS`` (100 years). Default 1800."""

    transcript_retention: float = Field(
        default=30 * 24 * 3600, ge=0, le=MAX_SECONDS, allow_inf_nan=False
    )
    """Seconds the transcript of an ended session (its ``conversations`` row, turns and slots)
    stays queryable in SQL, counted from the conversation's last activity. 0: it is deleted
    with the session (by the same sweep or ``delete``). Default 30 days. The API never reads
    an ended conversation; ``list_sessions``, ``export_user`` and ``erase_user`` do."""

    cleanup_interval: float = Field(default=300, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    """Seconds between scheduled expiry sweeps; 0 disables the background task. Default 300."""

    refresh_delay: float = Field(default=1.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    """Seconds a read's expiry refresh may wait before it is written, batched with others' (a
    read refreshes the stored expiry only when it is more than a tenth of the TTL old). The
    refresh leaves the request path: a cold read costs the same whether it is due or not.
    Pending refreshes are written before a sweep and at ``stop()``; a crash loses them, which
    lets those sessions expire up to this much sooner. 0: each read writes its own refresh
    before it returns. Default 1."""

    max_sessions: int = Field(default=10_000, ge=1)
    """Capacity of the in-process LRU cache, in sessions. Default 10,000."""

    auto_migrate: bool | None = None
    """True: ``start()`` upgrades the schema to the newest migration; False: it raises
    ``SchemaNotReady`` on a database that lacks it. Default None, automatic: True on SQLite,
    the embedded store that has no deploy step of its own, False on PostgreSQL, where a
    production schema changes in the deploy (``convostore migrate``), not when a worker starts.
    ``get_session_manager()`` takes None as True on both, as the original manager needed no
    migration step."""

    sweep_batch_size: int = Field(default=500, ge=1, le=MAX_SWEEP_BATCH)
    """Sessions deleted per expiry transaction (and, in the sweep's transcript pass,
    conversations), so a sweep never holds long locks. Default 500 (BENCHMARKS.md's expiry
    rows time a batch of that size)."""

    pool_size: int = Field(default=5, ge=1)
    """Connections the repository's own engine keeps open. Default 5."""

    max_overflow: int = Field(default=10, ge=0)
    """Extra connections the engine may open under load. Default 10."""

    cache_coherence: Literal["bounded", "strict", "local"] = "bounded"
    """How the cache learns of other processes' writes. ``"bounded"`` (default): a write or
    delete through any repository on the database drops the cached copies of every other
    within about 50 ms, and a cache hit runs no SQL (a poller follows the change feed: on
    PostgreSQL a read of it every 20 ms, on SQLite a look at the file every 10 ms).
    ``"strict"``: each hit checks the stored version first (one small read; always fresh).
    ``"local"``: no such check; only safe for a single process per database."""

    listen_url: str | None = None
    """PostgreSQL, ``"bounded"`` coherence: the URL the change poller connects to. Default:
    ``database_url``; its polls are plain statements, which pass a transaction pooler too, so
    the server's direct address here only keeps them off the pooler."""

    pooler: Literal["pgbouncer"] | None = None
    """``"pgbouncer"``: the URL points at PgBouncer in transaction mode, so convostore uses no
    named prepared statements (asyncpg's and SQLAlchemy's statement caches off). Default None."""

    reconnect_timeout: float = Field(default=10, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    """Seconds a call keeps retrying on fresh connections while the database is unreachable
    (a restart, a failover) or does not answer before it raises ``StoreUnavailable``. On the
    engine convostore creates for PostgreSQL, each connect, statement and wait for a pooled
    connection is bounded by half of it (at least 1 s), so a server that stops answering fails
    a call in about this time too. Default 10."""

    fast_path: bool = True
    """False: run every statement through SQLAlchemy's own execution (slower), never through
    the driver directly. convostore also does this by itself when an engine has ``echo`` or
    cursor-execute listeners, or when a private driver API it uses is missing. Default True."""

    max_text_chars: int = Field(default=100_000, ge=1)
    """Characters allowed in each text of a turn (question, answer, resolved question, template
    id, slot names and values, current slots and template). Default 100,000: some 25,000
    tokens, several times the longest answer a language model gives in one turn, while a
    runaway payload (a whole document as the answer) is refused instead of being loaded with
    the session on every cold read."""

    max_results_bytes: int = Field(default=1_000_000, ge=1)
    """Bytes allowed in one turn's ``results`` as JSON (``json.dumps``). Default 1,000,000:
    room for dozens of retrieved passages with their metadata, while keeping what a cold load
    of a long session reads bounded."""

    default_language: str | None = None
    """The language a new session is tagged with, and what ``update`` stores for a state whose
    ``language`` is None. Default None: a session has no language until the application sets
    ``state.language`` and calls ``update``, so statistics never guess one.
    ``get_session_manager()`` makes it "nl", the language of every state of the original
    SessionManager, unless its config sets it."""

    max_turns_per_session: int | None = Field(default=None, ge=2)
    """The most turns a live conversation keeps: an append beyond it takes the oldest
    exchanges out of the live conversation in its own transaction (never splitting one), into
    the transcript as superseded turns, kept until retention; a cold load then reads at most
    this many. Appends of a capped repository take a SQLAlchemy transaction, not the fast
    path. Default None: no cap."""

    auto_title: bool = False
    """True: a session without a title gets one from the first question appended to it by
    ``add_turn`` (its whitespace collapsed, cut at a word to at most 80 characters), in the
    append's own statement. Default False: sessions have a title only once ``set_title``
    gives them one."""

    schema: str | None = None  # type: ignore[assignment]  # BaseModel.schema(): deprecated
    """Where convostore's tables, views, sequence and version table live beside a host's, so
    that a host with tables of the same names (``sessions``, ``conversations``, ...) keeps
    them. PostgreSQL: a schema of that name (convostore's connections set ``search_path`` to
    it); MariaDB: a database of that name on the URL's server. Either is created by the first
    migration. SQLite refuses it (``ConfigError``): give convostore a database file of its own.
    Lower case letters, digits and ``_``, at most 63 characters. Default None: the
    connection's own schema or database, as before this setting existed."""

    redact: Callable[[str], str] | None = None
    """A transform applied to everything a turn says before it is stored: questions, answers,
    resolved questions, slot values (a turn's and ``current_slots``) and every string value in
    ``results`` (not keys, template ids or slot names), on ``add_turn`` and ``update``. What
    the call returns and the cache holds is the redacted text, as stored. One that raises or
    returns no string fails the call with ``RedactionFailed`` before any SQL. A callable
    cannot come from the environment: a ``CONVOSTORE_REDACT`` variable is a ``ConfigError``.
    Default None."""

    encryption_keys: Annotated[Sequence[str], NoDecode] = ()
    """Fernet keys (``Fernet.generate_key()``; needs ``pip install "convostore[encryption]"``)
    that encrypt turns' ``content``, ``resolved_question`` and ``results`` at rest: the first
    encrypts, every one decrypts, so a new key goes first and an old one stays until
    ``convostore rekey`` has re-encrypted its rows. Turns stored before keys were set still
    load. Env ``CONVOSTORE_ENCRYPTION_KEYS``: the keys separated by commas. A malformed key is a
    ``ConfigError``; ``repr()`` never shows a key. Default (): nothing encrypted (see
    docs/encryption.md)."""

    if not TYPE_CHECKING:  # hidden, so that type checkers keep checking a call's field names

        def __init__(self, **values: Any) -> None:
            """Validate ``values`` and the environment's settings; a value from the
            environment that is invalid raises ``ConfigError`` naming its variable."""
            try:
                super().__init__(**values)
            except ValidationError as exc:
                error = _key_error(exc, values) or _environment_error(exc, values)
                if error is None:
                    raise
                raise error from exc

    @classmethod
    def from_env(cls, env_file: str | os.PathLike[str] | None = None, **values: Any) -> StoreConfig:
        """The settings from ``values``, else the environment, else ``env_file`` (a ``.env``
        file of ``CONVOSTORE_<FIELD>=value`` lines; skipped if it does not exist; its other
        entries are ignored), else the defaults. ``StoreConfig(...)`` never reads a file."""
        return cls(_env_file=env_file, **values)  # type: ignore[call-arg]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor arguments, the environment, then the ``.env`` file's fields (no secrets
        directory)."""
        return init_settings, env_settings, _FieldsOnly(dotenv_settings)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "encryption_keys":
                yield name, tuple("***" for _ in value)
                continue
            secret = name in ("database_url", "listen_url") and value is not None
            yield name, hide_password(value) if secret else value

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """The environment's (or a string's) keys, separated by commas."""
        return _split_keys(value) if isinstance(value, str) else value

    @field_validator("encryption_keys")
    @classmethod
    def _usable_keys(cls, value: Sequence[str]) -> tuple[str, ...]:
        """The keys as a tuple (the config is immutable), each a Fernet key."""
        if value:
            TurnCipher(value)
        return tuple(value)

    @field_validator("session_ttl")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < MIN_SESSION_TTL:
            raise PydanticCustomError(
                "too_short",
                "Input should be at least {least} (a millisecond)",
                {"least": MIN_SESSION_TTL},
            )
        return value

    @field_validator("schema")
    @classmethod
    def _schema_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not _SCHEMA_NAME.fullmatch(value)
            or value in _RESERVED_SCHEMAS
            or value.startswith("pg_")
        ):
            raise PydanticCustomError(
                "schema_name",
                "Input should be a schema name of lower case letters, digits and _ (not "
                "starting with a digit, at most 63 characters) that is not the server's own "
                "(pg_*, information_schema, mysql, performance_schema, sys)",
            )
        return value

    @field_validator("default_language")
    @classmethod
    def _default_language(cls, value: str | None) -> str | None:
        return None if value is None else check_language(value)

    @model_validator(mode="after")
    def _no_plain_titles_of_sealed_questions(self) -> StoreConfig:
        """``auto_title`` copies a question into the catalog, which encryption does not cover:
        with ``encryption_keys`` it would keep in plain text what they are there to hide."""
        if self.auto_title and self.encryption_keys:
            raise ValueError(
                "auto_title stores each first question as a plain-text title, which "
                "encryption_keys do not cover; set titles with set_title instead"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_redis_fields(cls, data: Any) -> Any:
        """Accept the original SessionConfig's Redis settings so old code still runs, with a
        warning that Python shows by default, naming the caller's line: the database now does
        what Redis did, so the settings do nothing."""
        if isinstance(data, dict):
            legacy = [key for key in _LEGACY_REDIS_FIELDS if key in data]
            if legacy:
                warnings.warn(
                    f"StoreConfig ignores the Redis settings of the original SessionConfig "
                    f"({', '.join(legacy)}): sessions are stored in the SQL database at "
                    "database_url; remove them",
                    FutureWarning,
                    stacklevel=_stacklevel_outside(),
                )
                data = {k: v for k, v in data.items() if k not in _LEGACY_REDIS_FIELDS}
        return data
