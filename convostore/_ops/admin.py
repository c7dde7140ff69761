"""What the people who run convostore ask of a database, as library functions: how much it
holds (``stats``), one session's transcripts (``transcripts``) and what a sweep would delete
(``sweep_preview``), read with SQLAlchemy Core. The ``convostore`` command prints them.

These only read. ``open_database`` and ``command_config`` never migrate: a database without
the newest schema raises ``SchemaNotReady``, and a SQLite URL that names no file raises
``ConfigError`` instead of leaving an empty database behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import BindParameter, and_, bindparam, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from convostore._core.crypt import cipher_for
from convostore._core.engine import check_database, create_engine
from convostore._core.schema import (
    TRANSCRIPT_SLOTS,
    TRANSCRIPT_TURNS,
    UTCDateTime,
    conversations,
    grouped_turns,
    is_live,
    live_session,
    of_conversation,
    session_field,
    sessions,
    turn_at,
    turn_slots,
    turns,
)
from convostore._core.validation import check_session_id
from convostore.backends import backend_for
from convostore.backends._urls import hide_password
from convostore.config import StoreConfig, check_setting, settings_error
from convostore.errors import ConfigError, translate_errors
from convostore.migrate import check_schema
from convostore.models import ConversationTurn

__all__ = [
    "StoreStats",
    "Transcript",
    "command_config",
    "open_database",
    "snapshot",
    "stats",
    "sweep_preview",
    "transcripts",
]

_s, _c, _t, _slot = sessions.c, conversations.c, turns.c, turn_slots.c
_now = bindparam("now", type_=UTCDateTime())
_session_row = conversations.outerjoin(sessions, of_conversation(_s))
"""Each conversation with its session row, if the session has not ended."""


def command_config(
    url: str, *, transcript_retention: float | None = None, schema: str | None = None
) -> StoreConfig:
    """Settings for a repository that one command starts and stops, on convostore's tables in
    ``schema`` (``StoreConfig.schema``) if given: it never migrates, sweeps in the background or
    listens for other workers' writes. Raises ``ConfigError`` for a URL convostore cannot use,
    a SQLite file that does not exist, a retention out of range and a schema the backend
    refuses."""
    options: dict[str, Any] = {"schema": schema}
    if transcript_retention is not None:
        options["transcript_retention"] = transcript_retention
    try:
        config = StoreConfig(
            database_url=url,
            auto_migrate=False,
            cleanup_interval=0,
            refresh_delay=0,
            cache_coherence="local",
            **options,
        )
    except ValidationError as exc:
        raise settings_error(exc) from exc
    check_database(config, None)
    parsed = make_url(url)
    path = backend_for(parsed).is_local_file(parsed)
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"database_url {hide_password(url)!r} names no database file ({path} does not "
            "exist): check the path, or create the database with `convostore migrate`"
        )
    return config


@asynccontextmanager
async def open_database(url: str, *, schema: str | None = None) -> AsyncIterator[AsyncEngine]:
    """An engine on the convostore database at ``url`` (its tables in ``schema`` if given),
    disposed afterwards.

    Raises:
        ConfigError: a URL convostore cannot use, or a SQLite file that does not exist.
        SchemaNotReady: the database lacks the newest migration.
        StoreError: the database cannot be reached.
    """
    engine = create_engine(command_config(url, schema=schema))
    try:
        await check_schema(engine, schema=schema)
        yield engine
    finally:
        await engine.dispose()


def snapshot(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    """A read-only transaction whose statements all see the same data (``Backend.snapshot``:
    REPEATABLE READ on PostgreSQL; on SQLite an explicit BEGIN, as sqlite3 begins no
    transaction before a read)."""
    return backend_for(engine).snapshot(engine)


def _utc_now(now: datetime | None) -> datetime:
    return datetime.now(timezone.utc) if now is None else now


def _ranked(rows: Any) -> list[tuple[str | None, int]]:
    """(name, count) rows, most first, then by name (None last), the same on every backend."""
    pairs = [(name, int(count)) for name, count in rows]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0] is None, pair[0] or ""))


@dataclass(frozen=True)
class StoreStats:
    """How much a convostore database holds, at one moment."""

    backend: str
    """``sqlite`` or ``postgresql``."""
    live_sessions: int
    """Sessions a ``get`` returns: their session row has not expired."""
    expired_sessions: int
    """Sessions past their expiry whose rows wait for the sweep (reads see them as gone)."""
    ended_conversations: int
    """Retained transcripts: conversations whose session ended (``ended_at`` set)."""
    turns: int
    """Turns stored, live and retained (two per exchange)."""
    languages: list[tuple[str | None, int]]
    """Conversations per language, live and retained, most first."""
    templates: list[tuple[str | None, int]]
    """Questions per template (None: no template), live and retained, most first."""
    database_bytes: int | None
    """The database's size as the backend reports it, or None where it does not."""

    def as_json(self) -> dict[str, Any]:
        """The figures as data ``json.dumps`` takes as is."""
        return {
            "backend": self.backend,
            "live_sessions": self.live_sessions,
            "expired_sessions": self.expired_sessions,
            "ended_conversations": self.ended_conversations,
            "turns": self.turns,
            "languages": [
                {"language": language, "conversations": count} for language, count in self.languages
            ],
            "templates": [
                {"template_id": template, "questions": count} for template, count in self.templates
            ],
            "database_bytes": self.database_bytes,
        }


def _count(table: Any, *where: Any) -> Any:
    return select(func.count()).select_from(table).where(*where).scalar_subquery()


_live = live_session(_s.expires_at, _now)
_totals = select(
    _count(sessions, _live),
    _count(sessions, ~_live),
    _count(conversations, _c.ended_at.is_not(None)),
    _count(turns),
)
_language = func.coalesce(_s.language, _c.language)
_per_language = select(_language, func.count()).select_from(_session_row).group_by(_language)
_per_template = (
    select(_t.template_id, func.count()).where(_t.role == "user").group_by(_t.template_id)
)


async def stats(engine: AsyncEngine, now: datetime | None = None) -> StoreStats:
    """Count sessions (live, and expired waiting for the sweep), retained conversations and
    turns, conversations per language and questions per template, as of ``now`` (default: the
    current time), and read the database's size; all in one snapshot."""
    params = {"now": _utc_now(now)}
    with translate_errors("reading the statistics"):
        async with snapshot(engine) as conn:
            live, expired, ended, turn_count = (await conn.execute(_totals, params)).one()
            languages = _ranked(await conn.execute(_per_language))
            templates = _ranked(await conn.execute(_per_template))
            size = await backend_for(engine).database_bytes(conn)
    return StoreStats(
        backend=backend_for(engine).name,
        live_sessions=int(live),
        expired_sessions=int(expired),
        ended_conversations=int(ended),
        turns=int(turn_count),
        languages=languages,
        templates=templates,
        database_bytes=size,
    )


@dataclass(frozen=True)
class Transcript:
    """One conversation under a session id, with its turns in order."""

    session_id: str
    conversation_id: int
    user_id: str | None
    language: str | None
    title: str | None
    started_at: datetime
    ended_at: datetime | None
    """When its session ended (its last activity); None while the session row exists."""
    live: bool
    """Whether ``get(session_id)`` returns it: its session row exists and has not expired."""
    turns: list[ConversationTurn]

    def as_json(self) -> dict[str, Any]:
        """The transcript as data ``json.dumps`` takes as is (timestamps in ISO 8601)."""
        return {
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "language": self.language,
            "title": self.title,
            "started_at": self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "live": self.live,
            "turns": [
                {
                    "role": turn.role,
                    "content": turn.content,
                    "resolved_question": turn.resolved_question,
                    "template_id": turn.template_id,
                    "slots": turn.slots,
                    "results": turn.results,
                    "created_at": None if turn.created_at is None else turn.created_at.isoformat(),
                    "tool_name": turn.tool_name,
                    "tool_call_id": turn.tool_call_id,
                    "tool_arguments": turn.tool_arguments,
                }
                for turn in self.turns
            ],
        }


_sid = bindparam("sid", type_=_c.session_id.type)
_cids: BindParameter[Any] = bindparam("cids", expanding=True)
_heads = (
    select(
        _c.conversation_id,
        _c.user_id,
        _language,
        session_field("title"),
        _c.started_at,
        _c.ended_at,
        _s.expires_at,
    )
    .select_from(_session_row)
    .where(_c.session_id == _sid)
    .order_by(_c.conversation_id)
)
_turn_rows = (
    select(*TRANSCRIPT_TURNS)
    .where(_t.session_id == _sid, _t.conversation_id.in_(_cids))
    .order_by(_t.conversation_id, _t.seq)
)
_slot_rows = select(*TRANSCRIPT_SLOTS).where(
    _slot.session_id == _sid, _slot.conversation_id.in_(_cids)
)


async def transcripts(
    engine: AsyncEngine,
    session_id: str,
    *,
    include_ended: bool = False,
    now: datetime | None = None,
    encryption_keys: Sequence[str] = (),
) -> list[Transcript]:
    """The live conversation of ``session_id`` as of ``now``, and with ``include_ended`` the
    ended ones kept under that id too, oldest first; an empty list when there is none.
    ``encryption_keys`` (``StoreConfig.encryption_keys``) open encrypted turns.

    Read in SQL without the repository, so looking at a session does not keep it alive.

    Raises:
        InvalidSessionId: a bad session id, before any SQL.
        ConfigError: a malformed key.
        DecryptionFailed: an encrypted turn none of the keys opens.
    """
    sid = check_session_id(session_id)
    cipher = cipher_for(encryption_keys)
    when = _utc_now(now)
    with translate_errors("reading a transcript"):
        async with snapshot(engine) as conn:
            heads = [
                (cid, user, language, title, started, ended, is_live(expires, when))
                for cid, user, language, title, started, ended, expires in await conn.execute(
                    _heads, {"sid": sid}
                )
            ]
            if not include_ended:
                heads = [head for head in heads if head[-1]]
            if not heads:
                return []
            params = {"sid": sid, "cids": [head[0] for head in heads]}
            turn_rows = (await conn.execute(_turn_rows, params)).all()
            slot_rows = (await conn.execute(_slot_rows, params)).all()
    turns_of = grouped_turns(turn_rows, slot_rows, cipher)
    return [
        Transcript(
            sid,
            cid,
            user,
            language,
            title,
            started,
            ended,
            live,
            [turn_at(turn, turn.created_at) for turn in turns_of.get(cid, [])],
        )
        for cid, user, language, title, started, ended, live in heads
    ]


_cutoff = bindparam("cutoff", type_=UTCDateTime())
_would_sweep = select(
    _count(sessions, _s.expires_at <= _now),
    _count(
        _session_row,
        or_(
            _c.ended_at <= _cutoff,
            and_(_s.expires_at <= _now, _s.last_accessed <= _cutoff),
        ),
    ),
)
"""What ``sweep_expired`` at ``now`` would delete: the expired sessions (the first pass of
``statements.sweep``), and the conversations ended by ``cutoff`` (``sweep_transcripts``),
counting those the first pass ends, which the trigger dates at their ``last_accessed``."""


async def sweep_preview(
    engine: AsyncEngine, *, retention: float, now: datetime | None = None
) -> tuple[int, int]:
    """How many sessions and transcripts a sweep at ``now`` with ``transcript_retention``
    ``retention`` would delete, counted without deleting anything. A retention out of
    ``StoreConfig``'s range is a ``ConfigError``."""
    retention = check_setting("transcript_retention", retention)
    when = _utc_now(now)
    params = {"now": when, "cutoff": when - timedelta(seconds=retention)}
    with translate_errors("counting what a sweep would delete"):
        async with snapshot(engine) as conn:
            expired, transcripts_gone = (await conn.execute(_would_sweep, params)).one()
    return int(expired), int(transcripts_gone)
