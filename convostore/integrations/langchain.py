"""LangChain chat message histories kept in convostore (the ``langchain`` extra).

    from langchain_core.runnables.history import RunnableWithMessageHistory
    from convostore.integrations.langchain import ConvostoreChatMessageHistory

    chain = RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: ConvostoreChatMessageHistory(session_id, repo),
        input_messages_key="question",
        history_messages_key="history",
    )
    await chain.ainvoke({"question": "Hi"}, {"configurable": {"session_id": "abc"}})

Each LangChain message is one convostore turn. The turn's ``data`` is the message as
``langchain_core.messages.message_to_dict`` gives it, so its type, content (strings and content
blocks), name, id, tool calls, ``additional_kwargs`` and ``response_metadata`` come back as they
went in. The columns say what SQL needs: the role (human: user, ai: assistant, system: system,
tool and function: tool; a ``ChatMessage``'s own role when it is one of those four, else user),
the text (a string content, or the text blocks of a list, joined), and for tool traffic the tool
name, call id and arguments: a ``ToolMessage``'s ``name`` and ``tool_call_id`` (a
``FunctionMessage``'s ``name``), and an AI message's first tool call (its name, id and args;
the message's data keeps every call).
Turns stored without ``data`` (by ``add_turn``, or another adapter) read back as the message
their role and text make.

The repository is async and bound to the event loop it was started on. The async methods
(``aget_messages``, ``aadd_messages``, ``aclear``) call it directly. The sync ones
(``messages``, ``add_messages``, ``clear``, which ``RunnableWithMessageHistory.invoke`` uses)
run the same coroutine on that loop and wait for it: from a thread without a running loop
while the repository's loop runs in another (``asyncio.to_thread``, a sync web framework's
workers), or on the repository's loop while it is not running (``run_until_complete``).
Inside a running loop they raise ``SyncCallError`` instead of blocking it (on the
repository's own loop that would be a deadlock): use the async methods (``ainvoke``) there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from pydantic_core import from_json, to_json
from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore.errors import ConvostoreError
from convostore.models import ConversationTurn, Role
from convostore.repository import SessionRepository

__all__ = [
    "ConvostoreChatMessageHistory",
    "SyncCallError",
    "import_sql_chat_history",
    "to_messages",
    "to_turns",
]

T = TypeVar("T")

_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}
"""Role of each message type (and of a ``ChatMessage``'s role); chunk types drop ``Chunk``."""


class SyncCallError(ConvostoreError, RuntimeError):
    """A sync method of ``ConvostoreChatMessageHistory`` cannot wait for the repository here:
    it was called inside a running event loop (waiting would block it, and deadlock the
    repository's own loop), or no event loop is known for the history (none was running when
    it was made, none was passed as ``loop=``, and no async method has run yet), or that loop
    is closed."""


def _role(message: BaseMessage) -> Role:
    kind = message.type.removesuffix("MessageChunk").lower()
    if kind == "chat":
        return _ROLES.get(str(getattr(message, "role", "")).lower(), "user")
    return _ROLES.get(kind, "user")


def _text(content: str | list[str | dict[Any, Any]]) -> str:
    if isinstance(content, str):
        return content
    parts = [
        block if isinstance(block, str) else block.get("text", "")
        for block in content
        if isinstance(block, str) or block.get("type") == "text"
    ]
    return "\n".join(part for part in parts if isinstance(part, str))


def _turn(message: BaseMessage) -> ConversationTurn:
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_arguments: Any = None
    if isinstance(message, ToolMessage):
        tool_name, tool_call_id = message.name, message.tool_call_id
    elif isinstance(message, FunctionMessage):
        tool_name = message.name
    elif isinstance(message, AIMessage) and message.tool_calls:
        first = message.tool_calls[0]
        tool_name, tool_call_id, tool_arguments = first["name"], first["id"], first["args"]
    return ConversationTurn(
        role=_role(message),
        content=_text(message.content),
        tool_name=tool_name,
        tool_call_id=tool_call_id,
        tool_arguments=tool_arguments,
        data=message_to_dict(message),
    )


def to_turns(messages: Sequence[BaseMessage]) -> list[ConversationTurn]:
    """The convostore turns that keep ``messages`` (one each, in order)."""
    return [_turn(message) for message in messages]


def _plain(turn: ConversationTurn) -> BaseMessage:
    """The message a turn stored without LangChain's data stands for."""
    if turn.role == "assistant":
        return AIMessage(content=turn.content)
    if turn.role == "system":
        return SystemMessage(content=turn.content)
    if turn.role == "tool":
        return ToolMessage(
            content=turn.content, tool_call_id=turn.tool_call_id or "", name=turn.tool_name
        )
    return HumanMessage(content=turn.content)


def to_messages(turns: Sequence[ConversationTurn]) -> list[BaseMessage]:
    """The LangChain messages ``turns`` keep, in order (new objects each call)."""
    kept = [turn.data for turn in turns if isinstance(turn.data, dict) and "type" in turn.data]
    # The turns' data is shared with the repository's cache, and LangChain's messages keep
    # nested dicts they are given: they get a copy (pydantic-core's JSON round trip is the
    # cheapest deep copy of JSON values measured: 1.6 ms per 1,000 messages).
    loaded = iter(messages_from_dict(from_json(to_json(kept))) if kept else ())
    return [
        next(loaded) if isinstance(turn.data, dict) and "type" in turn.data else _plain(turn)
        for turn in turns
    ]


class ConvostoreChatMessageHistory(BaseChatMessageHistory):
    """The messages of one convostore session, as LangChain's chat history.

    Args:
        session_id: The convostore session (created by the first write, and again after it
            expired).
        repository: A started ``SessionRepository``.
        user_id: The user the session belongs to: every call passes it on, so another user's
            live session reads empty and refuses writes (``NotSessionOwner``), and
            ``erase_user`` removes the history.
        loop: The event loop the repository runs on, for the sync methods; by default the
            loop running when the history is made, else the loop of its first async call.
    """

    def __init__(
        self,
        session_id: str,
        repository: SessionRepository,
        *,
        user_id: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.user_id = user_id
        self._repository = repository
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop

    def _note_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def aget_messages(self) -> list[BaseMessage]:
        """The session's messages in order; empty if it is unknown or expired, or another
        user's (as ``SessionRepository.get`` does, not telling the session exists)."""
        self._note_loop()
        state = await self._repository.get(self.session_id, user_id=self.user_id)
        return [] if state is None else to_messages(state.turns)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` after the stored ones, in one transaction.

        Raises:
            NotSessionOwner: the live session belongs to another user.
            InvalidTurn: a message holds what JSON cannot carry exactly, or more than the
                store's size limits (nothing is stored).
        """
        self._note_loop()
        await self._repository.add_messages(
            self.session_id, to_turns(messages), user_id=self.user_id
        )

    async def aclear(self) -> None:
        """Remove every message; the session stays (with its title and metadata).

        Raises:
            NotSessionOwner: the live session belongs to another user.
        """
        self._note_loop()
        await self._repository.clear(self.session_id, user_id=self.user_id)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """``aget_messages``, waited for (see the module docstring for where it can be)."""
        return self._wait(self.aget_messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """``aadd_messages``, waited for."""
        self._wait(lambda: self.aadd_messages(messages))

    def clear(self) -> None:
        """``aclear``, waited for."""
        self._wait(self.aclear)

    def _wait(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` on the repository's loop and wait for its result."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise SyncCallError(
                "no open event loop is known for this history: make it while the repository's "
                "loop runs, or pass loop=, or use the async methods"
            )
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not None:
            raise SyncCallError(
                "a sync method of ConvostoreChatMessageHistory was called inside a running "
                "event loop, where waiting would block it (a deadlock on the repository's own "
                "loop): use aget_messages / aadd_messages / aclear, or ainvoke"
            )

        async def run() -> T:
            return await call()

        if not loop.is_running():
            return loop.run_until_complete(run())
        return asyncio.run_coroutine_threadsafe(run(), loop).result()


async def import_sql_chat_history(
    repository: SessionRepository,
    engine: AsyncEngine,
    *,
    table_name: str = "message_store",
    user_id: str | None = None,
    batch: int = 1_000,
) -> int:
    """Copy the histories of LangChain's ``SQLChatMessageHistory`` (its table of ``id``,
    ``session_id`` and ``message`` JSON) into convostore, each session's messages in ``id``
    order after what the convostore session already holds.

    Each batch of a session's messages is one ``add_messages`` whose idempotency key names
    its first and last row ids, so running the import again (after a failure halfway, say)
    stores no message twice while the sessions live.

    Args:
        repository: A started ``SessionRepository``.
        engine: An async engine on the database that holds the table.
        table_name: The table ``SQLChatMessageHistory`` was given (its default here too).
        user_id: The user the imported sessions belong to.
        batch: Messages per ``add_messages`` call.

    Returns:
        The number of messages read.
    """
    store = table(table_name, column("id"), column("session_id"), column("message"))
    query = select(store.c.id, store.c.session_id, store.c.message).order_by(
        store.c.session_id, store.c.id
    )
    pending: list[tuple[int, BaseMessage]] = []
    session: str | None = None
    read = 0

    async def flush() -> None:
        if session is not None and pending:
            key = f"message_store:{pending[0][0]}-{pending[-1][0]}"
            turns = to_turns([message for _, message in pending])
            await repository.add_messages(session, turns, idempotency_key=key, user_id=user_id)
        pending.clear()

    async with engine.connect() as conn:
        rows = await conn.stream(query)
        async for row_id, session_id, text in rows:
            if session_id != session or len(pending) >= batch:
                await flush()
                session = session_id
            pending.append((row_id, messages_from_dict([json.loads(text)])[0]))
            read += 1
    await flush()
    return read
