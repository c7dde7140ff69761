"""pydantic-ai message histories kept in convostore (the ``pydantic-ai`` extra).

    from convostore.integrations.pydantic_ai import load_messages, store_messages

    history = await load_messages(repo, session_id)
    result = await agent.run(prompt, message_history=history)
    await store_messages(repo, session_id, result.new_messages())

Each ``ModelMessage`` is one convostore turn, because a message is what pydantic-ai sends and
receives as a unit (a request's parts go to the model together, and a response's tool calls
are answered by one request of tool returns): one turn per message keeps ``last=N`` and
``pop_message`` on the boundaries the model sees. The turn's ``data`` is the message as
``ModelMessagesTypeAdapter`` dumps it to JSON, and what ``load_messages`` returns dumps to the
same JSON. The columns say what SQL needs, read from that JSON:

- role: a response is the assistant's; a request with a user prompt is the user's, one of tool
  returns or retry prompts (and no user prompt) is a tool turn, anything else (system prompts,
  instructions only) a system turn;
- content: the text of the parts of the turn's role, joined by newlines: a response's text
  parts, a user turn's prompts (a system prompt sent with them stays in ``data`` only), a tool
  turn's returns (JSON text where a return is not a string), a system turn's system prompts;
- tool name and call id: those of the first tool call of a response, or the first tool return
  (or retry prompt) of a request; a response's tool arguments are its first call's ``args``
  as pydantic-ai keeps them (a JSON string or an object). ``data`` keeps every part.

Turns stored without ``data`` (by ``add_turn``, or another adapter) load as the plain request
or response their role and text make.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_core import to_json

from convostore.models import ConversationState, ConversationTurn, Role
from convostore.repository import SessionRepository

__all__ = ["load_messages", "store_messages", "to_messages", "to_turns"]


_TOOL_REQUEST_PARTS = frozenset({"tool-return", "builtin-tool-return", "retry-prompt"})
_TOOL_CALL_PARTS = frozenset({"tool-call", "builtin-tool-call"})


def _role(message: dict[str, Any]) -> Role:
    if message.get("kind") == "response":
        return "assistant"
    kinds = {part.get("part_kind") for part in message.get("parts", ())}
    if "user-prompt" in kinds:
        return "user"
    if kinds & _TOOL_REQUEST_PARTS:
        return "tool"
    return "system"


_TEXT_PARTS: dict[Role, frozenset[str]] = {
    "user": frozenset({"user-prompt"}),
    "tool": _TOOL_REQUEST_PARTS,
    "system": frozenset({"system-prompt"}),
    "assistant": frozenset({"text"}),
}
"""The parts whose text is a turn's content, by the turn's role."""


def _part_text(part: dict[str, Any]) -> str:
    content = part.get("content")
    if isinstance(content, str):
        return content
    if part.get("part_kind") == "user-prompt" and isinstance(content, list):
        return "\n".join(item for item in content if isinstance(item, str))
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False)


def _turn(message: dict[str, Any]) -> ConversationTurn:
    role = _role(message)
    parts: list[dict[str, Any]] = message.get("parts", [])
    texts = [_part_text(part) for part in parts if part.get("part_kind") in _TEXT_PARTS[role]]
    wanted = {"assistant": _TOOL_CALL_PARTS, "tool": _TOOL_REQUEST_PARTS}.get(role, frozenset())
    tool = next((part for part in parts if part.get("part_kind") in wanted), None)
    return ConversationTurn(
        role=role,
        content="\n".join(text for text in texts if text),
        tool_name=tool.get("tool_name") if tool is not None else None,
        tool_call_id=tool.get("tool_call_id") if tool is not None else None,
        tool_arguments=tool.get("args") if tool is not None and role == "assistant" else None,
        data=message,
    )


def to_turns(messages: Sequence[ModelMessage]) -> list[ConversationTurn]:
    """The convostore turns that keep ``messages`` (one each, in order)."""
    dumped: list[dict[str, Any]] = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    return [_turn(message) for message in dumped]


def _plain(turn: ConversationTurn) -> ModelMessage:
    """The message a turn stored without pydantic-ai's data stands for."""
    if turn.role == "assistant":
        return ModelResponse(parts=[TextPart(turn.content)])
    if turn.role == "system":
        return ModelRequest(parts=[SystemPromptPart(turn.content)])
    if turn.role == "tool":
        name, text = turn.tool_name or "", turn.content
        returned = (
            ToolReturnPart(name, text, tool_call_id=turn.tool_call_id)
            if turn.tool_call_id
            else ToolReturnPart(name, text)  # pydantic-ai makes up a call id
        )
        return ModelRequest(parts=[returned])
    return ModelRequest(parts=[UserPromptPart(turn.content)])


def to_messages(turns: Sequence[ConversationTurn]) -> list[ModelMessage]:
    """The pydantic-ai messages ``turns`` keep, in order (new objects each call: the turns'
    data is shared with the repository's cache, so it is read through JSON text, never
    handed out; pydantic-core writes that text four times as fast as ``json.dumps``)."""
    kept = [turn.data for turn in turns if isinstance(turn.data, dict) and "kind" in turn.data]
    if len(kept) == len(turns):
        return ModelMessagesTypeAdapter.validate_json(to_json(kept))
    loaded = iter(ModelMessagesTypeAdapter.validate_json(to_json(kept)))
    return [
        next(loaded) if isinstance(turn.data, dict) and "kind" in turn.data else _plain(turn)
        for turn in turns
    ]


async def load_messages(
    repository: SessionRepository,
    session_id: str,
    *,
    user_id: str | None = None,
    last: int | None = None,
) -> list[ModelMessage]:
    """The session's messages, for ``agent.run(..., message_history=...)``; empty if the
    session is unknown or expired, or another user's (as ``SessionRepository.get`` does).

    Args:
        repository: A started ``SessionRepository``.
        session_id: The session.
        user_id: The user the session must belong to.
        last: Only the newest ``last`` messages. A cut can leave a tool return without the
            call before it, which model APIs refuse: choose it on a user message.
    """
    state = await repository.get(session_id, user_id=user_id, last_turns=last)
    return [] if state is None else to_messages(state.turns)


async def store_messages(
    repository: SessionRepository,
    session_id: str,
    messages: Sequence[ModelMessage],
    *,
    user_id: str | None = None,
    idempotency_key: str | None = None,
) -> ConversationState:
    """Append ``messages`` (a run's ``result.new_messages()``) after the stored ones, in one
    transaction; creates the session if it is unknown or expired.

    Args:
        repository: A started ``SessionRepository``.
        session_id: The session.
        messages: The messages to append, in order.
        user_id: The user the session belongs to (a new session is created as theirs).
        idempotency_key: A retry with the same key stores nothing again.

    Returns:
        The session's state after the append.

    Raises:
        NotSessionOwner: the live session belongs to another user.
        InvalidTurn: a message exceeds the store's size limits (nothing is stored).
    """
    return await repository.add_messages(
        session_id, to_turns(messages), user_id=user_id, idempotency_key=idempotency_key
    )
