"""Transcripts in and out of a convostore database (the Redis import, in ``_ops/redis_import.py``,
writes through the same plans).

- ``export_conversations``: conversations, live and retained, with their turns, as JSON Lines
  (one conversation a line) or CSV (one turn a line). Three ordered cursors (conversations,
  turns, slots) read one snapshot and are merged as they go, so memory stays flat however many
  turns there are.
- ``import_conversations``: that JSON Lines back, in batched transactions of executemany
  inserts; a malformed line (not UTF-8, not JSON, not a conversation) is reported with its
  number and reason and the rest goes on.

The imports write the rows the repository would have written (conversation, session, turns,
slots, feedback) and leave the rest to the schema's triggers. Conversation ids are kept where
free; on PostgreSQL the sequence ``conversation_ids`` is moved past the imported ids, so
conversations created later do not collide with them.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncResult

from convostore._core.crypt import TurnCipher, cipher_for
from convostore._core.engine import check_database, create_engine
from convostore._core.schema import (
    KEPT_FIELDS,
    conversations,
    exported,
    is_live,
    of_conversation,
    opened_fields,
    opened_json,
    rows_of_turns,
    session_field,
    sessions,
    turn_feedback,
    turn_slots,
    turns,
)
from convostore._core.validation import (
    MAX_SCORE,
    MIN_SCORE,
    Limits,
    Redact,
    check_content,
    check_idempotency_key,
    check_language,
    check_optional_content,
    check_optional_text,
    check_owner,
    check_session_id,
    check_span_id,
    check_summary,
    check_template_id,
    check_title,
    check_tool_field,
    check_trace_id,
    copy_json,
    copy_metadata,
    copy_results,
    copy_slots,
)
from convostore.backends import backend_for
from convostore.config import StoreConfig, check_setting
from convostore.errors import InvalidTurn, SchemaNotReady, translate_errors
from convostore.migrate import check_schema, upgrade
from convostore.models import STATE_FIELDS, Role, SessionFields, name_ordered

__all__ = [
    "CSV_COLUMNS",
    "ConversationRecord",
    "FeedbackRecord",
    "ImportCounts",
    "LineProblem",
    "SessionRecord",
    "TextSink",
    "TurnRecord",
    "export_conversations",
    "import_conversations",
]


class TextSink(Protocol):
    """Where an export writes: anything with ``write(str)``, such as an open text file."""

    def write(self, text: str, /) -> object: ...


Progress = Callable[[int], None]
"""Called with a running count (conversations written, lines or keys read) for a progress bar."""

_PAGE = 1000
"""Rows fetched per round trip from each export cursor."""
_PROGRESS_EVERY = 100
"""Conversations between two ``progress`` calls of an export."""
_BATCH_CONVERSATIONS = 500
_BATCH_TURNS = 10_000
"""An import transaction holds at most this many conversations or (about) turns."""
STORABLE = Limits(sys.maxsize, sys.maxsize)
"""Imports check that the database can hold each text and result, not a repository's size
limits: the data was stored once already, perhaps under larger limits."""

_c, _s, _t, _slot, _f = conversations.c, sessions.c, turns.c, turn_slots.c, turn_feedback.c


def utcnow() -> datetime:
    """Now, in UTC: what decides which sessions are live when no ``now`` is given."""
    return datetime.now(timezone.utc)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FeedbackRecord(_Record):
    """The feedback given on an answer (``add_feedback``)."""

    score: Annotated[int, Field(ge=MIN_SCORE, le=MAX_SCORE)]
    comment: str | None = None
    created_at: AwareDatetime

    @field_validator("comment")
    @classmethod
    def _storable_comment(cls, value: str | None) -> str | None:
        return check_optional_text("comment", value, STORABLE)


class TurnRecord(_Record):
    """One turn of an exported conversation."""

    seq: Annotated[int, Field(ge=1, le=2**31 - 1)]
    role: Role
    content: str
    resolved_question: str | None = None
    template_id: str | None = None
    slots: dict[str, str] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)
    created_at: AwareDatetime
    idempotency_key: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_arguments: Any = None
    data: Any = None
    feedback: FeedbackRecord | None = None
    """An answer's feedback (None: none given; a question never has any)."""

    @field_validator("content", "resolved_question", "template_id")
    @classmethod
    def _storable_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_optional_text(info.field_name or "text", value, STORABLE)

    @field_validator("slots")
    @classmethod
    def _storable_slots(cls, value: dict[str, str]) -> dict[str, str]:
        return copy_slots("slots", value, STORABLE)

    @field_validator("results")
    @classmethod
    def _storable_results(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return copy_results("results", value, STORABLE)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else check_idempotency_key(value)

    @field_validator("trace_id")
    @classmethod
    def _trace(cls, value: str | None) -> str | None:
        return check_trace_id("trace_id", value)

    @field_validator("span_id")
    @classmethod
    def _span(cls, value: str | None) -> str | None:
        return check_span_id("span_id", value)

    @field_validator("tool_name", "tool_call_id")
    @classmethod
    def _tool_field(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_tool_field(info.field_name or "tool field", value)

    @field_validator("tool_arguments", "data")
    @classmethod
    def _storable_json(cls, value: Any, info: ValidationInfo) -> Any:
        return copy_json(info.field_name or "data", value, STORABLE)

    @model_validator(mode="after")
    def _rated_answer(self) -> TurnRecord:
        if self.feedback is not None and self.role != "assistant":
            raise ValueError("only an assistant turn has feedback")
        return self


class SessionRecord(_Record):
    """The live session of an exported conversation: what its ``sessions`` row keeps besides
    the conversation's fields."""

    created_at: AwareDatetime
    last_accessed: AwareDatetime
    expires_at: AwareDatetime
    access_count: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0


class ConversationRecord(_Record):
    """One line of an export: a conversation with its turns. ``live`` conversations carry their
    ``session`` (and current slots and template); ended ones carry ``ended_at`` instead."""

    session_id: str
    conversation_id: Annotated[int, Field(ge=1, le=2**63 - 1)]
    user_id: str | None = None
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    live: bool = False
    language: str | None = None
    current_slots: dict[str, str] | None = None
    current_template_id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] | None = None
    summary: str | None = None
    summary_upto: int | None = None
    session: SessionRecord | None = None
    turns: list[TurnRecord] = Field(default_factory=list)

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, value: str) -> str:
        return check_session_id(value)

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        return check_owner(value)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return None if value is None else check_language(value)

    @field_validator("current_slots")
    @classmethod
    def _current_slots(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else copy_slots("current_slots", value, STORABLE)

    @field_validator("current_template_id")
    @classmethod
    def _current_template(cls, value: str | None) -> str | None:
        return check_optional_text("current_template_id", value, STORABLE)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        return check_title(value, STORABLE)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else copy_metadata("metadata", value, STORABLE)

    @model_validator(mode="after")
    def _consistent(self) -> ConversationRecord:
        check_summary(self.summary, self.summary_upto, STORABLE)
        if self.live != (self.session is not None):
            raise ValueError("live must be true exactly when the line has a session")
        if self.session is not None:
            if self.ended_at is not None:
                raise ValueError("a live conversation has no ended_at")
        elif (self.current_slots, self.current_template_id, self.summary) != (None, None, None):
            raise ValueError(
                "only a live conversation has current_slots, current_template_id or a summary"
            )
        previous = 0
        keys: set[str] = set()
        for index, turn in enumerate(self.turns):
            if turn.seq <= previous:
                raise ValueError(f"turns[{index}].seq is {turn.seq}, not above {previous}")
            previous = turn.seq
            if turn.idempotency_key is not None:
                if turn.idempotency_key in keys:
                    raise ValueError(f"turns[{index}].idempotency_key repeats an earlier turn's")
                keys.add(turn.idempotency_key)
        return self


CONVERSATION_COLUMNS = (
    "session_id",
    "conversation_id",
    "user_id",
    "started_at",
    "ended_at",
    "live",
    "language",
    "current_template_id",
    "current_slots",
    "title",
    "metadata",
    "summary",
    "summary_upto",
    "expires_at",
)
TURN_COLUMNS = (
    "seq",
    "role",
    "content",
    "resolved_question",
    "template_id",
    "slots",
    "results",
    "created_at",
    "idempotency_key",
    "trace_id",
    "span_id",
    "tool_name",
    "tool_call_id",
    "tool_arguments",
    "data",
    "feedback",
)
CSV_COLUMNS = CONVERSATION_COLUMNS + TURN_COLUMNS
"""The CSV header: each turn's row repeats its conversation's columns."""


_dumps = json.JSONEncoder(ensure_ascii=False).encode
"""JSON with ``results`` as written and slots in name order, as both backends read them back:
one database exports the same text from either, and an import of it stores what was
exported."""


@asynccontextmanager
async def opened(
    engine_or_url: AsyncEngine | str, *, writes: bool, schema: str | None = None
) -> AsyncIterator[AsyncEngine]:
    """The engine to use, on a schema this code runs on, in ``schema`` if given
    (``StoreConfig.schema``). A URL gets an engine of its own (disposed at the end); a writer
    upgrades an unmigrated SQLite file as a repository would, while PostgreSQL and MariaDB need
    ``convostore migrate`` first (``SchemaNotReady``)."""
    schema = check_setting("schema", schema)
    if isinstance(engine_or_url, str):
        config = StoreConfig(database_url=engine_or_url, schema=schema)
        check_database(config, None)
        engine, owned = create_engine(config), True
    else:
        check_database(StoreConfig(schema=schema), engine_or_url)
        engine, owned = engine_or_url, False
    try:
        try:
            await check_schema(engine, schema=schema)
        except SchemaNotReady:
            if not (writes and backend_for(engine).embedded):
                raise
            await upgrade(engine)
        yield engine
    finally:
        if owned:
            await engine.dispose()


def _snapshot(engine: AsyncEngine) -> AbstractAsyncContextManager[AsyncConnection]:
    """A connection whose reads all see one snapshot of the database."""
    return backend_for(engine).snapshot(engine)


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction; on SQLite it holds the write lock from the start, so the reads that
    plan a batch see what the batch's writes build on."""
    async with engine.begin() as conn:
        began = await conn.run_sync(backend_for(engine).begin_write)
        try:
            yield conn
        except BaseException:
            if began:
                # An engine in autocommit may skip SQLAlchemy's own rollback.
                with suppress(Exception):
                    await conn.exec_driver_sql("ROLLBACK")
            raise


def _filters(
    since: datetime | None,
    until: datetime | None,
    template: str | None,
    language: str | None,
    user: str | None,
) -> list[ColumnElement[bool]]:
    """The WHERE clauses on ``conversations`` (outer-joined to ``sessions``) an export asks for:
    started in [since, until), with a turn of ``template``, in ``language``, of ``user``; each
    filter checked by the rule the stored value follows, so that a value no conversation can
    have is an error, not an empty export."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")
    template = None if template is None else check_template_id(template)
    language = None if language is None else check_language(language)
    user = check_owner(user)
    clauses: list[ColumnElement[bool]] = []
    if since is not None:
        clauses.append(_c.started_at >= since)
    if until is not None:
        clauses.append(_c.started_at < until)
    if template is not None:
        other = turns.alias("with_template")
        clauses.append(exists().where(of_conversation(other.c), other.c.template_id == template))
    if language is not None:
        clauses.append(func.coalesce(_s.language, _c.language) == language)
    if user is not None:
        clauses.append(_c.user_id == user)
    return clauses


_HEAD = (
    _c.session_id,
    _c.conversation_id,
    _c.user_id,
    _c.started_at,
    _c.ended_at,
    _s.created_at,
    _s.last_accessed,
    _s.expires_at,
    _s.access_count,
    *(session_field(name) for name in STATE_FIELDS),
)
"""An exported conversation's columns: its own, its session row's (NULL if it has none)."""
_HEAD_NAMES = tuple(column.key for column in _HEAD)


def _export_queries(
    clauses: list[ColumnElement[bool]],
) -> tuple[Select[Any], Select[Any], Select[Any]]:
    """Conversations, their turns and their slots, each in key order, so that the three
    streams can be merged by equal keys alone (never by comparing strings in Python, whose
    order may not be the database's collation)."""
    with_session = conversations.outerjoin(sessions, of_conversation(_s))
    heads = (
        select(*_HEAD)
        .select_from(with_session)
        .where(*clauses)
        .order_by(_c.session_id, _c.conversation_id)
    )
    turn_rows = select(
        _t.session_id,
        _t.conversation_id,
        _t.seq,
        _t.role,
        _t.content,
        _t.resolved_question,
        _t.template_id,
        _t.results,
        _t.created_at,
        _t.idempotency_key,
        _t.trace_id,
        _t.span_id,
        _t.tool_name,
        _t.tool_call_id,
        _t.tool_arguments,
        _t.data,
        _f.score,
        _f.comment,
        _f.created_at.label("feedback_at"),
    ).order_by(_t.session_id, _t.conversation_id, _t.seq)
    slot_rows = select(
        _slot.session_id, _slot.conversation_id, _slot.seq, _slot.name, _slot.value
    ).order_by(_slot.session_id, _slot.conversation_id, _slot.seq, _slot.name)
    rated = turns.outerjoin(
        turn_feedback,
        and_(
            _f.session_id == _t.session_id,
            _f.conversation_id == _t.conversation_id,
            _f.seq == _t.seq,
        ),
    )
    if clauses:
        turn_rows = turn_rows.select_from(
            rated.join(conversations, of_conversation(_t)).outerjoin(sessions, of_conversation(_s))
        ).where(*clauses)
    else:
        turn_rows = turn_rows.select_from(rated)
        slot_rows = slot_rows.select_from(
            turn_slots.join(conversations, of_conversation(_slot)).outerjoin(
                sessions, of_conversation(_s)
            )
        ).where(*clauses)
    return heads, turn_rows, slot_rows


class _Buffered:
    """A result read whole (on a backend that streams one result at a time per connection),
    paged as a streamed one is."""

    __slots__ = ("_result",)

    def __init__(self, result: Result[Any]) -> None:
        self._result = result

    async def fetchmany(self, size: int) -> Sequence[Sequence[Any]]:
        return self._result.fetchmany(size)


class _Rows:
    """A streamed result, read a page at a time, with a look at the next row."""

    __slots__ = ("_at", "_done", "_result", "_rows")

    def __init__(self, result: AsyncResult[Any] | _Buffered) -> None:
        self._result = result
        self._rows: Sequence[Sequence[Any]] = ()
        self._at = 0
        self._done = False

    async def peek(self) -> Sequence[Any] | None:
        if self._at == len(self._rows):
            if self._done:
                return None
            self._rows, self._at = await self._result.fetchmany(_PAGE), 0
            if not self._rows:
                self._done = True
                return None
        return self._rows[self._at]

    def take(self) -> None:
        self._at += 1


def _head(row: Sequence[Any], now: datetime) -> dict[str, Any]:
    """A conversation's fields as exported. A session row whose expiry has passed (not swept
    yet) is shown as the sweep will leave it: ended at its last activity, keeping only the
    ``KEPT_FIELDS``."""
    fields = dict(zip(_HEAD_NAMES, row, strict=True))
    ended, expires = fields["ended_at"], fields["expires_at"]
    last_accessed = fields["last_accessed"]
    live = is_live(expires, now)
    if expires is not None and not live:
        ended = last_accessed
    return {
        "session_id": fields["session_id"],
        "conversation_id": fields["conversation_id"],
        "user_id": fields["user_id"],
        "started_at": fields["started_at"].isoformat(),
        "ended_at": None if ended is None else ended.isoformat(),
        "live": live,
        **{
            name: exported(fields[name]) if live or name in KEPT_FIELDS else None
            for name in STATE_FIELDS
        },
        "session": {
            "created_at": fields["created_at"].isoformat(),
            "last_accessed": last_accessed.isoformat(),
            "expires_at": expires.isoformat(),
            "access_count": fields["access_count"],
        }
        if live
        else None,
    }


def _turn(row: Any, slots: dict[str, str], cipher: TurnCipher | None) -> dict[str, Any]:
    content, resolved, results = opened_fields(
        cipher, row.content, row.resolved_question, row.results
    )
    arguments, data = opened_json(cipher, row.tool_arguments, row.data)
    score = row.score
    return {
        "seq": row.seq,
        "role": row.role,
        "content": content,
        "resolved_question": resolved,
        "template_id": row.template_id,
        "slots": slots,
        "results": results,
        "created_at": row.created_at.isoformat(),
        "idempotency_key": row.idempotency_key,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "tool_name": row.tool_name,
        "tool_call_id": row.tool_call_id,
        "tool_arguments": arguments,
        "data": data,
        "feedback": None
        if score is None
        else {"score": score, "comment": row.comment, "created_at": row.feedback_at.isoformat()},
    }


class _JsonLines:
    """Writes a conversation a line, each turn as soon as it is read."""

    def __init__(self, out: TextSink) -> None:
        self._out = out
        self._first = True

    def begin(self, head: dict[str, Any]) -> None:
        self._out.write(_dumps(head)[:-1] + ', "turns": [')
        self._first = True

    def turn(self, turn: dict[str, Any]) -> None:
        self._out.write(_dumps(turn) if self._first else ", " + _dumps(turn))
        self._first = False

    def end(self) -> None:
        self._out.write("]}\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return _dumps(value)
    return str(value)


class _Csv:
    """Writes a turn a row, after its conversation's columns; a conversation without turns
    still gets one row, with empty turn columns."""

    def __init__(self, out: TextSink) -> None:
        self._writer = csv.writer(out)
        self._writer.writerow(CSV_COLUMNS)
        self._head: list[str] = []
        self._rows = 0

    def begin(self, head: dict[str, Any]) -> None:
        session = head["session"]
        values = {**head, "expires_at": session and session["expires_at"]}
        self._head = [_cell(values[name]) for name in CONVERSATION_COLUMNS]
        self._rows = 0

    def turn(self, turn: dict[str, Any]) -> None:
        self._writer.writerow(self._head + [_cell(turn[name]) for name in TURN_COLUMNS])
        self._rows += 1

    def end(self) -> None:
        if not self._rows:
            self._writer.writerow(self._head + [""] * len(TURN_COLUMNS))


async def export_conversations(
    engine_or_url: AsyncEngine | str,
    out: TextSink,
    *,
    format: Literal["jsonl", "csv"] = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    template: str | None = None,
    language: str | None = None,
    user: str | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
    schema: str | None = None,
    encryption_keys: Sequence[str] = (),
) -> int:
    """Write the conversations (live and retained) to ``out``; returns how many.

    ``format="jsonl"``: one ``ConversationRecord`` per line, its turns last. ``"csv"``: the
    ``CSV_COLUMNS`` header, then a row per turn (give ``out`` opened with ``newline=""``).
    Filters, all optional: started in ``[since, until)`` (aware datetimes), has a turn of
    ``template``, in ``language``, owned by ``user``. A conversation is ``live`` when its
    session's expiry is after ``now`` (default: the current time). Reads one snapshot in
    constant memory; ``progress(written)`` is called every 100 conversations and at the end.
    ``schema``: where convostore's tables are (``StoreConfig.schema``). ``encryption_keys``
    (``StoreConfig.encryption_keys``) open encrypted turns: the export holds them as text.

    Raises:
        InvalidSessionId, InvalidTurn: a ``user``, ``language`` or ``template`` that breaks the
            rules of what is stored (``check_user_id``, ``check_language``,
            ``check_template_id``), before any SQL.
        ConfigError: a URL or engine convostore cannot use, or a malformed key.
        SchemaNotReady: the database lacks the newest migration.
        StoreError: the database failed.
        DecryptionFailed: an encrypted turn none of the keys opens.
    """
    if format not in ("jsonl", "csv"):
        raise ValueError(f"format must be 'jsonl' or 'csv', not {format!r}")
    queries = _export_queries(_filters(since, until, template, language, user))
    cipher = cipher_for(encryption_keys)
    moment = now or utcnow()
    written = 0
    async with opened(engine_or_url, writes=False, schema=schema) as engine:
        with translate_errors("exporting conversations"):
            async with _snapshot(engine) as conn:
                streams = backend_for(engine).concurrent_cursors
                heads, turn_rows, slot_rows = [
                    _Rows(
                        await conn.stream(query.execution_options(yield_per=_PAGE))
                        if streams
                        else _Buffered(await conn.execute(query))
                    )
                    for query in queries
                ]
                # Nothing is written (not even the CSV header) unless the database can be read.
                sink = _JsonLines(out) if format == "jsonl" else _Csv(out)
                while (head := await heads.peek()) is not None:
                    heads.take()
                    await _write_conversation(head, turn_rows, slot_rows, sink, moment, cipher)
                    written += 1
                    if progress is not None and written % _PROGRESS_EVERY == 0:
                        progress(written)
    if progress is not None:
        progress(written)
    return written


async def _write_conversation(
    head: Sequence[Any],
    turn_rows: _Rows,
    slot_rows: _Rows,
    sink: _JsonLines | _Csv,
    now: datetime,
    cipher: TurnCipher | None,
) -> None:
    """Merge one conversation's turns and slots from their streams into ``sink``."""
    sid, cid = head[0], head[1]
    sink.begin(_head(head, now))
    while (turn := await turn_rows.peek()) is not None and turn[1] == cid and turn[0] == sid:
        turn_rows.take()
        seq = turn[2]
        slots: dict[str, str] = {}
        while (slot := await slot_rows.peek()) is not None and (
            slot[1] == cid and slot[0] == sid and slot[2] <= seq
        ):
            slot_rows.take()
            if slot[2] == seq:  # a slot of no turn (never written so) is passed over
                slots[slot[3]] = slot[4]
        sink.turn(_turn(turn, name_ordered(slots), cipher))
    while (slot := await slot_rows.peek()) is not None and slot[1] == cid and slot[0] == sid:
        slot_rows.take()
    sink.end()


@dataclass(slots=True)
class NewConversation:
    """Rows of one conversation to insert; ``conversation_id`` None: a new one is allocated.
    The turn and slot rows carry conversation 0 until ``apply_plan`` sets the real one."""

    session_id: str
    conversation_id: int | None
    row: dict[str, Any]
    session: dict[str, Any] | None
    turns: list[dict[str, Any]]
    slots: list[dict[str, Any]]
    feedback: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """What one import transaction does, in order: end the sessions ``ended`` (their
    conversations are marked ended by the trigger), delete the conversations ``removed`` with
    their turns and slots, then insert ``added``."""

    ended: list[str] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    added: list[NewConversation] = field(default_factory=list)


_sids: BindParameter[Any] = bindparam("sids", expanding=True)
_cids: BindParameter[Any] = bindparam("cids", expanding=True)
_keys: BindParameter[Any] = bindparam("keys", expanding=True)
_conversations_of = select(_c.session_id, _c.conversation_id, _c.started_at).where(
    _c.session_id.in_(_sids)
)
sessions_of = select(_s.session_id, _s.conversation_id, _s.expires_at).where(
    _s.session_id.in_(_sids)
)
_holders = select(_c.session_id, _c.conversation_id).where(_c.conversation_id.in_(_cids))
_end_sessions = delete(sessions).where(_s.session_id.in_(_sids))
_remove = tuple(
    delete(table).where(tuple_(table.c.session_id, table.c.conversation_id).in_(_keys))
    for table in (turn_feedback, turn_slots, turns, sessions, conversations)
)
_largest_id = select(func.coalesce(func.max(_c.conversation_id), 0))
"""Moves the sequence past ``top``, never back: ``nextval`` is at least every id handed out."""


async def _new_ids(conn: AsyncConnection, plan: Plan) -> list[int]:
    """Ids for the conversations of ``plan`` without one: the sequence's next on PostgreSQL
    (moved past the ids kept already, by ``_plan``); on SQLite, whose writer holds the lock,
    the ids after the largest stored or kept."""
    kept = [new.conversation_id for new in plan.added if new.conversation_id is not None]
    wanted = len(plan.added) - len(kept)
    if not wanted:
        return []
    backend = backend_for(conn)
    if backend.new_ids_from_sequence():
        return await backend.next_conversation_ids(conn, wanted)
    top = max([(await conn.execute(_largest_id)).scalar_one(), *kept])
    return list(range(top + 1, top + 1 + wanted))


async def apply_plan(conn: AsyncConnection, plan: Plan) -> None:
    """Run ``plan`` on ``conn``, inserting with executemany."""
    if plan.ended:
        await conn.execute(_end_sessions, {"sids": plan.ended})
    if plan.removed:
        for statement in _remove:
            await conn.execute(statement, {"keys": plan.removed})
    fresh = iter(await _new_ids(conn, plan))
    rows: dict[Table, list[dict[str, Any]]] = {
        table: [] for table in (conversations, sessions, turns, turn_slots, turn_feedback)
    }
    for new in plan.added:
        cid = new.conversation_id if new.conversation_id is not None else next(fresh)
        key = {"session_id": new.session_id, "conversation_id": cid}
        rows[conversations].append({**key, **new.row})
        if new.session is not None:
            rows[sessions].append({**key, **new.session})
        for row in (*new.turns, *new.slots, *new.feedback):
            row["conversation_id"] = cid
        rows[turns] += new.turns
        rows[turn_slots] += new.slots
        rows[turn_feedback] += new.feedback
    for table, many in rows.items():
        if many:
            await conn.execute(insert(table), many)


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that was not imported, and why."""

    line: int
    """1-based line number."""
    reason: str


@dataclass(slots=True)
class ImportCounts:
    """What ``import_conversations`` did."""

    conversations: int = 0
    """Conversations written (new ones and replacements)."""
    sessions: int = 0
    """Live sessions written."""
    turns: int = 0
    slots: int = 0
    skipped: int = 0
    """Conversations already in the database (same session id and start), left as they were
    (``on_conflict="skip"``)."""
    replaced: int = 0
    """Conversations already in the database, deleted and written anew (``"replace"``)."""
    renumbered: int = 0
    """Conversations written under a new id because theirs was taken."""
    sessions_ended: int = 0
    """Live sessions in the database ended to make room for an imported live conversation of
    the same session id (``"replace"``)."""
    problems: list[LineProblem] = field(default_factory=list)
    """Lines not imported: malformed ones, and live conversations whose session id is live
    with another conversation."""


def validation_reason(exc: ValidationError) -> str:
    """A validation error on one line of text."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _rows_of(record: ConversationRecord, cipher: TurnCipher | None) -> NewConversation:
    """A record's rows (turns encrypted with ``cipher``), keeping its conversation id
    (``_plan`` may drop it)."""
    sid = record.session_id
    session = record.session
    last_seq = record.turns[-1].seq if record.turns else 0
    last_turn_at = record.turns[-1].created_at if record.turns else None
    rows, slot_rows = rows_of_turns(
        sid,
        0,
        ((turn.seq, turn, turn.created_at, turn.idempotency_key) for turn in record.turns),
        cipher,
    )
    return NewConversation(
        sid,
        record.conversation_id,
        {
            "user_id": record.user_id,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            # A live conversation's fields are its session's; the trigger copies them at its end.
            **{name: None if session else getattr(record, name) for name in KEPT_FIELDS},
            "last_activity": None if session else last_turn_at or record.started_at,
        },
        None
        if session is None
        else {
            "user_id": record.user_id,
            "created_at": session.created_at,
            "last_accessed": session.last_accessed,
            "expires_at": session.expires_at,
            "access_count": session.access_count,
            **_session_fields(record),
            "last_activity": last_turn_at or session.created_at,
            "turn_count": last_seq,
            "version": 0,
        },
        rows,
        slot_rows,
        [
            {"session_id": sid, "conversation_id": 0, "seq": turn.seq, **turn.feedback.model_dump()}
            for turn in record.turns
            if turn.feedback is not None
        ],
    )


def _session_fields(record: ConversationRecord) -> dict[str, Any]:
    """The session fields of a live record as its session row stores them (one the record
    leaves out, None: the field's default)."""
    stored = SessionFields().state_values()
    for name in stored:
        value = getattr(record, name)
        if value is not None:
            stored[name] = value
    return stored


async def _plan(
    conn: AsyncConnection,
    batch: list[tuple[int, ConversationRecord]],
    replace: bool,
    now: datetime,
    counts: ImportCounts,
    cipher: TurnCipher | None = None,
) -> Plan:
    """Decide, against what is stored, what to do with each record of ``batch``.

    A conversation is the same as a stored one when its session id and ``started_at`` are
    (its id may differ between databases). A conversation id is kept when no other
    conversation has it. A live record needs its session id: a session row whose expiry has
    passed is ended first, as ``get_or_create`` would; a live one of another conversation
    blocks the record unless ``replace``. On PostgreSQL the sequence is moved past the batch's
    ids before they are checked, so no conversation started from then on can take one of them
    (only one whose id was drawn just before and is not committed yet could)."""
    sids = sorted({record.session_id for _, record in batch})
    cids = sorted({record.conversation_id for _, record in batch})
    backend = backend_for(conn)
    if backend.new_ids_from_sequence():
        # Before the ids are checked: a conversation started from now on cannot take one.
        await backend.advance_conversation_ids(conn, cids[-1])
    stored = {
        (sid, started): cid
        for sid, cid, started in await conn.execute(_conversations_of, {"sids": sids})
    }
    live_rows = {
        sid: (cid, expires) for sid, cid, expires in await conn.execute(sessions_of, {"sids": sids})
    }
    holders: dict[int, set[str]] = {}
    for sid, cid in await conn.execute(_holders, {"cids": cids}):
        holders.setdefault(cid, set()).add(sid)
    plan = Plan()
    lines: dict[tuple[str, datetime], int] = {}
    sessions_claimed: dict[str, int] = {}
    for number, record in batch:
        sid = record.session_id
        identity = (sid, record.started_at)
        if identity in lines:
            counts.problems.append(
                LineProblem(number, f"the same conversation as line {lines[identity]}")
            )
            continue
        lines[identity] = number
        present = stored.get(identity)
        if present is not None and not replace:
            counts.skipped += 1
            continue
        if record.session is not None:
            if sid in sessions_claimed:
                counts.problems.append(
                    LineProblem(number, f"session {sid!r} is live on line {sessions_claimed[sid]}")
                )
                continue
            row = live_rows.get(sid)
            if row is not None and row[0] != present:
                if row[1] > now and not replace:
                    counts.problems.append(
                        LineProblem(
                            number,
                            f"session {sid!r} is live in the database with conversation "
                            f"{row[0]} (on_conflict='replace' ends it)",
                        )
                    )
                    continue
                plan.ended.append(sid)
                counts.sessions_ended += row[1] > now
            sessions_claimed[sid] = number
        if present is not None:
            plan.removed.append((sid, present))
            holders.get(present, set()).discard(sid)
            counts.replaced += 1
        new = _rows_of(record, cipher)
        if holders.get(record.conversation_id):
            new.conversation_id = None
            counts.renumbered += 1
        else:
            holders[record.conversation_id] = {sid}
        plan.added.append(new)
        counts.conversations += 1
        counts.sessions += new.session is not None
        counts.turns += len(new.turns)
        counts.slots += len(new.slots)
    return plan


def _redacted(record: ConversationRecord, redact: Redact) -> ConversationRecord:
    """``record`` with what its turns say and its slot values passed through ``redact`` and
    checked again, as a repository's writes are (``RedactionFailed`` if it fails)."""
    limits = replace(STORABLE, redact=redact)
    turns = [
        turn.model_copy(
            update={
                "content": check_content("content", turn.content, limits),
                "resolved_question": check_optional_content(
                    "resolved_question", turn.resolved_question, limits
                ),
                "slots": copy_slots("slots", turn.slots, limits),
                "results": copy_results("results", turn.results, limits),
            }
        )
        for turn in record.turns
    ]
    current = record.current_slots
    if current is not None:
        current = copy_slots("current_slots", current, limits)
    return record.model_copy(update={"turns": turns, "current_slots": current})


def _line_text(line: str | bytes, number: int) -> str:
    """A line's text: bytes are decoded as UTF-8, and a byte order mark at the start of the
    file, which some editors write, is dropped. Raises ``ValueError`` saying what is wrong."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            raise ValueError(
                f"not UTF-8: byte 0x{byte:02x} at position {exc.start + 1} (convert the file "
                "to UTF-8)"
            ) from None
    if line.startswith("\ufeff"):
        if number > 1:
            raise ValueError(
                "starts with a byte order mark (U+FEFF), which only the first line may have "
                "(files joined together?)"
            )
        line = line[1:]
    return line


async def import_conversations(
    engine_or_url: AsyncEngine | str,
    lines: Iterable[str | bytes],
    *,
    on_conflict: Literal["skip", "replace"] = "skip",
    progress: Progress | None = None,
    now: datetime | None = None,
    schema: str | None = None,
    redact: Redact | None = None,
    encryption_keys: Sequence[str] = (),
) -> ImportCounts:
    """Import JSON Lines as ``export_conversations`` writes them; returns the counts.

    ``lines`` are text, or bytes decoded as UTF-8 line by line (give a file opened in binary
    mode, so that a line in another encoding is one problem, not the end of the import); a byte
    order mark at the start of the first line is passed over. Each line is checked
    (``ConversationRecord``); a malformed one (not UTF-8, not JSON, not a conversation) is
    reported in ``problems`` with its line number and reason, and the import goes on. Lines
    are written in batches (500 conversations or about 10,000 turns), each one transaction. A
    conversation already stored (same session id and ``started_at``) is left as it is
    (``on_conflict="skip"``, so importing a file twice changes nothing) or deleted and written
    anew (``"replace"``). Conversation ids are kept unless taken; live conversations get
    their session rows back, expiry included (``now``, default the current time, decides
    which stored sessions are live). Blank lines are passed over; ``progress(lines_read)``
    is called after each batch. ``schema``: where convostore's tables are
    (``StoreConfig.schema``). ``redact`` (``StoreConfig.redact``): what the turns say and the
    slot values are stored as it returns them; a line it fails on is a problem, not imported.
    ``encryption_keys`` (``StoreConfig.encryption_keys``): the turns are stored encrypted
    with the first.

    Raises:
        ConfigError: a URL or engine convostore cannot use.
        SchemaNotReady: a PostgreSQL database lacks the newest migration (a SQLite file is
            upgraded).
        StoreError: the database failed; the batches before stay imported.
    """
    if on_conflict not in ("skip", "replace"):
        raise ValueError(f"on_conflict must be 'skip' or 'replace', not {on_conflict!r}")
    counts = ImportCounts()
    cipher = cipher_for(encryption_keys)
    async with opened(engine_or_url, writes=True, schema=schema) as engine:
        batch: list[tuple[int, ConversationRecord]] = []
        batch_turns = 0
        number = 0
        for number, line in enumerate(lines, start=1):
            try:
                text = _line_text(line, number)
            except ValueError as exc:
                counts.problems.append(LineProblem(number, str(exc)))
                continue
            if not text.strip():
                continue
            try:
                record = ConversationRecord.model_validate_json(text)
            except ValidationError as exc:
                counts.problems.append(LineProblem(number, validation_reason(exc)))
                continue
            if redact is not None:
                try:
                    record = _redacted(record, redact)
                except InvalidTurn as exc:
                    counts.problems.append(LineProblem(number, str(exc)))
                    continue
            batch.append((number, record))
            batch_turns += len(record.turns)
            if len(batch) >= _BATCH_CONVERSATIONS or batch_turns >= _BATCH_TURNS:
                await _import_batch(engine, batch, on_conflict == "replace", now, counts, cipher)
                batch, batch_turns = [], 0
                if progress is not None:
                    progress(number)
        if batch:
            await _import_batch(engine, batch, on_conflict == "replace", now, counts, cipher)
        if progress is not None:
            progress(number)
    return counts


async def _import_batch(
    engine: AsyncEngine,
    batch: list[tuple[int, ConversationRecord]],
    replace: bool,
    now: datetime | None,
    counts: ImportCounts,
    cipher: TurnCipher | None,
) -> None:
    """One transaction: plan the batch against the database, then write it."""
    with translate_errors("importing conversations"):
        async with writing(engine) as conn:
            plan = await _plan(conn, batch, replace, now or utcnow(), counts, cipher)
            await apply_plan(conn, plan)
