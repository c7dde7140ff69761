"""Messages of every role (``add_messages``, ``pop_message``, ``clear``): what agent
frameworks store, beside the question/answer exchanges of ``add_turn``. Tool fields are
columns, ``data`` reads back as written, and what is taken out stays in the transcript.
Every backend."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import MakeRepo, Sql

from convostore import (
    ConversationTurn,
    InvalidTurn,
    NotSessionOwner,
    SessionRepository,
)

CALL = {"city": "Utrecht", "days": [1, 2], "exact": 1e20, "neg": -0.0, "z": None, "a": True}
"""Tool arguments whose keys are out of order and whose numbers JSONB would change."""


def _item(kind: str, **fields: Any) -> dict[str, Any]:
    """A framework's own record of a message, keys deliberately unsorted."""
    return {"type": kind, "zeta": 1, "alpha": {"b": 2, "a": [3.5, "x"]}, **fields}


def _conversation() -> list[ConversationTurn]:
    return [
        ConversationTurn(role="system", content="Je bent een archivaris.", data=_item("system")),
        ConversationTurn(role="user", content="Welke archieven zijn er in Utrecht?"),
        ConversationTurn(
            role="assistant",
            tool_name="search_archives",
            tool_call_id="call_1",
            tool_arguments=CALL,
            data=_item("function_call", call_id="call_1"),
        ),
        ConversationTurn(
            role="tool",
            content='["Het Utrechts Archief"]',
            tool_name="search_archives",
            tool_call_id="call_1",
            data=_item("function_call_output", output='["Het Utrechts Archief"]'),
        ),
        ConversationTurn(role="assistant", content="Het Utrechts Archief.", data="plain text"),
    ]


def _shape(turn: ConversationTurn) -> tuple[Any, ...]:
    """A message as a framework reads it back, ``data`` and arguments as their JSON text."""
    return (
        turn.role,
        turn.content,
        turn.tool_name,
        turn.tool_call_id,
        json.dumps(turn.tool_arguments),
        json.dumps(turn.data),
    )


async def test_messages_of_every_role_read_back_as_written(
    repo: SessionRepository, make_repo: MakeRepo
) -> None:
    """All four roles, tool fields and ``data`` survive the cache and a cold read exactly:
    equal JSON text, keys in the order written."""
    given = _conversation()
    state = await repo.add_messages("s", given)
    expected = [_shape(turn) for turn in given]
    assert [_shape(turn) for turn in state.turns] == expected
    assert all(turn.created_at is not None for turn in state.turns)
    cold = await (await make_repo()).get("s")
    assert cold is not None
    assert [_shape(turn) for turn in cold.turns] == expected
    assert cold.turns == state.turns
    window = await (await make_repo()).get("s", last_turns=2)
    assert window is not None
    assert [_shape(turn) for turn in window.turns] == expected[-2:]


async def test_messages_and_exchanges_mix(repo: SessionRepository, make_repo: MakeRepo) -> None:
    """``add_turn`` follows messages and the other way round; user messages' slots and the
    messages' templates carry into the context; an automatic title comes from the first user
    message, not a system one."""
    titled = await make_repo(auto_title=True)
    await titled.add_messages(
        "s",
        [
            {"role": "system", "content": "Wees kort."},
            {"role": "user", "content": "Utrecht?", "slots": {"place": "Utrecht"}},
            {"role": "assistant", "content": "Ja.", "template_id": "t1"},
        ],
    )
    state = await titled.add_turn("s", "En Enschede?", "Ook.", slots={"place": "Enschede"})
    state = await titled.add_messages("s", [ConversationTurn(role="tool", content="{}")])
    assert [turn.role for turn in state.turns] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
    ]
    assert state.current_slots == {"place": "Enschede"}
    assert state.current_template_id == "t1"
    assert state.title == "Utrecht?"
    cold = await repo.get("s")
    assert cold is not None
    assert cold.turns == state.turns
    assert (cold.current_slots, cold.current_template_id) == ({"place": "Enschede"}, "t1")


async def test_an_append_of_messages_is_all_or_nothing(repo: SessionRepository, sql: Sql) -> None:
    """A bad message anywhere in the list is refused before any SQL, naming its index; an
    empty list stores nothing; a repeated key stores the messages once."""
    await repo.add_messages("s", _conversation()[:2])
    bad: list[Any] = [
        [ConversationTurn(role="user", content="ok"), {"role": "developer"}],
        [ConversationTurn(role="tool", tool_call_id="x" * 256)],
        [ConversationTurn(role="tool", tool_name="")],
        [ConversationTurn(role="assistant", tool_arguments={"n": float("nan")})],
        [ConversationTurn(role="assistant", data={1: "not a string key"})],
        [ConversationTurn(role="assistant", data={"bad": "\x00"})],
        [ConversationTurn(role="assistant", data={"set": {1, 2}})],
        "not a list",
        {"role": "user"},
    ]
    for messages in bad:
        with pytest.raises(InvalidTurn):
            await repo.add_messages("s", messages)
    with pytest.raises(InvalidTurn, match=r"messages\[1\]"):
        await repo.add_messages("s", bad[0])
    state = await repo.add_messages("s", [])
    assert len(state.turns) == 2
    for _ in range(2):
        state = await repo.add_messages("s", _conversation()[2:], idempotency_key="k1")
    assert len(state.turns) == 5
    rows = await sql("SELECT COUNT(*) FROM turns WHERE session_id = 's'")
    assert rows[0][0] == 5
    assert (await repo.add_messages("new", [])).turns == []
    assert await repo.get("new") is not None


async def test_pop_takes_out_the_newest_message(
    make_repo: MakeRepo, repo: SessionRepository, sql: Sql
) -> None:
    """``pop_message`` returns the newest message and takes it out of the live
    conversation, even if that splits an exchange; the transcript keeps it as superseded;
    the next message follows the rest; other workers see it."""
    other = await make_repo(cache_coherence="strict")
    given = _conversation()
    await repo.add_messages("s", given)
    cached = await other.get("s")
    assert cached is not None
    assert len(cached.turns) == 5
    popped = await repo.pop_message("s")
    assert popped is not None
    assert _shape(popped) == _shape(given[-1])
    popped = await repo.pop_message("s")
    assert popped is not None
    assert popped.role == "tool"
    state = await repo.get("s")
    assert state is not None
    assert [_shape(turn) for turn in state.turns] == [_shape(turn) for turn in given[:3]]
    seen = await other.get("s")
    assert seen is not None
    assert len(seen.turns) == 3
    state = await repo.add_messages("s", [ConversationTurn(role="tool", content="[]")])
    assert [turn.content for turn in state.turns][-1] == "[]"
    rows = await sql(
        "SELECT t.role, t.content FROM turns t JOIN conversations c "
        "ON c.session_id = t.session_id AND c.conversation_id = t.conversation_id "
        "WHERE t.session_id = 's' AND c.superseded_by IS NOT NULL ORDER BY t.content"
    )
    assert sorted(tuple(row) for row in rows) == [
        ("assistant", "Het Utrechts Archief."),
        ("tool", '["Het Utrechts Archief"]'),
    ]
    assert await repo.pop_message("unknown") is None
    await repo.add_messages("one", [ConversationTurn(role="user", content="hoi")])
    assert (await repo.pop_message("one")) is not None
    assert await repo.pop_message("one") is None


async def test_clear_empties_the_live_conversation(
    make_repo: MakeRepo, repo: SessionRepository, sql: Sql
) -> None:
    """``clear`` takes every message out; the session stays live with its title and owner;
    the transcript keeps the messages; clearing again changes nothing; an unknown session
    gives False."""
    await repo.add_messages("s", _conversation(), user_id="u")
    await repo.set_title("s", "Archieven", user_id="u")
    assert await repo.clear("s", user_id="u") is True
    assert await repo.clear("s", user_id="u") is True
    state = await repo.get("s", user_id="u")
    assert state is not None
    assert (state.turns, state.current_slots, state.title) == ([], {}, "Archieven")
    cold = await (await make_repo()).get("s", user_id="u")
    assert cold is not None
    assert cold.turns == []
    state = await repo.add_messages("s", [ConversationTurn(role="user", content="Opnieuw")])
    assert [turn.content for turn in state.turns] == ["Opnieuw"]
    kept = await sql("SELECT COUNT(*) FROM turns WHERE session_id = 's'")
    assert kept[0][0] == 6
    assert await repo.clear("unknown") is False


async def test_messages_are_owned(repo: SessionRepository) -> None:
    """Another user's session is never written or read through the message calls."""
    await repo.add_messages("s", _conversation(), user_id="u")
    with pytest.raises(NotSessionOwner):
        await repo.add_messages("s", _conversation(), user_id="v")
    with pytest.raises(NotSessionOwner):
        await repo.pop_message("s", user_id="v")
    with pytest.raises(NotSessionOwner):
        await repo.clear("s", user_id="v")
    state = await repo.get("s", user_id="u")
    assert state is not None
    assert len(state.turns) == 5
    exported = await repo.export_user("u")
    turns = exported["conversations"][0]["turns"]
    assert [turn["tool_call_id"] for turn in turns] == [None, None, "call_1", "call_1", None]
    assert json.dumps(turns[2]["tool_arguments"]) == json.dumps(CALL)
    assert (await repo.erase_user("u"))["conversations"] == 1
    assert await repo.get("s") is None


async def test_the_view_counts_messages_by_role(repo: SessionRepository, sql: Sql) -> None:
    """``message_roles``: each conversation's messages by role, with those naming a tool;
    the tool columns are plain columns analysts can filter on."""
    await repo.add_messages("s", _conversation(), user_id="u")
    await repo.add_turn("s", "Nog iets?", "Nee.", user_id="u")
    rows = await sql(
        "SELECT role, messages, tool_messages FROM message_roles "
        "WHERE session_id = 's' AND user_id = 'u' ORDER BY role"
    )
    assert [tuple(row) for row in rows] == [
        ("assistant", 3, 1),
        ("system", 1, 0),
        ("tool", 1, 1),
        ("user", 2, 0),
    ]
    calls = await sql(
        "SELECT a.seq, o.seq FROM turns a JOIN turns o ON o.session_id = a.session_id "
        "AND o.conversation_id = a.conversation_id AND o.tool_call_id = a.tool_call_id "
        "WHERE a.role = 'assistant' AND o.role = 'tool' AND a.tool_name = 'search_archives'"
    )
    assert [tuple(row) for row in calls] == [(3, 4)]


async def test_encrypted_messages_keep_their_data_sealed(make_repo: MakeRepo, sql: Sql) -> None:
    """With encryption keys, a message's data and tool arguments are stored sealed, like its
    content, and read back as written."""
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    keys = [Fernet.generate_key().decode()]
    repo = await make_repo(encryption_keys=keys)
    given = _conversation()
    await repo.add_messages("s", given)
    stored = await sql("SELECT tool_arguments, data FROM turns WHERE seq = 3")
    assert "Utrecht" not in str(stored[0][0])
    assert "function_call" not in str(stored[0][1])
    cold = await make_repo(encryption_keys=keys)
    state = await cold.get("s")
    assert state is not None
    assert [_shape(turn) for turn in state.turns] == [_shape(turn) for turn in given]


async def test_rekey_seals_the_data_of_plaintext_messages(
    make_repo: MakeRepo, url: str, sql: Sql
) -> None:
    """``rekey`` seals the data and arguments of messages stored before encryption; then the
    key alone reads them back as written."""
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    from convostore._ops.rekey import rekey

    given = _conversation()
    await (await make_repo()).add_messages("s", given)
    key = Fernet.generate_key().decode()
    counts = await rekey(url, [key])
    assert (counts.rekeyed, counts.from_plaintext) == (5, 5)
    stored = await sql("SELECT tool_arguments, data FROM turns WHERE seq = 3")
    assert "Utrecht" not in str(stored[0][0])
    assert "function_call" not in str(stored[0][1])
    state = await (await make_repo(encryption_keys=[key])).get("s")
    assert state is not None
    assert [_shape(turn) for turn in state.turns] == [_shape(turn) for turn in given]


async def test_redaction_reaches_data_and_arguments(make_repo: MakeRepo) -> None:
    """``StoreConfig.redact`` runs over every string in a message's data and arguments too,
    so what it removes from the content is not kept in the framework's copy."""
    repo = await make_repo(redact=lambda text: text.replace("Utrecht", "[plaats]"))
    state = await repo.add_messages("s", _conversation()[:3])
    assert state.turns[1].content == "Welke archieven zijn er in [plaats]?"
    assert state.turns[2].tool_arguments["city"] == "[plaats]"
    assert "Utrecht" not in json.dumps([turn.data for turn in state.turns])
