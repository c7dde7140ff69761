"""The conversation data: a frozen ``ConversationTurn`` per message and ``ConversationState``.

The models match the original in-memory SessionManager's, so code written against it keeps
working. Turns are frozen: a stored turn never changes, so states handed to different callers
share the same turn objects and copying a state is a list copy, not a deep copy. Treat a turn's
``slots`` and ``results`` as read-only too; build a new turn to change them.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from convostore.backends._private import SlotSetters, pydantic_slot_setters

__all__ = [
    "FIELD_WRITES",
    "HISTORY_WINDOW",
    "SESSION_COLUMNS",
    "STATE_FIELDS",
    "SUMMARY_PREFIX",
    "ConversationState",
    "ConversationSummary",
    "ConversationTurn",
    "Role",
    "SearchHit",
    "SearchPage",
    "SessionFields",
    "SessionPage",
    "StateBuilder",
    "StoredSession",
    "TurnBuilder",
    "builders",
    "carry_context",
    "make_state",
    "make_turn",
    "name_ordered",
]

HISTORY_WINDOW = 6
"""How many recent turns ``to_dspy_history`` hands to the language model."""


Role = Literal["user", "assistant", "system", "tool"]
"""Who a message is from: ``add_turn`` stores a user turn and an assistant turn;
``add_messages`` stores any of the four."""


class ConversationTurn(BaseModel):
    """One message of a conversation: a user question, an assistant answer or tool call, a
    system instruction, or a tool's output."""

    model_config = ConfigDict(frozen=True)

    role: Role = "user"
    content: str = ""
    resolved_question: str | None = None
    template_id: str | None = None
    slots: dict[str, str] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime | None = None
    """When the store saved the turn (UTC); None until it is stored."""
    trace_id: str | None = None
    """The OpenTelemetry trace the turn was produced in: 32 lowercase hex digits, not all
    zero (``add_turn(trace_id=...)``); None if none was given."""
    span_id: str | None = None
    """The span within ``trace_id``: 16 lowercase hex digits, not all zero; None if none."""
    tool_name: str | None = None
    """The tool an assistant message calls, or whose output a tool message carries."""
    tool_call_id: str | None = None
    """The id that ties a tool call to its output (the framework's own)."""
    tool_arguments: Any = None
    """A tool call's arguments: any JSON value (None: none), stored as the JSON written."""
    data: Any = None
    """The framework's own record of the message (e.g. an OpenAI Agents SDK item), any JSON
    value (None: none). It reads back as written: equal, with its keys in the same order, so
    ``json.dumps`` of it gives the same text. Shared with the store's cache: read-only."""


def name_ordered(slots: Mapping[str, str]) -> dict[str, str]:
    """``slots`` as a new dict in name order (by code point, as ``sorted`` orders strings).

    The store keeps slots in this order everywhere, so a session read cold from either
    backend equals the cached copy key for key: a turn's slots are rows sorted by name, and
    ``current_slots`` is merged inside the database, whose order PostgreSQL's JSONB does not
    keep."""
    return dict(sorted(slots.items()))


def carry_context(
    turn: ConversationTurn, current_slots: dict[str, str], current_template_id: str | None
) -> str | None:
    """What a turn carries into the conversation's context: a user turn's slots merge into
    ``current_slots`` (in place); returns the template that is current after the turn."""
    if turn.role == "user" and turn.slots:
        current_slots.update(turn.slots)
    return turn.template_id or current_template_id


class ConversationSummary(BaseModel):
    """One conversation of a user, as ``SessionRepository.list_sessions`` lists it."""

    model_config = ConfigDict(frozen=True)

    conversation_id: int
    """Tells apart conversations that used the same session id (and pages the list)."""
    session_id: str
    user_id: str
    started_at: datetime
    ended_at: datetime | None
    """When the session ended (its last activity); None while its session row exists."""
    live: bool
    """Whether the session is live: ``get(session_id)`` returns this conversation."""
    turns: int
    """Turns stored (two per exchange)."""
    last_activity: datetime
    """When the last turn was stored (``started_at`` if none was): the catalog's order."""
    title: str | None = None
    """Set by ``set_title`` (or from the first question, ``StoreConfig.auto_title``)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Set by ``set_metadata``: the caller's JSON object (e.g. tags, a project id)."""
    forked_from: str | None = None
    """A fork's (``fork``): the session its history was copied from; None otherwise."""
    forked_from_conversation: int | None = None
    """A fork's: that session's conversation (None if it had ended by then)."""
    forked_upto: int | None = None
    """A fork's: the last turn it copied."""


class SessionPage(list[ConversationSummary]):
    """One page of ``SessionRepository.list_sessions``: a list of summaries, and the cursor
    of the next page (None: this is the last)."""

    def __init__(
        self, summaries: Iterable[ConversationSummary] = (), *, next_cursor: str | None = None
    ) -> None:
        super().__init__(summaries)
        self.next_cursor = next_cursor

    @property
    def sessions(self) -> list[ConversationSummary]:
        """The summaries as a plain list."""
        return list(self)

    def __repr__(self) -> str:
        return f"SessionPage({list.__repr__(self)}, next_cursor={self.next_cursor!r})"


class SearchHit(BaseModel):
    """One stored turn that matched ``SessionRepository.search``."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    conversation_id: int
    seq: int
    """The turn's number in its conversation (from 1; a question's answer is ``seq + 1``)."""
    role: Role
    """Whose message matched: ``user``, a question or its resolved question; ``assistant``,
    an answer; ``system`` or ``tool``, such a message of ``add_messages``."""
    rank: float
    """How well the turn matches, higher is better; comparable only within one search on one
    database (each backend scores its own way)."""
    snippet: str
    """A short excerpt of the matching text, the matched words between ``**``."""


class SearchPage(BaseModel):
    """One page of ``SessionRepository.search``'s hits, best first."""

    model_config = ConfigDict(frozen=True)

    hits: list[SearchHit]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; None on the last page."""


class ConversationState(BaseModel):
    """A session's history and the context carried from turn to turn.

    The state remembers which turn objects the store handed out with it, so that
    ``SessionRepository.update`` appends only the turns added since.

    A state the store hands out shares the cached ``turns`` and ``current_slots`` until each
    is first used: the caller's own copy is built then, so a read or an append that returns a
    long history copies nothing the caller does not look at. Read the fields as attributes
    (or through pydantic's methods), not through ``__dict__`` or ``vars()``, which lack a
    shared field until then.
    """

    turns: list[ConversationTurn] = Field(default_factory=list)
    current_slots: dict[str, str] = Field(default_factory=dict)
    current_template_id: str | None = None
    language: str | None = None
    """The conversation's language code (e.g. "nl"), stored with the session by ``update``;
    None: not tagged (a new session gets ``StoreConfig.default_language``, by default None)."""
    title: str | None = None
    """The conversation's title in the catalog (``set_title``, ``StoreConfig.auto_title``)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """The caller's JSON object about the conversation (``set_metadata``); ``list_sessions``
    filters by it. A state's copy is its own; treat nested values as read-only."""
    summary: str | None = None
    """A summary of the turns up to ``summary_upto`` (``set_summary``, written by the
    caller's model), which a windowed read returns with its window."""
    summary_upto: int | None = None
    """The number (``seq``, from 1) of the last turn ``summary`` covers."""

    _session_id: str | None = PrivateAttr(default=None)
    _origin: Sequence[ConversationTurn] = PrivateAttr(default=())
    _stored: int = PrivateAttr(default=0)
    """The turns handed out are ``_origin[:_stored]`` (``_origin`` only ever grows)."""
    _version: int | None = PrivateAttr(default=None)
    """The stored session's version this state was read at (for ``update(if_unchanged=True)``)."""

    _first_seq: int = PrivateAttr(default=1)
    """The number (``seq``) of the first turn handed out with the state."""
    _slots: dict[str, str] | None = PrivateAttr(default=None)
    """The cached ``current_slots`` a store-built state shares until it builds its own (None:
    a state the store did not build, which shares nothing)."""

    if not TYPE_CHECKING:  # as in pydantic: a typed __getattr__ would hide misspelt names

        def __getattr__(self, name: str) -> Any:
            if name in _SHARED_FIELDS:
                return self._build(name)
            return super().__getattr__(name)

    def _build(self, name: str) -> Any:
        """The shared field ``name`` as the state's own value, on its first use."""
        private = self.__pydantic_private__
        if private is None or private["_slots"] is None:
            raise AttributeError(name)  # deleted from a state that shares nothing
        value: Any
        if name == "turns":
            handed = private["_origin"][: private["_stored"]]
            value = handed if type(handed) is list else list(handed)
        else:
            value = dict(private["_slots"])
        fields = self.__dict__
        fields[name] = value
        # In the declared order, which dumps and the repr follow.
        ordered = {key: fields[key] for key in _FIELD_ORDER if key in fields}
        object.__setattr__(self, "__dict__", ordered)
        return value

    def _built(self) -> None:
        """Build the shared fields not built yet: the pydantic methods below read
        ``__dict__`` itself. (A copy or a pickle needs nothing: it takes the private
        attributes along, so it shares what the original shares.)"""
        fields = self.__dict__
        for name in _SHARED_FIELDS:
            if name not in fields:
                self._build(name)

    def _turns_now(self) -> tuple[Sequence[ConversationTurn], int]:
        """``(turns, n)``: the state's turns are ``turns[:n]``, without building ``turns``
        if it is still shared (a read of the recent history copies nothing)."""
        turns: list[ConversationTurn] | None = self.__dict__.get("turns")
        if turns is not None:
            return turns, len(turns)
        private = self.__pydantic_private__
        assert private is not None  # shared: make_state set them
        return private["_origin"], private["_stored"]

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation: pydantic then keeps the model's own serialization schema.
        self._built()
        return handler(self)

    def __eq__(self, other: object) -> bool:
        self._built()
        if isinstance(other, ConversationState):
            other._built()
        return super().__eq__(other)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        self._built()
        return super().__repr_args__()

    def __iter__(self) -> Generator[tuple[str, Any], None, None]:
        self._built()
        yield from super().__iter__()

    def add_turn(self, turn: ConversationTurn) -> None:
        """Append a turn: a user turn's slots merge into ``current_slots``; any turn's
        template becomes ``current_template_id``."""
        self.turns.append(turn)
        self.current_template_id = carry_context(turn, self.current_slots, self.current_template_id)

    def get_previous_user_turn(self) -> ConversationTurn | None:
        """The most recent user turn, or None if there is none."""
        turns, count = self._turns_now()
        for index in range(count - 1, -1, -1):
            if turns[index].role == "user":
                return turns[index]
        return None

    def to_dspy_history(self) -> Any:
        """The last six turns as role/content messages for a language model.

        The content is the resolved question where there is one. When the state has a
        ``summary`` and turns came before the six (the window of a long conversation, or of a
        windowed read), the summary comes first, as a system message. Returns
        ``dspy.History`` when dspy is installed, else ``{"messages": [...]}`` with the same
        messages.
        """
        turns, count = self._turns_now()
        start = max(0, count - HISTORY_WINDOW)
        messages = [
            {"role": turn.role, "content": turn.resolved_question or turn.content}
            for turn in turns[start:count]
        ]
        if self.summary is not None and self._first_seq + start > 1:
            messages.insert(0, {"role": "system", "content": SUMMARY_PREFIX + self.summary})
        try:
            from dspy import History  # type: ignore[import-not-found]
        except ImportError:
            return {"messages": messages}
        return History(messages=messages)


SUMMARY_PREFIX = "Summary of the conversation so far: "
"""What ``to_dspy_history`` puts before a summary in its system message."""

_SHARED_FIELDS = ("turns", "current_slots")
"""The fields a store-built state shares with the cache until their first use."""
_FIELD_ORDER = tuple(ConversationState.model_fields)


@dataclass(slots=True, kw_only=True)
class SessionFields:
    """The session's fields that a ``ConversationState`` carries besides its turns, as
    ``update`` writes them. Each is the ``sessions`` column of its name, and everything that
    stores, reads, caches or exports a session goes through this list (``STATE_FIELDS``), so a
    new one is added here, on ``ConversationState`` and in ``make_state``."""

    language: str | None = None
    current_slots: dict[str, str] = field(default_factory=dict)
    current_template_id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    summary: str | None = None
    summary_upto: int | None = None

    def state_values(self) -> dict[str, Any]:
        """The ``STATE_FIELDS`` by name (e.g. as parameters of the statement that writes
        them)."""
        return {name: getattr(self, name) for name in STATE_FIELDS}


STATE_FIELDS: tuple[str, ...] = tuple(SessionFields.__dataclass_fields__)
"""The names of the session fields a state carries, in the order the exports write them."""

FIELD_WRITES: tuple[tuple[str, ...], ...] = (("title",), ("metadata",), ("summary", "summary_upto"))
"""The session fields ``set_title``, ``set_metadata`` and ``set_summary`` write, each group
alone."""


@dataclass(slots=True, kw_only=True)
class StoredSession(SessionFields):
    """One session as last committed: what a load reads, the cache holds and a state is made
    from (``fork``). Every field but ``turns``, ``complete`` and ``unflushed_hits`` is the
    ``sessions`` column of its name (``SESSION_COLUMNS``); the timestamps are epoch seconds.

    The record holds plain fields, not a ``ConversationState``: a cache hit builds the caller's
    state straight from them, with the fewest objects to read and allocate. Its ``turns`` list
    only grows and its ``current_slots`` dict is only ever replaced, never changed in place,
    so the states forked from it can share both."""

    turns: list[ConversationTurn]
    """Only ever appended to, so a state forked from it can point at it to remember which
    turns it was handed, and share them until it builds its own list (see
    ``ConversationState._origin``)."""
    version: int
    user_id: str | None
    """The session's owner (None: created without one)."""
    last_accessed: float
    """The stored ``last_accessed``; reads refresh it only when it is stale."""
    expires_at: float
    turn_count: int = 0
    """The number (``seq``) of the session's newest turn: ``turns`` are the ones up to it."""
    complete: bool = True
    """Whether ``turns`` holds the whole history; False after a windowed read, when it holds
    the newest turns only (and whatever was appended since)."""
    unflushed_hits: int = 0
    """Reads not yet added to the stored ``access_count``; the next write adds them."""

    def covers(self, last_turns: int | None) -> bool:
        """Whether the record holds the turns a read of the ``last_turns`` newest (None: all)
        returns."""
        return self.complete or (last_turns is not None and len(self.turns) >= last_turns)

    def fork(self, session_id: str, last_turns: int | None = None) -> ConversationState:
        """A state its caller may change freely, built without validation: it shares this
        record's ``turns`` and ``current_slots`` until it first uses them (then it copies
        them; the turns themselves are frozen and stay shared). With ``last_turns``, only the
        newest turns (the record must ``cover`` it)."""
        turns = self.turns if last_turns is None else self.turns[-last_turns:]
        return make_state(self, session_id, turns)

    def extend(self, new_turns: Iterable[ConversationTurn]) -> None:
        """Append committed turns, carrying their slots and template into the context, whose
        slots stay in name order, as a cold read returns them. The slots dict is replaced,
        not changed: states handed out share it until they build their own."""
        template = self.current_template_id
        slots = dict(self.current_slots)
        known = len(slots)
        for turn in new_turns:
            self.turns.append(turn)
            self.turn_count += 1
            template = carry_context(turn, slots, template)
        self.current_template_id = template
        self.current_slots = name_ordered(slots) if len(slots) != known else slots

    def committed(self, version: int, now: float, ttl: float, flushed_hits: int) -> None:
        """Record a write of this process: the new version, the refreshed expiry, and the hits
        the write added to ``access_count``."""
        self.version = version
        self.last_accessed, self.expires_at = now, now + ttl
        self.unflushed_hits = max(0, self.unflushed_hits - flushed_hits)


SESSION_COLUMNS: tuple[str, ...] = (
    *STATE_FIELDS,
    *(
        name
        for name in StoredSession.__dataclass_fields__
        if name not in STATE_FIELDS and name not in ("turns", "complete", "unflushed_hits")
    ),
)
"""The ``sessions`` columns a ``StoredSession`` holds: what a load selects, by these names."""


class TurnBuilder(Protocol):
    """``make_turn``: a ``ConversationTurn`` from all its fields, by keyword, in the model's
    order. This is the one spelling of a turn's fields outside the model."""

    def __call__(
        self,
        *,
        role: Role,
        content: str,
        resolved_question: str | None,
        template_id: str | None,
        slots: dict[str, str],
        results: list[dict[str, Any]],
        created_at: datetime | None,
        trace_id: str | None,
        span_id: str | None,
        tool_name: str | None,
        tool_call_id: str | None,
        tool_arguments: Any,
        data: Any,
    ) -> ConversationTurn: ...


class StateBuilder(Protocol):
    """``make_state``: a ``ConversationState`` of ``session`` handed out for ``session_id``
    with ``turns`` (a slice of ``session.turns``)."""

    def __call__(
        self, session: StoredSession, session_id: str, turns: Sequence[ConversationTurn]
    ) -> ConversationState: ...


def builders(setters: SlotSetters | None) -> tuple[TurnBuilder, StateBuilder]:
    """``make_turn`` and ``make_state``: through pydantic's slot ``setters`` when there are
    any, else (a pydantic release without them) through the public ``model_construct``."""
    if setters is None:
        return ConversationTurn.model_construct, _constructed_state
    # Every field of a store-built model counts as set. One set object serves them all:
    # pydantic only ever adds field names to it (which are already there) or copies it.
    turn_fields = set(ConversationTurn.model_fields)
    state_fields = set(ConversationState.model_fields)
    new = object.__new__
    set_attribute = object.__setattr__
    set_fields_set, set_extra, set_private = setters

    def make_turn(**fields: Any) -> ConversationTurn:
        # The keywords' dict is the turn's ``__dict__``: every caller passes all of them, in
        # the model's order (its repr follows the dict's).
        turn = new(ConversationTurn)
        set_attribute(turn, "__dict__", fields)
        set_fields_set(turn, turn_fields)
        set_extra(turn, None)
        set_private(turn, None)
        return turn

    def make_state(
        session: StoredSession, session_id: str, turns: Sequence[ConversationTurn]
    ) -> ConversationState:
        # The fields spelled out, not looped over ``STATE_FIELDS``: this is every cache hit.
        # ``turns`` and ``current_slots`` are left out: the state shares the session's until
        # their first use (``ConversationState._build``).
        state = new(ConversationState)
        set_attribute(
            state,
            "__dict__",
            {
                "current_template_id": session.current_template_id,
                "language": session.language,
                "title": session.title,
                "metadata": dict(session.metadata),
                "summary": session.summary,
                "summary_upto": session.summary_upto,
            },
        )
        set_fields_set(state, state_fields)
        set_extra(state, None)
        set_private(
            state,
            {
                "_session_id": session_id,
                "_origin": turns,
                "_stored": len(turns),
                "_version": session.version,
                "_first_seq": session.turn_count - len(turns) + 1,
                "_slots": session.current_slots,
            },
        )
        return state

    return make_turn, make_state


def _constructed_state(
    session: StoredSession, session_id: str, turns: Sequence[ConversationTurn]
) -> ConversationState:
    fields = session.state_values()
    fields["current_slots"] = dict(session.current_slots)
    fields["metadata"] = dict(session.metadata)
    state = ConversationState.model_construct(turns=list(turns), **fields)
    state._session_id, state._origin, state._stored = session_id, turns, len(turns)
    state._version = session.version
    state._first_seq = session.turn_count - len(turns) + 1
    return state


make_turn, make_state = builders(pydantic_slot_setters())
"""``make_turn(**fields)``: a turn from values the store already checked, every field of
``ConversationTurn`` given by keyword in the model's order, built without validation.
``model_construct`` does the same, slower (what this saves: docs/architecture.md, "What speed
costs in upkeep"). ``make_state(session, session_id, turns)``: likewise the state of a
``StoredSession``, whose ``turns`` (a slice of the session's) count as stored for
``session_id`` at the session's version; it shares them and the session's ``current_slots``
until their first use (the fallback copies them at once)."""
