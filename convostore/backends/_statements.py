"""The statements of the repository's operations (load, append, update, delete, expiry
refreshes, the sweep, the change feed), as SQLAlchemy Core, built once per backend.

Where databases differ, a statement takes its part from the backend (``Backend``); what only
one backend runs (PostgreSQL's feed polls, SQLite's PRAGMAs) is built in its module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    CompoundSelect,
    Insert,
    Integer,
    ScalarSelect,
    Select,
    SmallInteger,
    String,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql

from convostore._core.schema import (
    TURN_FIELDS,
    changes,
    conversations,
    sessions,
    turn_feedback,
    turn_slots,
    turns,
)
from convostore.backends import Backend
from convostore.backends._types import JSONDocument, JSONText, UTCDateTime
from convostore.models import FIELD_WRITES, SESSION_COLUMNS, STATE_FIELDS

__all__ = ["Statements", "UpdateThenRead"]


class UpdateThenRead(NamedTuple):
    """``UPDATE ... RETURNING`` for a backend without it (MariaDB): the UPDATE, then, if it
    matched the session row, the SELECT of the columns it would have returned, in the same
    transaction (which holds the row's lock, so the SELECT sees exactly what was written)."""

    update: Update
    read: Select[Any]


class Statements:
    """The statements for one backend, from its parts where databases differ (``Backend``).

    Parameter names: ``sid`` session id; ``uid`` the caller's user id (None: any owner);
    ``cid`` conversation id; ``now`` and ``expires`` timestamps; ``hits`` accesses to add to
    ``access_count``; ``n`` turns being appended; ``key`` the append's idempotency key;
    ``merge`` slots to merge into ``current_slots`` and ``template_id`` the template to make
    current; ``seq`` a turn's number, ``score`` and ``comment`` the feedback on it; each of
    ``models.STATE_FIELDS`` under its own name, the session fields to set; ``batch`` rows per
    batch.

    ``feed=False`` (PostgreSQL): the writes that move a session's version leave the change
    feed alone, as on a schema without coherence (the benchmark's baseline); convostore itself
    always records them.
    """

    def __init__(self, backend: Backend, *, feed: bool = True) -> None:
        self.backend = backend
        self._feed = feed and backend.feed_in_statement
        now = bindparam("now", type_=UTCDateTime())
        sid = bindparam("sid", type_=String())
        live = and_(sessions.c.session_id == sid, sessions.c.expires_at > now)
        key = bindparam("key", type_=String())
        self.conversation_of = (
            select(sessions.c.conversation_id).where(sessions.c.session_id == sid).scalar_subquery()
        )
        """The live conversation of session ``sid``."""
        self.key_stored: Select[Any] = select(turns.c.seq).where(
            turns.c.session_id == sid,
            turns.c.conversation_id == self.conversation_of,
            turns.c.idempotency_key == key,
        )
        """The turn that carries an append's idempotency key, if that append is stored."""
        stored_here = select(turns.c.seq).where(
            turns.c.session_id == sessions.c.session_id,
            turns.c.conversation_id == sessions.c.conversation_id,
            turns.c.idempotency_key == key,
        )
        fresh = and_(live, ~stored_here.exists())
        uid = bindparam("uid", type_=String())
        owned = or_(cast(uid, String()).is_(None), sessions.c.user_id == uid)
        refreshed: dict[str, Any] = {
            "last_accessed": now,
            "expires_at": bindparam("expires", type_=UTCDateTime()),
            "access_count": sessions.c.access_count + bindparam("hits"),
        }
        grown: dict[str, Any] = {
            **refreshed,
            "turn_count": sessions.c.turn_count + bindparam("n"),
            "version": sessions.c.version + 1,
            "last_activity": now,
        }
        template = bindparam("template_id", type_=Text())

        self._bump = (
            update(sessions)
            .where(fresh, owned)
            .values(
                **grown,
                current_slots=self._merged_slots(),
                current_template_id=func.coalesce(template, sessions.c.current_template_id),
                title=func.coalesce(sessions.c.title, bindparam("auto_title", type_=Text())),
            )
        )
        self.allocate = self._recorded(self._bump)
        """Allocate ``n`` sequence numbers on a live session that ``uid`` may write, merging
        slots and template and giving it the title ``auto_title`` if it has none, unless the
        append with idempotency ``key`` is stored already. Returns (turn_count, version,
        conversation_id)."""

        replace = (
            update(sessions)
            .where(fresh, owned)
            .values(
                **grown,
                **{name: bindparam(name, type_=sessions.c[name].type) for name in STATE_FIELDS},
            )
        )
        self.replace = self._recorded(replace)
        """Allocate ``n`` sequence numbers on a live session that ``uid`` may write, setting
        its fields, unless the write with idempotency ``key`` is stored already (a NULL key
        never is)."""

        self.rewind = self._recorded(
            update(sessions)
            .where(live, owned, sessions.c.version == bindparam("expected", type_=BigInteger()))
            .values(
                **refreshed,
                version=sessions.c.version + 1,
                turn_count=bindparam("to", type_=Integer()),
                last_activity=now,
                **{name: bindparam(name, type_=sessions.c[name].type) for name in STATE_FIELDS},
            )
        )
        """A rewind of a live session at version ``expected`` that ``uid`` may write: its
        newest turn becomes ``to``, its fields the ones given (the context of the turns it
        keeps)."""

        self.replace_if_unchanged = self._recorded(
            replace.where(sessions.c.version == bindparam("expected", type_=BigInteger()))
        )
        """``replace``, only on the session at version ``expected``."""

        upto = bindparam("summary_upto", type_=Integer())
        covered = or_(cast(upto, Integer()).is_(None), sessions.c.turn_count >= upto)
        self.set_fields = {
            names: self._recorded(
                update(sessions)
                .where(live, owned, *([covered] if "summary_upto" in names else []))
                .values(
                    **refreshed,
                    version=sessions.c.version + 1,
                    **{name: bindparam(name, type_=sessions.c[name].type) for name in names},
                )
            )
            for names in FIELD_WRITES
        }
        """Per group of ``models.FIELD_WRITES``: set those fields of a live session that
        ``uid`` may write (a read of the session too: its expiry slides); a summary only if
        the session has the turns it covers. Returns (turn_count, version,
        conversation_id)."""

        answer = turns.c
        self.give_feedback: Insert = backend.insert_replacing(
            turn_feedback,
            list(turn_feedback.primary_key),
            select(
                answer.session_id,
                answer.conversation_id,
                answer.seq,
                bindparam("score", type_=SmallInteger()).label("score"),
                bindparam("comment", type_=Text()).label("comment"),
                now.label("created_at"),
            ).where(
                answer.session_id == sid,
                answer.conversation_id
                == select(sessions.c.conversation_id).where(live, owned).scalar_subquery(),
                answer.seq == bindparam("seq", type_=Integer()),
                answer.role == "assistant",
            ),
            ["score", "comment", "created_at"],
        )
        """Store ``score`` and ``comment`` as the feedback on turn ``seq`` of the live session's
        conversation, replacing any given before, if that turn is an answer and ``uid`` may
        write the session (else nothing: no row counted)."""

        self.slide_expiry = self._returning(
            update(sessions).where(live).values(**refreshed), sessions.c.version
        )
        """Slide a live session's expiry."""
        later = backend.greatest
        self.slide_expiry_behind: Update = (
            update(sessions)
            .where(live)
            .values(
                last_accessed=later(sessions.c.last_accessed, now),
                expires_at=later(sessions.c.expires_at, bindparam("expires", type_=UTCDateTime())),
                access_count=sessions.c.access_count + bindparam("hits"),
            )
        )
        """A refresh written behind a read at ``now``: slides the expiry of the session if it
        was live then, never backwards (a write since may have slid it further)."""

        self.create: Insert = backend.insert_ignoring(
            sessions, [sessions.c.session_id], sessions.c.conversation_id
        )
        """Insert a session row unless one exists (concurrent creators do not collide);
        returns its conversation id if it inserted it (or, on MariaDB, the existing row's)."""
        next_id = backend.next_conversation_id(
            select(func.coalesce(func.max(conversations.c.conversation_id), 0)).scalar_subquery()
        )
        self.start_conversation = (
            insert(conversations)
            .values(session_id=sid, conversation_id=next_id, user_id=uid, started_at=now)
            .returning(conversations.c.conversation_id)
        )
        """A new conversation's row; its session row is inserted next, in the same
        transaction."""
        self.delete_conversation = delete(conversations).where(
            conversations.c.session_id == sid,
            conversations.c.conversation_id == bindparam("cid", type_=BigInteger()),
        )
        """A conversation and (by cascade) its turns and slots."""
        self.owner_of = select(sessions.c.user_id).where(live)
        """The owner of the live session ``sid`` (no row: there is none)."""

        self.drop_expired = (
            delete(sessions)
            .where(sessions.c.session_id == bindparam("sid"), sessions.c.expires_at <= now)
            .returning(sessions.c.conversation_id)
        )
        """Delete the session if it has expired; returns its conversation if it did."""
        self.delete = (
            delete(sessions)
            .where(sessions.c.session_id == bindparam("sid"), owned)
            .returning(sessions.c.expires_at, sessions.c.conversation_id)
        )
        """Delete the session if ``uid`` may; returns its expiry and conversation if it did."""
        expired_ids = (
            select(sessions.c.session_id)
            .where(sessions.c.expires_at <= now)
            .order_by(sessions.c.expires_at)
            .limit(bindparam("batch", type_=Integer()))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        self.sweep = (
            delete(sessions)
            .where(self._one_of(sessions.c.session_id, expired_ids))
            .returning(sessions.c.session_id)
        )
        """Delete up to ``batch`` expired sessions (their conversations end, by trigger),
        skipping rows another transaction holds (PostgreSQL), so sweepers never wait on each
        other."""
        past_retention = (
            select(conversations.c.conversation_id)
            .where(conversations.c.ended_at <= bindparam("cutoff", type_=UTCDateTime()))
            .order_by(conversations.c.ended_at)
            .limit(bindparam("batch", type_=Integer()))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        self.sweep_transcripts = (
            delete(conversations)
            .where(self._one_of(conversations.c.conversation_id, past_retention))
            .returning(conversations.c.conversation_id)
        )
        """Delete up to ``batch`` conversations that ended by ``cutoff``, with their turns and
        slots (by cascade), skipping rows another transaction holds. Conversation ids are
        unique on their own, so the batch is found through their index."""
        self.prune_changes = delete(changes).where(
            changes.c.id <= select(func.max(changes.c.id)).scalar_subquery() - bindparam("keep")
        )
        """Drop all but the newest ``keep`` rows of the change feed (on PostgreSQL about as
        many: its ids have gaps)."""
        self.changes_since = (
            select(changes.c.id, changes.c.session_id, changes.c.version)
            .where(changes.c.id > bindparam("after", type_=Integer()))
            .order_by(changes.c.id)
        )
        """SQLite: the change feed after row ``after``."""
        self.oldest_change = select(func.min(changes.c.id))
        self.newest_change = select(func.coalesce(func.max(changes.c.id), 0))
        self.version_of = select(sessions.c.version, sessions.c.expires_at).where(
            sessions.c.session_id == bindparam("sid")
        )
        """A session's version and expiry: what a strict cache checks a hit against."""
        self.insert_turns: Insert = insert(turns)
        self.insert_slots: Insert = insert(turn_slots)

        self.load: CompoundSelect[Any] = self._load(backend)
        """A whole session in one statement (so one round trip and one snapshot): the turns
        of its live conversation."""

        self.load_session, self.load_turns, self.load_slots = self._load_in_parts()
        """SQLite's fast path: ``load`` as three statements in one read transaction (one
        snapshot) and one thread hop. SQLite merges the ordered union of ``load`` in a
        coroutine per part, which took much of its time; each part here is a plain range scan
        in index order."""

        self.append_cte: Select[Any] | None = (
            self._one_statement_append() if backend.one_statement_append else None
        )
        """PostgreSQL: the whole append (``allocate`` plus the turn and slot inserts) as one
        statement; None on SQLite, which runs them as one transaction in one thread hop."""
        self.append_row: Select[Any] | None = (
            self._one_row(self.append_cte) if self.append_cte is not None else None
        )
        """PostgreSQL: ``append_cte`` returning one row always (NULLs: nothing written)."""

    @staticmethod
    def _load(backend: Backend) -> CompoundSelect[Any]:
        """A session's row, then each turn's row followed by its slot rows, in one result.

        The session row comes first (``seq`` 0; turns count from 1) and carries its fields in
        the column ``session``, a JSON object keyed by their names (``_session_object``); the
        turn and slot columns are NULL in it. Turns are read up to
        the session's ``turn_count`` within the same statement, so an append committed
        meanwhile is either wholly in or wholly out; only the newest ``window`` of them. Turns
        and slots are two index range scans; a join here would leave the plan to statistics,
        and on a new table without them PostgreSQL made it quadratic.

        PostgreSQL: slot names are sorted in the "C" collation (by code point, as SQLite's
        BINARY and Python's ``sorted`` do), whatever the database's collation, so a turn's
        slots read back in the order the cache holds them.
        """
        sid = bindparam("sid", type_=String())
        upto = select(sessions.c.turn_count).where(sessions.c.session_id == sid).scalar_subquery()
        conversation = (
            select(sessions.c.conversation_id).where(sessions.c.session_id == sid).scalar_subquery()
        )
        after = upto - bindparam("window", type_=Integer())
        turn_rows = select(
            *TURN_FIELDS,
            null().label("name"),
            null().label("value"),
            backend.typed_null(JSONText).label("session"),
        ).where(
            turns.c.session_id == sid,
            turns.c.conversation_id == conversation,
            turns.c.seq <= upto,
            turns.c.seq > after,
        )
        slot_rows = select(
            turn_slots.c.seq,
            *(null() for _ in range(len(TURN_FIELDS) - 1)),
            backend.in_code_point_order(turn_slots.c.name),
            turn_slots.c.value,
            null(),
        ).where(
            turn_slots.c.session_id == sid,
            turn_slots.c.conversation_id == conversation,
            turn_slots.c.seq <= upto,
            turn_slots.c.seq > after,
        )
        session_row = select(
            literal(0, Integer()),
            *(null() for _ in range(len(TURN_FIELDS) + 1)),
            Statements._session_object(backend),
        ).where(sessions.c.session_id == sid)
        rows: CompoundSelect[Any] = union_all(turn_rows, slot_rows, session_row)
        return rows.order_by(
            rows.selected_columns.seq, backend.nulls_first(rows.selected_columns.name)
        )

    @staticmethod
    def _session_object(backend: Backend) -> ColumnElement[Any]:
        """The session row's ``models.SESSION_COLUMNS`` as one JSON object keyed by their
        names (timestamps as ISO 8601 text): one column of the load beside the turns', NULL
        in their rows. Seven columns of their own would add seven NULLs to every turn and slot
        row of the load; the object adds none."""
        pairs: list[ColumnElement[Any]] = []
        for name in SESSION_COLUMNS:
            column: ColumnElement[Any] = sessions.c[name]
            if isinstance(column.type, JSON):
                column = backend.json_column(column, name)  # nested as an object, not as text
            pairs += [literal_column(f"'{name}'"), column]
        return backend.json_object(pairs, JSONText).label("session")

    @staticmethod
    def _load_in_parts() -> tuple[Select[Any], Select[Any], Select[Any]]:
        """The session's row (its ``models.SESSION_COLUMNS``, ``turn_count`` the number of
        its newest turn among them, and its conversation); then,
        given those as ``upto`` and ``cid``, the newest ``window`` of its turns, and their
        slots, each in order."""
        session_row = select(
            *(sessions.c[name] for name in SESSION_COLUMNS),
            sessions.c.conversation_id,
        ).where(sessions.c.session_id == bindparam("sid", type_=String()))

        def in_window(table: Table, *columns: ColumnElement[Any]) -> Select[Any]:
            """``columns`` of the conversation's rows numbered ``after`` < seq <= ``upto``."""
            return select(*columns).where(
                table.c.session_id == bindparam("sid", type_=String()),
                table.c.conversation_id == bindparam("cid", type_=Integer()),
                table.c.seq <= bindparam("upto", type_=Integer()),
                table.c.seq > bindparam("after", type_=Integer()),
            )

        slot = turn_slots.c
        return (
            session_row,
            in_window(turns, *TURN_FIELDS).order_by(turns.c.seq),
            in_window(turn_slots, slot.seq, slot.name, slot.value).order_by(slot.seq, slot.name),
        )

    def _one_of(self, key: Column[Any], batch: ScalarSelect[Any]) -> ColumnElement[bool]:
        """``key`` is one of the keys ``batch`` selects: a batch delete's condition."""
        return self.backend.one_of(key, batch)

    def _merged_slots(self) -> ColumnElement[Any]:
        """``current_slots`` with ``merge`` merged in, inside the database, so an append never
        reads the session first."""
        merge = bindparam("merge", type_=JSONDocument)
        return self.backend.merged_json(sessions.c.current_slots, merge)

    def _one_statement_append(self) -> Select[Any]:
        """PostgreSQL: the whole append as one statement, one round trip, atomic by itself.

        ``bumped`` is ``allocate`` (it locks the session row and allocates sequence numbers);
        the turns and their slots arrive as parallel arrays and are inserted from it, so a
        missing or expired session inserts nothing and the statement returns no row.
        Turn arrays: ``roles``, ``contents``, ``resolved``, ``templates``, ``results`` (JSON
        text), ``traces``, ``spans``, ``tools``, ``calls``, ``arguments`` and ``data`` (JSON
        text or NULL); slot arrays: ``slot_ords`` (1-based position of the
        turn), ``slot_names``, ``slot_values``.
        """
        bumped = self._bump.returning(
            sessions.c.turn_count, sessions.c.version, sessions.c.conversation_id
        ).cte("bumped")
        text_array = postgresql.ARRAY(Text())
        new = (
            func.unnest(
                bindparam("roles", type_=text_array),
                bindparam("contents", type_=text_array),
                bindparam("resolved", type_=text_array),
                bindparam("templates", type_=text_array),
                bindparam("results", type_=text_array),
                bindparam("traces", type_=text_array),
                bindparam("spans", type_=text_array),
                bindparam("tools", type_=text_array),
                bindparam("calls", type_=text_array),
                bindparam("arguments", type_=text_array),
                bindparam("data", type_=text_array),
            )
            .table_valued(
                "role",
                "content",
                "resolved_question",
                "template_id",
                "results",
                "trace_id",
                "span_id",
                "tool_name",
                "tool_call_id",
                "tool_arguments",
                "data",
                with_ordinality="ord",
            )
            .render_derived()
        )
        first = bumped.c.turn_count - bindparam("n", type_=Integer())
        now = bindparam("now", type_=UTCDateTime())
        new_turns = insert(turns).from_select(
            [
                "conversation_id",
                "session_id",
                "seq",
                "role",
                "content",
                "resolved_question",
                "template_id",
                "results",
                "created_at",
                "idempotency_key",
                "trace_id",
                "span_id",
                "tool_name",
                "tool_call_id",
                "tool_arguments",
                "data",
            ],
            select(
                bumped.c.conversation_id,
                bindparam("sid"),
                first + new.c.ord,
                new.c.role,
                new.c.content,
                new.c.resolved_question,
                new.c.template_id,
                cast(new.c.results, JSONText),
                now,
                case((new.c.ord == 1, bindparam("key", type_=String())), else_=null()),
                new.c.trace_id,
                new.c.span_id,
                new.c.tool_name,
                new.c.tool_call_id,
                cast(new.c.tool_arguments, JSONText),
                cast(new.c.data, JSONText),
            )
            .select_from(bumped)
            .join(new, true()),
        )
        slots = (
            func.unnest(
                bindparam("slot_ords", type_=postgresql.ARRAY(Integer())),
                bindparam("slot_names", type_=text_array),
                bindparam("slot_values", type_=text_array),
            )
            .table_valued("ord", "name", "value")
            .render_derived()
        )
        new_slots = insert(turn_slots).from_select(
            ["conversation_id", "session_id", "seq", "name", "value"],
            select(
                bumped.c.conversation_id,
                bindparam("sid"),
                first + slots.c.ord,
                slots.c.name,
                slots.c.value,
            )
            .select_from(bumped)
            .join(slots, true()),
        )
        appended = select(bumped.c.turn_count, bumped.c.version).add_cte(
            new_turns.cte("new_turns"), new_slots.cte("new_slots")
        )
        return appended.add_cte(self._feed_row(bumped)) if self._feed else appended

    def _returning(self, write: Update, *columns: Column[Any]) -> Update | UpdateThenRead:
        """``write ... RETURNING columns`` of the one session row ``sid`` it changes; as two
        statements on a backend without ``UPDATE ... RETURNING`` (``UpdateThenRead``)."""
        if self.backend.returning_on_update:
            return write.returning(*columns)
        read = select(*columns).where(sessions.c.session_id == bindparam("sid", type_=String()))
        return UpdateThenRead(write, read)

    def _recorded(self, bump: Update) -> Update | Select[Any] | UpdateThenRead:
        """A write that moves a session's version, returning turn_count, version and
        conversation_id, as run: on PostgreSQL with its row of the change feed inserted by
        the same statement. SQLite's and MariaDB's triggers write their feed."""
        returned = self._returning(
            bump, sessions.c.turn_count, sessions.c.version, sessions.c.conversation_id
        )
        if not self._feed or not isinstance(returned, Update):
            return returned
        bumped = returned.cte("bumped")
        return select(bumped.c.turn_count, bumped.c.version, bumped.c.conversation_id).add_cte(
            self._feed_row(bumped)
        )

    @staticmethod
    def _feed_row(bumped: Any) -> Any:
        """The data-modifying CTE that records a version bump in ``convostore_changes``: the
        session and its new version, if ``bumped`` (the UPDATE's CTE) changed a row.

        PostgreSQL runs it whether or not the query reads it, in the writer's statement (so
        its transaction): the row commits with the write or not at all, and the statement
        locks the feed before it takes the id, as the watcher's gap tracking needs. Migration
        0005 had a row trigger do this; its call (an after-trigger event, a plpgsql function,
        an insert planned apart) cost 5 to 10 % of a writer's commits (migration 0007)."""
        return (
            insert(changes)
            .from_select(
                ["session_id", "version"],
                select(bindparam("sid", type_=String()), bumped.c.version),
            )
            .cte("feed")
        )

    @staticmethod
    def _one_row(append: Select[Any]) -> Select[Any]:
        """``append`` returning exactly one row: NULLs where it wrote nothing (the session was
        not live). Appends sent together in one round trip (``postgresql.PostgresDriver``) come
        back as one list of rows, which this lets them share out."""
        done = append.subquery("done")
        return select(done.c.turn_count, done.c.version).select_from(
            select(literal(1).label("one")).subquery("one").outerjoin(done, true())
        )
