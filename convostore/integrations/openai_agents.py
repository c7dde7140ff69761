"""The OpenAI Agents SDK's session memory, kept in convostore: each item is one message.

    from agents import Agent, Runner
    from convostore import SessionRepository
    from convostore.integrations.openai_agents import ConvostoreSession

    async with SessionRepository("sqlite+aiosqlite:///chat.db") as repo:
        session = ConvostoreSession("conversation_123", repo, user_id="user-42")
        result = await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)

``ConvostoreSession`` is a ``SessionABC`` of the SDK (``get_items``, ``add_items``,
``pop_item``, ``clear_session``, ``session_settings``), so the SDK's wrappers that take one,
such as ``EncryptedSession``, take it too.
Each item ``add_items`` is given becomes one ``ConversationTurn`` whose ``data`` is the item
itself, read back equal and in the same key order; the other fields make the conversation
readable in SQL and searchable: the role (``developer`` counts as ``system``; a function
call is the assistant's, its output the tool's), the item's text as ``content``, and a tool
call's name, call id and arguments. The repository's expiry, retention, user scoping and
``erase_user`` apply to these sessions as to any other.

Needs the SDK: the ``openai-agents`` extra (``pip install ".[openai-agents]"`` in the checkout).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from convostore._core.validation import check_owner, check_session_id
from convostore.errors import InvalidTurn
from convostore.models import ConversationTurn, Role
from convostore.repository import SessionRepository

try:
    from agents.items import TResponseInputItem
    from agents.memory import SessionABC, SessionSettings
    from agents.memory.session_settings import coerce_session_settings
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "convostore.integrations.openai_agents needs the OpenAI Agents SDK: "
        "install the openai-agents extra (pip install '.[openai-agents]' in convostore's checkout)"
    ) from exc

__all__ = ["ConvostoreSession"]

_MORE_THAN_STORED = 2**31
"""A limit from which ``get_items`` reads every item: a conversation holds fewer (its
messages are numbered with 32-bit ints)."""

_ROLES: dict[object, Role] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
"""A message item's role as a turn's role."""


class ConvostoreSession(SessionABC):
    """One conversation of the OpenAI Agents SDK, stored by a ``SessionRepository``.

    The session object holds no connection of its own: make as many as you like (one per
    request is fine) on one started repository, which owns the engine and the cache.

    Args:
        session_id: the conversation's id (1-128 printable ASCII characters).
        repository: a started ``SessionRepository``; stopping it stays the caller's job.
        user_id: the conversation's owner. A session created here belongs to that user;
            another user's session reads as empty and refuses writes (``NotSessionOwner``).
        session_settings: the SDK's ``SessionSettings`` (or a dict of them): ``limit`` is
            the number of newest items ``get_items()`` returns by default.

    Raises:
        InvalidSessionId: a bad session id or user id.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        repository: SessionRepository,
        *,
        user_id: str | None = None,
        session_settings: SessionSettings | Mapping[str, object] | None = None,
    ) -> None:
        self.session_id = check_session_id(session_id)
        self.user_id = check_owner(user_id)
        self.repository = repository
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(
                session_settings
                if isinstance(session_settings, SessionSettings)
                else dict(session_settings)
            )
        )

    def __repr__(self) -> str:
        return f"ConvostoreSession({self.session_id!r}, user_id={self.user_id!r})"

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The conversation's items, oldest first: all of them, or the newest ``limit``
        (``session_settings.limit`` when ``limit`` is None). Empty for a session that is
        unknown, expired or another user's.

        A limit reads only those items from the database, however long the conversation.
        As the SDK's ``SQLiteSession`` does, a limit of 0 returns no items and a negative
        one all of them. The items are the caller's own copies.

        Raises:
            StoreError: the database failed.
        """
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit == 0:
            return []
        window = limit if limit is not None and 0 < limit < _MORE_THAN_STORED else None
        state = await self.repository.get(self.session_id, user_id=self.user_id, last_turns=window)
        if state is None:
            return []
        return [_item_of(turn) for turn in state.turns]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Store ``items`` after the conversation's, all or none, in one transaction; the
        session is created (for ``user_id``) if it is unknown or expired.

        Raises:
            InvalidTurn: an item is not a JSON object, or holds what JSON cannot carry
                exactly or more than the repository's limits allow; nothing was stored.
            NotSessionOwner: the live session under this id is another user's.
            StoreError: the database failed; nothing was stored.
        """
        if not items:
            return
        turns = _turns_of(items, self.repository.config.max_text_chars)
        await self.repository.add_messages(self.session_id, turns, user_id=self.user_id)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the newest item and return it; None if there is none. The transcript keeps
        it as superseded until retention ends.

        Raises:
            NotSessionOwner: the live session under this id is another user's.
            StaleStateError: other writes kept changing the session; nothing was removed.
            StoreError: the database failed.
        """
        turn = await self.repository.pop_message(self.session_id, user_id=self.user_id)
        return None if turn is None else _item_of(turn)

    async def clear_session(self) -> None:
        """Remove every item; the session itself stays (with its title and metadata). The
        transcript keeps the items until retention ends; ``repository.delete`` or
        ``erase_user`` removes them for good.

        Raises:
            NotSessionOwner: the live session under this id is another user's.
            StaleStateError: other writes kept changing the session; nothing was removed.
            StoreError: the database failed.
        """
        await self.repository.clear(self.session_id, user_id=self.user_id)


def _turns_of(items: Sequence[TResponseInputItem], max_chars: int) -> list[ConversationTurn]:
    """Each item as the turn that stores it. A function call's output does not name its
    function; it gets the name of the call with its call id among ``items``, if any.

    The turn's ``content`` is the item's text cut to ``max_chars`` characters (the store's
    ``max_text_chars``): it is there to be searched and read in SQL, while ``data`` keeps
    the whole item, so a long tool output is stored as the SDK's own stores keep it."""
    turns: list[ConversationTurn] = []
    names: dict[str, str] = {}
    for item in items:
        if type(item) is not dict:
            raise InvalidTurn(f"a session item must be a dict, not {type(item).__name__}")
        turn = _turn_of(cast(dict[str, Any], item), names, max_chars)
        if turn.tool_name is not None and turn.tool_call_id is not None:
            names.setdefault(turn.tool_call_id, turn.tool_name)
        turns.append(turn)
    return turns


def _turn_of(item: dict[str, Any], names: Mapping[str, str], max_chars: int) -> ConversationTurn:
    role = _ROLES.get(item.get("role"))
    kind = item.get("type")
    if role is not None and kind in (None, "message"):
        content = _text(item.get("content"))[:max_chars]
        return ConversationTurn(role=role, content=content, data=item)
    call_id = _str(item.get("call_id"))
    name = _str(item.get("name"))
    if role is None:
        if type(kind) is str and kind.endswith("_output"):
            role = "tool"
            if name is None and call_id is not None:
                name = names.get(call_id)
        else:
            role = "user" if kind == "mcp_approval_response" else "assistant"
    return ConversationTurn(
        role=role,
        content=_text(item.get("output", item.get("summary")))[:max_chars],
        tool_name=name,
        tool_call_id=call_id,
        tool_arguments=_arguments(item.get("arguments"), item.get("input")),
        data=item,
    )


def _str(value: object) -> str | None:
    return value if type(value) is str else None


def _text(value: object) -> str:
    """The text of a message's content, a tool's output or a reasoning summary: the string
    itself, or the text parts of a list, a line each."""
    if type(value) is str:
        return value
    if type(value) is not list:
        return ""
    texts = []
    for part in value:
        if type(part) is dict:
            text = part.get("text", part.get("refusal"))
            if type(text) is str:
                texts.append(text)
    return "\n".join(texts)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _arguments(arguments: object, free_input: object) -> object:
    """A tool call's arguments as the JSON value their string holds (the string itself when
    it holds none), so they can be queried in SQL; a custom tool's free-form input as is."""
    if type(arguments) is not str:
        return free_input if arguments is None else arguments
    try:
        return json.loads(arguments, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return arguments


def _item_of(turn: ConversationTurn) -> Any:
    """The item a turn stores, as the caller's own copy; for a turn written without one
    (by ``add_turn``, say), the item the SDK would have made of it."""
    data = turn.data
    if data is not None:
        return _copy(data)
    if turn.role == "tool" and turn.tool_call_id is not None:
        return {
            "type": "function_call_output",
            "call_id": turn.tool_call_id,
            "output": turn.content,
        }
    if turn.tool_name is not None and turn.tool_call_id is not None:
        arguments = turn.tool_arguments
        return {
            "type": "function_call",
            "call_id": turn.tool_call_id,
            "name": turn.tool_name,
            "arguments": arguments if type(arguments) is str else json.dumps(arguments),
        }
    return {"role": turn.role, "content": turn.content}


def _copy(value: Any) -> Any:
    """A copy of a JSON value whose dicts and lists are new (its strings and numbers are
    immutable): what ``copy.deepcopy`` makes of it, without the memo and dispatch a JSON
    value does not need, on a path every read takes. Containers are copied whole in C and
    only their nested containers replaced, so leaves cost no Python call."""
    kind = type(value)
    if kind is dict:
        copied = value.copy()
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                copied[key] = _copy(item)
        return copied
    if kind is list:
        copied = value.copy()
        for index, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                copied[index] = _copy(item)
        return copied
    return value
