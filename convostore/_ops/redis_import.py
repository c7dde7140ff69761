"""The sessions the original SessionManager kept in Redis, moved into convostore.

The original stored one JSON blob per key (``SessionEntry.to_dict()``, under ``prefix`` plus the
session id) with the session's TTL on the key. ``import_redis`` reads them with SCAN and writes
each as a live session with its conversation, turns and slots, expiring when its key would
have; a malformed entry is reported with its reason and the rest goes on. Needs the ``redis``
package (``pip install "convostore[redis]"``), imported only when ``import_redis`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.crypt import TurnCipher, cipher_for
from convostore._core.schema import rows_of_turns
from convostore._core.validation import (
    check_language,
    check_optional_text,
    check_session_id,
    check_turn,
    copy_slots,
)
from convostore._ops.transfer import (
    STORABLE,
    NewConversation,
    Plan,
    Progress,
    apply_plan,
    opened,
    sessions_of,
    utcnow,
    validation_reason,
    writing,
)
from convostore.config import check_setting
from convostore.errors import ConfigError, StoreError, translate_errors
from convostore.models import ConversationTurn

__all__ = ["RedisImportReport", "SkippedEntry", "import_redis"]

_REDIS_SCAN = 500
"""Keys asked for per SCAN call."""


def _original_time(value: object) -> datetime:
    """A timestamp as the original's ``SessionEntry.from_dict`` reads it (ISO 8601 text); it
    wrote UTC, so a time without zone is taken as UTC."""
    if not isinstance(value, str):
        raise ValueError(f"must be ISO 8601 text, not {type(value).__name__}")
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class _OriginalState(BaseModel):
    """The original ``ConversationState`` (its turns have the fields of convostore's turn,
    without ``created_at``). Its language defaults to "nl", as the original model's did: the
    original application's states were all Dutch."""

    turns: list[ConversationTurn] = Field(default_factory=list)
    current_slots: dict[str, str] = Field(default_factory=dict)
    current_template_id: str | None = None
    language: str = "nl"


class _OriginalEntry(BaseModel):
    """The original ``SessionEntry.to_dict()``, read as leniently as its ``from_dict``."""

    session_id: str
    state: _OriginalState
    created_at: datetime
    last_accessed: datetime
    access_count: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0

    @field_validator("created_at", "last_accessed", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return _original_time(value)


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """A Redis key that was not imported, and why."""

    key: str
    reason: str


@dataclass(slots=True)
class RedisImportReport:
    """What ``import_redis`` did."""

    imported: int = 0
    """Sessions written, each a live session with its conversation."""
    turns: int = 0
    slots: int = 0
    already_present: int = 0
    """Entries whose session id is live in the database, left as it is (``on_conflict="skip"``)."""
    replaced: int = 0
    """Entries whose session id was live in the database: that session was ended (its
    transcript stays, as after any session end) and the entry imported (``"replace"``)."""
    skipped: list[SkippedEntry] = field(default_factory=list)
    """Keys not imported: malformed entries, other value types, keys gone meanwhile."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """A parsed entry with its expiry."""

    session_id: str
    entry: _OriginalEntry
    expires_at: datetime


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _parse_entry(
    key: str, prefix: str, value: object, pttl: object, now: datetime, ttl: float
) -> _Entry | str:
    """The entry under ``key`` with its expiry, or the reason it cannot be imported."""
    if isinstance(value, Exception):
        return f"cannot be read as a string value: {value}"
    if not isinstance(value, bytes) or pttl == -2:
        return "the key expired or was deleted during the import"
    try:
        sid = check_session_id(key[len(prefix) :])
        entry = _OriginalEntry.model_validate_json(value)
        if entry.session_id != sid:
            return f"its session_id {entry.session_id!r} is not the key's"
        state = entry.state
        for index, turn in enumerate(state.turns):
            check_turn(f"state.turns[{index}]", turn, STORABLE)
        copy_slots("state.current_slots", state.current_slots, STORABLE)
        check_optional_text("state.current_template_id", state.current_template_id, STORABLE)
        check_language(state.language)
    except ValidationError as exc:
        return validation_reason(exc)
    except ValueError as exc:  # convostore's checks
        return str(exc)
    left = timedelta(seconds=ttl)
    if isinstance(pttl, int) and pttl >= 0:  # -1: the key never expires
        left = timedelta(milliseconds=pttl)
    return _Entry(sid, entry, now + left)


def _rows_of_entry(parsed: _Entry, cipher: TurnCipher | None) -> NewConversation:
    """An entry's rows (turns encrypted with ``cipher``): a live conversation started at its
    ``created_at``. The original kept no time per turn, so every turn gets the entry's
    ``last_accessed`` (its last write)."""
    sid, entry = parsed.session_id, parsed.entry
    state = entry.state
    rows, slot_rows = rows_of_turns(
        sid,
        0,
        ((seq, turn, entry.last_accessed, None) for seq, turn in enumerate(state.turns, 1)),
        cipher,
    )
    return NewConversation(
        sid,
        None,
        {"user_id": None, "started_at": entry.created_at, "ended_at": None, "language": None},
        {
            "user_id": None,
            "created_at": entry.created_at,
            "last_accessed": entry.last_accessed,
            "expires_at": parsed.expires_at,
            "access_count": entry.access_count,
            "language": state.language,
            "current_template_id": state.current_template_id,
            "current_slots": state.current_slots,
            "turn_count": len(rows),
            "version": 0,
        },
        rows,
        slot_rows,
    )


async def import_redis(
    engine_or_url: AsyncEngine | str,
    redis_url: str,
    *,
    prefix: str = "heritage:session:",
    db: int = 1,
    now: datetime | None = None,
    session_ttl: float | None = None,
    on_conflict: Literal["skip", "replace"] = "skip",
    progress: Progress | None = None,
    schema: str | None = None,
    encryption_keys: Sequence[str] = (),
) -> RedisImportReport:
    """Import the sessions the original SessionManager kept in Redis; returns the report.

    Reads every key ``prefix<session id>`` of database ``db`` (unless ``redis_url`` names
    one, which wins, as in the original) with SCAN, each value in the original's
    ``SessionEntry.to_dict()`` format, and writes it as a live session with its conversation,
    turns and slots, one transaction per SCAN page. The session expires when the key would
    have: ``now`` (default: the time each page is read) plus the key's remaining TTL; a key
    without one gets ``session_ttl`` (default ``StoreConfig``'s, 1800 s). A session id that is
    live in the database is left alone and counted as ``already_present``
    (``on_conflict="skip"``), or ended and replaced (``"replace"``). A bad entry never stops
    the import: it is reported in ``skipped`` with the reason. ``schema``: where convostore's
    tables are (``StoreConfig.schema``). ``encryption_keys`` (``StoreConfig.encryption_keys``):
    the turns are stored encrypted with the first. Needs ``convostore[redis]``.

    Raises:
        ConfigError: a URL or engine convostore cannot use, a ``session_ttl`` that
            ``StoreConfig`` would refuse, or the redis package is missing.
        SchemaNotReady: a PostgreSQL database lacks the newest migration.
        StoreError: the database or Redis failed; the pages before stay imported.
    """
    try:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError
    except ImportError as missing:
        raise ConfigError(
            'import_redis needs the redis package: pip install "convostore[redis]"'
        ) from missing
    if on_conflict not in ("skip", "replace"):
        raise ValueError(f"on_conflict must be 'skip' or 'replace', not {on_conflict!r}")
    ttl = float(check_setting("session_ttl", session_ttl))
    cipher = cipher_for(encryption_keys)
    try:
        client = Redis.from_url(redis_url, db=db)
    except ValueError as exc:
        raise ConfigError(f"redis_url: {exc}") from None
    report = RedisImportReport()
    pattern = _glob_escape(prefix) + "*"
    seen: set[str] = set()
    read = 0
    try:
        async with opened(engine_or_url, writes=True, schema=schema) as engine:
            cursor: int | None = None
            while cursor != 0:
                cursor, keys = await client.scan(cursor or 0, match=pattern, count=_REDIS_SCAN)
                parsed: list[_Entry] = []
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.pttl(key)
                    replies = await pipe.execute(raise_on_error=False)
                moment = now or utcnow()
                for index, raw_key in enumerate(keys):
                    read += 1
                    key = (
                        raw_key
                        if isinstance(raw_key, str)
                        else raw_key.decode("utf-8", "backslashreplace")
                    )
                    if key in seen:  # SCAN may return a key twice
                        continue
                    seen.add(key)
                    value, pttl = replies[2 * index], replies[2 * index + 1]
                    entry = _parse_entry(key, prefix, value, pttl, moment, ttl)
                    if isinstance(entry, str):
                        report.skipped.append(SkippedEntry(key, entry))
                    else:
                        parsed.append(entry)
                if parsed:
                    await _import_entries(
                        engine, parsed, on_conflict == "replace", moment, report, cipher
                    )
                if progress is not None:
                    progress(read)
    except RedisError as exc:
        raise StoreError(f"reading Redis failed: {exc}") from exc
    finally:
        await client.aclose()
    return report


async def _import_entries(
    engine: AsyncEngine,
    entries: list[_Entry],
    replace: bool,
    now: datetime,
    report: RedisImportReport,
    cipher: TurnCipher | None,
) -> None:
    """One transaction for one SCAN page's entries."""
    plan = Plan()
    with translate_errors("importing Redis sessions"):
        async with writing(engine) as conn:
            sids = [entry.session_id for entry in entries]
            stored = {
                sid: expires for sid, _, expires in await conn.execute(sessions_of, {"sids": sids})
            }
            for entry in entries:
                expires = stored.get(entry.session_id)
                if expires is not None:
                    if expires > now and not replace:
                        report.already_present += 1
                        continue
                    plan.ended.append(entry.session_id)
                    report.replaced += expires > now
                new = _rows_of_entry(entry, cipher)
                plan.added.append(new)
                report.imported += 1
                report.turns += len(new.turns)
                report.slots += len(new.slots)
            await apply_plan(conn, plan)
