"""The conversation data: a frozen ``ConversationTurn`` per message and ``ConversationState``.

The models match the original in-memory SessionManager's, so code written against it keeps
working. Turns are frozen: a stored turn never changes, so states handed to different callers
share the same turn objects and copying a state is a list copy, not a deep copy. Treat a turn's
``slots`` and ``results`` as read-only too; build a new turn to change them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ._private import SlotSetters, pydantic_slot_setters

__all__ = [
    "HISTORY_WINDOW",
    "ConversationState",
    "ConversationSummary",
    "ConversationTurn",
    "StateBuilder",
    "TurnBuilder",
    "builders",
    "carry_context",
    "make_state",
    "make_turn",
    "name_ordered",
]

HISTORY_WINDOW = 6
"""How many recent turns ``to_dspy_history`` hands to the language model."""


class ConversationTurn(BaseModel):
    """One message of a conversation: a user question or an assistant answer."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"] = "user"
    content: str = ""
    resolved_question: str | None = None
    template_id: str | None = None
    slots: dict[str, str] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime | None = None
    """When the store saved the turn (UTC); None until it is stored."""


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
    """When the last turn was stored (``started_at`` if none was)."""


class ConversationState(BaseModel):
    """A session's history and the context carried from turn to turn.

    The state remembers which turn objects the store handed out with it, so that
    ``SessionRepository.update`` appends only the turns added since.
    """

    turns: list[ConversationTurn] = Field(default_factory=list)
    current_slots: dict[str, str] = Field(default_factory=dict)
    current_template_id: str | None = None
    language: str | None = None
    """The conversation's language code (e.g. "nl"), stored with the session by ``update``;
    None: not tagged (a new session gets ``StoreConfig.default_language``, by default None)."""

    _session_id: str | None = PrivateAttr(default=None)
    _origin: Sequence[ConversationTurn] = PrivateAttr(default=())
    _stored: int = PrivateAttr(default=0)
    """The turns handed out are ``_origin[:_stored]`` (``_origin`` only ever grows)."""
    _version: int | None = PrivateAttr(default=None)
    """The stored session's version this state was read at (for ``update(if_unchanged=True)``)."""

    def add_turn(self, turn: ConversationTurn) -> None:
        """Append a turn: a user turn's slots merge into ``current_slots``; any turn's
        template becomes ``current_template_id``."""
        self.turns.append(turn)
        self.current_template_id = carry_context(turn, self.current_slots, self.current_template_id)

    def get_previous_user_turn(self) -> ConversationTurn | None:
        """The most recent user turn, or None if there is none."""
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn
        return None

    def to_dspy_history(self) -> Any:
        """The last six turns as role/content messages for a language model.

        The content is the resolved question where there is one. Returns ``dspy.History``
        when dspy is installed, else ``{"messages": [...]}`` with the same messages.
        """
        messages = [
            {"role": turn.role, "content": turn.resolved_question or turn.content}
            for turn in self.turns[-HISTORY_WINDOW:]
        ]
        try:
            from dspy import History  # type: ignore[import-not-found]
        except ImportError:
            return {"messages": messages}
        return History(messages=messages)


TurnBuilder = Callable[
    [
        Literal["user", "assistant"],
        str,
        str | None,
        str | None,
        dict[str, str],
        list[dict[str, Any]],
        datetime | None,
    ],
    ConversationTurn,
]
StateBuilder = Callable[
    [
        list[ConversationTurn],
        dict[str, str],
        str | None,
        str | None,
        str | None,
        Sequence[ConversationTurn],
        int,
        int | None,
    ],
    ConversationState,
]


def builders(setters: SlotSetters | None) -> tuple[TurnBuilder, StateBuilder]:
    """``make_turn`` and ``make_state``: through pydantic's slot ``setters`` when there are
    any, else (a pydantic release without them) through the public ``model_construct``."""
    if setters is None:
        return _constructed_turn, _constructed_state
    # Every field of a store-built model counts as set. One set object serves them all:
    # pydantic only ever adds field names to it (which are already there) or copies it.
    turn_fields = set(ConversationTurn.model_fields)
    state_fields = set(ConversationState.model_fields)
    new = object.__new__
    set_attribute = object.__setattr__
    set_fields_set, set_extra, set_private = setters

    def make_turn(
        role: Literal["user", "assistant"],
        content: str,
        resolved_question: str | None,
        template_id: str | None,
        slots: dict[str, str],
        results: list[dict[str, Any]],
        created_at: datetime | None,
    ) -> ConversationTurn:
        turn = new(ConversationTurn)
        set_attribute(
            turn,
            "__dict__",
            {
                "role": role,
                "content": content,
                "resolved_question": resolved_question,
                "template_id": template_id,
                "slots": slots,
                "results": results,
                "created_at": created_at,
            },
        )
        set_fields_set(turn, turn_fields)
        set_extra(turn, None)
        set_private(turn, None)
        return turn

    def make_state(
        turns: list[ConversationTurn],
        current_slots: dict[str, str],
        current_template_id: str | None,
        language: str | None,
        session_id: str | None,
        origin: Sequence[ConversationTurn],
        stored: int,
        version: int | None,
    ) -> ConversationState:
        state = new(ConversationState)
        set_attribute(
            state,
            "__dict__",
            {
                "turns": turns,
                "current_slots": current_slots,
                "current_template_id": current_template_id,
                "language": language,
            },
        )
        set_fields_set(state, state_fields)
        set_extra(state, None)
        set_private(
            state,
            {"_session_id": session_id, "_origin": origin, "_stored": stored, "_version": version},
        )
        return state

    return make_turn, make_state


def _constructed_turn(
    role: Literal["user", "assistant"],
    content: str,
    resolved_question: str | None,
    template_id: str | None,
    slots: dict[str, str],
    results: list[dict[str, Any]],
    created_at: datetime | None,
) -> ConversationTurn:
    return ConversationTurn.model_construct(
        role=role,
        content=content,
        resolved_question=resolved_question,
        template_id=template_id,
        slots=slots,
        results=results,
        created_at=created_at,
    )


def _constructed_state(
    turns: list[ConversationTurn],
    current_slots: dict[str, str],
    current_template_id: str | None,
    language: str | None,
    session_id: str | None,
    origin: Sequence[ConversationTurn],
    stored: int,
    version: int | None,
) -> ConversationState:
    state = ConversationState.model_construct(
        turns=turns,
        current_slots=current_slots,
        current_template_id=current_template_id,
        language=language,
    )
    state._session_id, state._origin, state._stored = session_id, origin, stored
    state._version = version
    return state


make_turn, make_state = builders(pydantic_slot_setters())
"""``make_turn(role, content, resolved_question, template_id, slots, results, created_at)``: a
turn from values the store already checked, built without validation. ``model_construct``
does the same at several times the cost; on a cold load of a long session that cost is most
of the Python time. ``make_state(turns, current_slots, current_template_id, language,
session_id, origin, stored, version)``: likewise a state, whose turns ``origin[:stored]``
count as stored for ``session_id`` at ``version``."""
