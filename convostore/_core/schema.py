"""The tables, in one ``metadata``: conversations, sessions, turns, turn_slots, turn_feedback.

Two lifetimes: a ``sessions`` row is the live state the API reads and writes, and goes when the
session ends (expiry, ``delete``); a ``conversations`` row is the transcript's header, and it and
its turns stay until ``transcript_retention`` has passed. A session id can be used again after
its session ended, so turns carry a ``conversation_id`` too, which tells the two apart.

Every key leads with ``session_id``, so one session's rows sit together (and on one shard of a
distributed PostgreSQL-compatible engine, with ``session_id`` as the distribution column).
Turns and their slots are rows, not a JSON blob, so appending costs the same at turn 1,000 as
at turn 1 and analytics need no JSON functions. The migrations in ``migrations/versions``
create exactly these tables (and, beside them, the triggers, the analytics views, the
full-text search's index and on PostgreSQL the sequence ``conversation_ids``); a test checks
they agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    String,
    Table,
    and_,
    func,
    text,
)

from convostore._core.crypt import SEALED_MARK, refuse_sealed
from convostore.backends._types import (
    ConversationKey,
    JSONDocument,
    JSONText,
    LongText,
    OptionalJSONText,
    SlotName,
    UTCDateTime,
)
from convostore.models import STATE_FIELDS, ConversationTurn, Role, make_turn, name_ordered

if TYPE_CHECKING:
    from convostore._core.crypt import TurnCipher

__all__ = [
    "KEPT_FIELDS",
    "MAX_SESSION_ID_LENGTH",
    "MAX_TOOL_FIELD_LENGTH",
    "SEARCH_INDEX",
    "SEARCH_TABLE",
    "SEARCH_TABLES",
    "SEARCH_VECTOR",
    "UTCDateTime",
    "changes",
    "compared",
    "conversation_ids",
    "conversations",
    "exported",
    "is_live",
    "live_session",
    "metadata",
    "of_conversation",
    "session_field",
    "sessions",
    "turn_at",
    "turn_feedback",
    "turn_slots",
    "turns",
]

MAX_SESSION_ID_LENGTH = 128
MAX_TOOL_FIELD_LENGTH = 255
"""The longest ``tool_name`` or ``tool_call_id`` a message may have (a VARCHAR column)."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


conversation_ids = Sequence("conversation_ids", metadata=metadata)
"""PostgreSQL: hands out conversation ids."""

conversations = Table(
    "conversations",
    metadata,
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("conversation_id", ConversationKey, nullable=False, autoincrement=False),
    Column("user_id", String(MAX_SESSION_ID_LENGTH), nullable=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("language", String(32), nullable=True),
    Column("title", LongText, nullable=True),
    Column("metadata", JSONDocument, nullable=True),
    Column("last_activity", UTCDateTime(), nullable=True),
    Column("forked_from", String(MAX_SESSION_ID_LENGTH), nullable=True),
    Column("forked_from_conversation", BigInteger(), nullable=True),
    Column("forked_upto", Integer(), nullable=True),
    Column("superseded_by", BigInteger(), nullable=True),
    Column("superseded_reason", String(16), nullable=True),
    PrimaryKeyConstraint("session_id", "conversation_id"),
    Index(None, "conversation_id"),
    Index(None, "user_id", "conversation_id"),
    Index(None, "ended_at"),
    Index(None, "user_id", "last_activity", "conversation_id"),
)
"""One row per conversation: everything said under one session id from its creation until its
session ended. ``ended_at`` is NULL while the session lives; when the ``sessions`` row goes, a
trigger sets it to the session's last access (``last_accessed``) and copies its language and
its catalog fields (``title``, ``metadata``, ``last_activity``), which are NULL until then.
The retention sweep deletes conversations whose ``ended_at`` is older than
``transcript_retention``, with their turns and slots (by cascade).

A fork's conversation records where its history came from (``forked_from`` session,
``forked_from_conversation``, ``forked_upto`` turn). A conversation with ``superseded_by``
holds turns taken out of that live conversation (``superseded_reason``: ``"rewind"`` or
``"cap"``); it is ended from the start, keeps its turns' numbers, and is not in the
catalog."""

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("conversation_id", ConversationKey, nullable=False),
    Column("user_id", String(MAX_SESSION_ID_LENGTH), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_accessed", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("access_count", BigInteger(), nullable=False),
    Column("language", String(32), nullable=True),
    Column("current_template_id", LongText, nullable=True),
    Column("current_slots", JSONDocument, nullable=False),
    Column("turn_count", Integer(), nullable=False),
    Column("version", BigInteger(), nullable=False),
    Column("title", LongText, nullable=True),
    Column("metadata", JSONDocument, nullable=True),
    Column("last_activity", UTCDateTime(), nullable=True),
    Column("summary", LongText, nullable=True),
    Column("summary_upto", Integer(), nullable=True),
    PrimaryKeyConstraint("session_id"),
    Index(None, "expires_at"),
    Index(None, "user_id", "last_activity", "conversation_id"),
)
"""One row per live session, pointing at its conversation. ``turn_count`` hands out turn
sequence numbers; ``version`` is bumped by every write of the session's content, so a cached
copy can tell whether it is current. ``user_id`` (the owner, or NULL) is set at creation and
never changes. ``language`` is NULL until something tags the session with one.
``last_activity`` is when the session was created or last had turns appended (the catalog's
order, ``list_sessions``); convostore always sets it, and only rows older code wrote lack it.
``metadata`` NULL reads as an empty object. ``summary`` summarises the turns up to
``summary_upto`` (both NULL: no summary)."""

_in_conversation = ["session_id", "conversation_id"]

turns = Table(
    "turns",
    metadata,
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("conversation_id", ConversationKey, nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", LongText, nullable=False),
    Column("resolved_question", LongText, nullable=True),
    Column("template_id", LongText, nullable=True),
    Column("results", JSONText, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("idempotency_key", String(MAX_SESSION_ID_LENGTH), nullable=True),
    Column("trace_id", String(32), nullable=True),
    Column("span_id", String(16), nullable=True),
    Column("tool_name", String(MAX_TOOL_FIELD_LENGTH), nullable=True),
    Column("tool_call_id", String(MAX_TOOL_FIELD_LENGTH), nullable=True),
    Column("tool_arguments", OptionalJSONText, nullable=True),
    Column("data", OptionalJSONText, nullable=True),
    PrimaryKeyConstraint("session_id", "conversation_id", "seq"),
    ForeignKeyConstraint(
        _in_conversation,
        [f"conversations.{name}" for name in _in_conversation],
        ondelete="CASCADE",
    ),
    Index(
        None,
        "session_id",
        "conversation_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL"),
    ),
)
"""One row per message; ``seq`` counts from 1 within the conversation. The first turn of every
append carries the append's ``idempotency_key`` (unique within the conversation), so an append
sent twice is stored once. The key's index holds only the turns that have one: half the rows,
and a read of a conversation's turns by ``seq`` is never planned through it. ``trace_id`` and
``span_id`` (OpenTelemetry's, as lowercase hex) tie a turn to the trace that produced it.
``role`` is ``user``, ``assistant``, ``system`` or ``tool``; the tool columns and ``data`` (a
framework's own record of the message, as JSON) are NULL unless ``add_messages`` stored them."""

turn_slots = Table(
    "turn_slots",
    metadata,
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("conversation_id", ConversationKey, nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("name", SlotName, nullable=False),
    Column("value", LongText, nullable=False),
    PrimaryKeyConstraint("session_id", "conversation_id", "seq", "name"),
    ForeignKeyConstraint(
        _in_conversation,
        [f"conversations.{name}" for name in _in_conversation],
        ondelete="CASCADE",
    ),
)
"""One row per slot a turn carried (e.g. place = Utrecht), keyed by its turn's key.

The foreign key points at the conversation, not the turn: rows are only ever written together
with their turn and deleted with their conversation, and cascading once per conversation
instead of once per turn makes deleting transcripts much faster on PostgreSQL."""


turn_feedback = Table(
    "turn_feedback",
    metadata,
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("conversation_id", ConversationKey, nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("score", SmallInteger(), nullable=False),
    Column("comment", LongText, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("session_id", "conversation_id", "seq"),
    ForeignKeyConstraint(
        _in_conversation,
        [f"conversations.{name}" for name in _in_conversation],
        ondelete="CASCADE",
    ),
)
"""One row per assistant turn that got feedback (``add_feedback``), keyed by that turn's key;
a second call replaces it, and ``created_at`` is when the row was last written. ``score`` is
-2..2. Kept with the transcript: its foreign key, like ``turn_slots``', points at the
conversation, so the retention sweep and ``erase_user`` take it along. The analytics view
``feedback`` shows each row with its exchange."""


KEPT_FIELDS = tuple(name for name in STATE_FIELDS if name in conversations.c)
"""The session fields a conversation keeps when its session ends (a trigger copies them)."""


def session_field(name: str) -> ColumnElement[Any]:
    """The session field ``name`` (of ``models.STATE_FIELDS``) of a conversation outer-joined
    to its session row, labelled ``name``: the session's while the row exists, then the
    conversation's copy if it keeps one (``KEPT_FIELDS``), else NULL."""
    column = sessions.c[name]
    if name in KEPT_FIELDS:
        return func.coalesce(column, conversations.c[name]).label(name)
    return column.label(name)


def exported(value: Any) -> Any:
    """A session field's value as the exports write it: slots in name order."""
    return name_ordered(value) if isinstance(value, dict) else value


def of_conversation(columns: Any) -> ColumnElement[bool]:
    """The join condition of a table with ``conversations``: ``columns`` (the table's ``c``)
    hold a row of that conversation (both key columns match)."""
    key = conversations.c
    return and_(
        columns.session_id == key.session_id, columns.conversation_id == key.conversation_id
    )


def live_session(expires_at: Any, now: Any) -> ColumnElement[bool]:
    """Whether a session is live at ``now``, in SQL: its row exists (``expires_at`` is not
    NULL, as an outer join leaves it for an ended conversation) and its expiry is in the
    future. This is what ``get`` serves, and the one meaning of "live" in ``stats``, the report,
    ``list_sessions``, the exports and the analytics views (which use the database's clock)."""
    return and_(expires_at.is_not(None), expires_at > now)


def is_live(expires_at: datetime | None, now: datetime) -> bool:
    """``live_session`` for a row already read: ``expires_at`` None means no session row."""
    return expires_at is not None and expires_at > now


TURN_FIELDS = (
    turns.c.seq,
    turns.c.role,
    turns.c.content,
    turns.c.resolved_question,
    turns.c.template_id,
    turns.c.results,
    turns.c.created_at,
    turns.c.trace_id,
    turns.c.span_id,
    turns.c.tool_name,
    turns.c.tool_call_id,
    turns.c.tool_arguments,
    turns.c.data,
)
"""A turn as every read of turns selects it: its number, then what a turn holds."""

TRANSCRIPT_TURNS = (turns.c.conversation_id, *TURN_FIELDS)
"""The columns of a transcript's turn rows (``grouped_turns`` reads them)."""

TRANSCRIPT_SLOTS = (
    turn_slots.c.conversation_id,
    turn_slots.c.seq,
    turn_slots.c.name,
    turn_slots.c.value,
)
"""The columns of a transcript's slot rows."""


class TranscriptTurn(NamedTuple):
    """One stored turn with its slots, as read for ``show`` and ``export_user``."""

    seq: int
    role: Role
    content: str
    resolved_question: str | None
    template_id: str | None
    slots: dict[str, str]
    results: Any
    created_at: datetime
    trace_id: str | None
    span_id: str | None
    tool_name: str | None
    tool_call_id: str | None
    tool_arguments: Any
    data: Any


def grouped_turns(
    turn_rows: Iterable[Any], slot_rows: Iterable[Any], cipher: TurnCipher | None = None
) -> dict[int, list[TranscriptTurn]]:
    """Rows of ``TRANSCRIPT_TURNS`` (in order) and ``TRANSCRIPT_SLOTS`` (in any order), as
    each conversation's turns, their slots in name order; encrypted turns opened with
    ``cipher`` (``DecryptionFailed`` without it)."""
    slots: dict[tuple[int, int], dict[str, str]] = {}
    for cid, seq, name, value in slot_rows:
        slots.setdefault((cid, seq), {})[name] = value
    grouped: dict[int, list[TranscriptTurn]] = {}
    for row in turn_rows:
        cid, seq = row.conversation_id, row.seq
        content, resolved, results = opened_fields(
            cipher, row.content, row.resolved_question, row.results
        )
        arguments, data = opened_json(cipher, row.tool_arguments, row.data)
        grouped.setdefault(cid, []).append(
            TranscriptTurn(
                seq=seq,
                role=row.role,
                content=content,
                resolved_question=resolved,
                template_id=row.template_id,
                slots=name_ordered(slots.get((cid, seq), {})),
                results=results,
                created_at=row.created_at,
                trace_id=row.trace_id,
                span_id=row.span_id,
                tool_name=row.tool_name,
                tool_call_id=row.tool_call_id,
                tool_arguments=arguments,
                data=data,
            )
        )
    return grouped


def opened_fields(
    cipher: TurnCipher | None, content: str, resolved: str | None, results: Any
) -> tuple[str, str | None, Any]:
    """A turn row's encrypted fields as written: opened with ``cipher``, or, without one,
    checked not to be encrypted (``DecryptionFailed``)."""
    if cipher is None:
        if content.startswith(SEALED_MARK):
            refuse_sealed(content)
        return content, resolved, results
    return cipher.open(content), cipher.open_optional(resolved), cipher.open_results(results)


def opened_json(cipher: TurnCipher | None, arguments: Any, data: Any) -> tuple[Any, Any]:
    """A message row's ``tool_arguments`` and ``data`` as written: opened with ``cipher``
    where sealed (a JSON string of the sealed text), else as they are; without a cipher, a
    sealed value raises ``DecryptionFailed``."""
    return _opened_value(cipher, arguments), _opened_value(cipher, data)


def _opened_value(cipher: TurnCipher | None, value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(SEALED_MARK):
        return value
    if cipher is None:
        refuse_sealed(value)
    assert cipher is not None
    return json.loads(cipher.open(value))


def sealed_json(cipher: TurnCipher | None, arguments: Any, data: Any) -> tuple[Any, Any]:
    """A message's ``tool_arguments`` and ``data`` as stored: with ``cipher``, each one that
    is not None sealed (the token of its JSON text, a JSON string)."""
    if cipher is None:
        return arguments, data
    return (
        None if arguments is None else cipher.seal_results(arguments),
        None if data is None else cipher.seal_results(data),
    )


def turn_at(turn: ConversationTurn | TranscriptTurn, created_at: datetime) -> ConversationTurn:
    """``turn`` as stored at ``created_at``, built without validation: what is stored was
    checked before it was written."""
    return make_turn(
        role=turn.role,
        content=turn.content,
        resolved_question=turn.resolved_question,
        template_id=turn.template_id,
        slots=turn.slots,
        results=turn.results,
        created_at=created_at,
        trace_id=turn.trace_id,
        span_id=turn.span_id,
        tool_name=turn.tool_name,
        tool_call_id=turn.tool_call_id,
        tool_arguments=turn.tool_arguments,
        data=turn.data,
    )


class TurnFields(Protocol):
    """What a turn row is made of: a ``ConversationTurn``, or an imported turn record."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...

    @property
    def resolved_question(self) -> str | None: ...

    @property
    def template_id(self) -> str | None: ...

    @property
    def slots(self) -> Mapping[str, str]: ...

    @property
    def results(self) -> Any: ...

    @property
    def trace_id(self) -> str | None: ...

    @property
    def span_id(self) -> str | None: ...

    @property
    def tool_name(self) -> str | None: ...

    @property
    def tool_call_id(self) -> str | None: ...

    @property
    def tool_arguments(self) -> Any: ...

    @property
    def data(self) -> Any: ...


def rows_of_turns(
    sid: str,
    cid: int,
    numbered: Iterable[tuple[int, TurnFields, datetime, str | None]],
    cipher: TurnCipher | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``turns`` and ``turn_slots`` rows of turns of conversation ``cid`` of session
    ``sid``, each given as (seq, turn, created_at, idempotency key); with ``cipher``, their
    ``content``, ``resolved_question`` and ``results`` encrypted."""
    rows: list[dict[str, Any]] = []
    slot_rows: list[dict[str, Any]] = []
    for seq, turn, created_at, key in numbered:
        content, resolved, results = turn.content, turn.resolved_question, turn.results
        arguments, data = sealed_json(cipher, turn.tool_arguments, turn.data)
        if cipher is not None:
            content, resolved = cipher.seal(content), cipher.seal_optional(resolved)
            results = cipher.seal_results(results)
        rows.append(
            {
                "conversation_id": cid,
                "session_id": sid,
                "seq": seq,
                "role": turn.role,
                "content": content,
                "resolved_question": resolved,
                "template_id": turn.template_id,
                "results": results,
                "created_at": created_at,
                "idempotency_key": key,
                "trace_id": turn.trace_id,
                "span_id": turn.span_id,
                "tool_name": turn.tool_name,
                "tool_call_id": turn.tool_call_id,
                "tool_arguments": arguments,
                "data": data,
            }
        )
        slot_rows.extend(
            {"conversation_id": cid, "session_id": sid, "seq": seq, "name": name, "value": value}
            for name, value in turn.slots.items()
        )
    return rows, slot_rows


changes = Table(
    "convostore_changes",
    MetaData(),
    Column("id", Integer(), primary_key=True),
    Column("session_id", String(MAX_SESSION_ID_LENGTH), nullable=False),
    Column("version", BigInteger(), nullable=False),
)
"""The feed of session changes, one row per write that moved a session's version (``version``
-1: the session was deleted), appended in the writer's transaction: by triggers on SQLite
(migration 0002); on PostgreSQL, where ``id`` is an identity column (0005), by the writing
statement itself and, for a deletion, by a trigger (0007). Other processes poll it to
evict what they cached (``coherence``); the expiry sweep prunes it. It is kept out of
``metadata``, whose tables the migrations must create alike on both backends."""


SEARCH_TABLE = "turns_search"
"""SQLite: the FTS5 table over ``turns`` (external content: it reads the text from ``turns``
by rowid), kept by triggers on ``turns`` (migration 0010)."""
SEARCH_TABLES = (
    SEARCH_TABLE,
    *(f"{SEARCH_TABLE}_{part}" for part in ("data", "idx", "docsize", "config")),
)
"""SQLite: ``SEARCH_TABLE`` and the shadow tables FTS5 keeps its index in."""
SEARCH_VECTOR = "search_vector"
"""PostgreSQL: the stored generated ``tsvector`` column of ``turns`` (migration 0010)."""
SEARCH_INDEX = "ix_turns_search"
"""PostgreSQL: the GIN index on ``search_vector``; MariaDB: the FULLTEXT index on ``turns``'
``content`` and ``resolved_question`` (migration 0010)."""


def compared(name: str | None, type_: str, parent_names: Any) -> bool:
    """alembic's ``include_name`` filter for comparing a database with ``metadata``: only the
    tables in ``metadata``, never a host application's in the same database (nor the change
    feed, which the migrations manage apart). The full-text search's parts (``SEARCH_TABLE``,
    ``SEARCH_VECTOR``, ``SEARCH_INDEX``) differ per database, so the migrations manage them
    apart too: the shared ``metadata`` has none of them."""
    if type_ == "table":
        return name in metadata.tables
    return name not in (SEARCH_VECTOR, SEARCH_INDEX)
