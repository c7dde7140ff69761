"""``StoreConfig``: where the store lives and how long sessions and cached states last."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .urls import hide_password

__all__ = ["DATABASE_URL_ENV", "DEFAULT_DATABASE_URL", "StoreConfig", "resolve_database_url"]

DATABASE_URL_ENV = "CONVOSTORE_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///convostore.db"
_LEGACY_REDIS_FIELDS = ("redis_enabled", "redis_url", "redis_prefix", "redis_db")


def resolve_database_url(explicit: str | None = None) -> str:
    """The database URL to use: ``explicit``, else env ``CONVOSTORE_DATABASE_URL``, else a
    SQLite file ``convostore.db`` in the working directory. Migrations use the same rule."""
    return explicit or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


class StoreConfig(BaseModel):
    """Settings of a ``SessionRepository``. Durations are seconds (int or float).

    ``repr()`` and ``str()`` show the database URL with its password as ``***``, and validation
    errors leave out the values given, so neither shows a password.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    database_url: str = Field(default_factory=resolve_database_url)
    """SQLAlchemy async URL: ``sqlite+aiosqlite:///file.db`` or ``postgresql+asyncpg://...``.
    Default: env ``CONVOSTORE_DATABASE_URL``, else ``sqlite+aiosqlite:///convostore.db``.
    Checked when a ``SessionRepository`` is built (``ConfigError``), not here: a repository
    given an engine does not use it."""

    session_ttl: float = Field(default=1800, gt=0)
    """Seconds of inactivity after which a session expires (sliding). Default 1800."""

    transcript_retention: float = Field(default=30 * 24 * 3600, ge=0)
    """Seconds the transcript of an ended session (its ``conversations`` row, turns and slots)
    stays queryable in SQL, counted from the conversation's last activity. 0: it is deleted
    with the session (by the same sweep or ``delete``). Default 30 days. The API never reads
    an ended conversation; ``list_sessions``, ``export_user`` and ``erase_user`` do."""

    cleanup_interval: float = Field(default=300, ge=0)
    """Seconds between scheduled expiry sweeps; 0 disables the background task. Default 300."""

    max_sessions: int = Field(default=10_000, ge=1)
    """Capacity of the in-process LRU cache, in sessions. Default 10,000."""

    auto_migrate: bool | None = None
    """True: ``start()`` upgrades the schema to the newest migration; False: it raises
    ``SchemaNotReady`` on a database that lacks it. Default None, automatic: True on SQLite,
    the embedded store that has no deploy step of its own, False on PostgreSQL, where a
    production schema changes in the deploy (``convostore migrate``), not when a worker starts.
    ``get_session_manager()`` takes None as True on both, as the original manager needed no
    migration step."""

    sweep_batch_size: int = Field(default=500, ge=1)
    """Sessions deleted per expiry transaction (and, in the sweep's transcript pass,
    conversations), so a sweep never holds long locks. Default 500 (on PostgreSQL, about 10 ms
    a batch of sessions and 9 ms a batch of their 10-turn transcripts; see BENCHMARKS.md)."""

    pool_size: int = Field(default=5, ge=1)
    """Connections the repository's own engine keeps open. Default 5."""

    max_overflow: int = Field(default=10, ge=0)
    """Extra connections the engine may open under load. Default 10."""

    cache_coherence: Literal["bounded", "strict", "local"] = "bounded"
    """How the cache learns of other processes' writes. ``"bounded"`` (default): a write or
    delete through any repository on the database drops the cached copies of every other
    within about 50 ms, and a cache hit runs no SQL (PostgreSQL: a LISTEN connection; SQLite:
    a poll of the file every 20 ms). ``"strict"``: each hit checks the stored version first
    (one small read; always fresh). ``"local"``: no such check; only safe for a single
    process per database."""

    listen_url: str | None = None
    """PostgreSQL, ``"bounded"`` coherence: the URL the change listener connects to. Default:
    ``database_url``. Behind a transaction pooler (``pooler="pgbouncer"``), where LISTEN
    cannot work, give the server's direct address here."""

    pooler: Literal["pgbouncer"] | None = None
    """``"pgbouncer"``: the URL points at PgBouncer in transaction mode, so convostore uses no
    named prepared statements (asyncpg's and SQLAlchemy's statement caches off). Default None."""

    reconnect_timeout: float = Field(default=10, ge=0)
    """Seconds a call keeps retrying on fresh connections while the database is unreachable
    (a restart, a failover) before it raises ``StoreUnavailable``. Default 10."""

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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            secret = name in ("database_url", "listen_url") and value is not None
            yield name, hide_password(value) if secret else value

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_redis_fields(cls, data: Any) -> Any:
        """Accept the original SessionConfig's Redis settings so old code still runs, with a
        warning: the database now does what Redis did."""
        if isinstance(data, dict) and any(key in data for key in _LEGACY_REDIS_FIELDS):
            warnings.warn(
                "StoreConfig ignores the Redis settings of the original SessionConfig: "
                "sessions are stored in the SQL database at database_url",
                DeprecationWarning,
                stacklevel=2,
            )
            data = {k: v for k, v in data.items() if k not in _LEGACY_REDIS_FIELDS}
        return data
