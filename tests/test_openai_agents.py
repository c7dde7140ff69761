"""The OpenAI Agents SDK adapter: real agents run on it with the SDK's own scripted model, on
every backend, and it behaves as the SDK's ``SQLiteSession`` does under the operations of
the SDK's session documentation and of its published session tests, run on both."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    Runner,
    SessionSettings,
    SQLiteSession,
    function_tool,
    set_tracing_disabled,
)
from agents.extensions.memory import EncryptedSession
from agents.memory import Session
from agents.testing import ScriptedModel, assistant_message, function_call
from conftest import FakeClock, MakeRepo

from convostore import InvalidSessionId, InvalidTurn, NotSessionOwner, SessionRepository
from convostore.integrations.openai_agents import ConvostoreSession

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openai-agents.md"

set_tracing_disabled(True)  # the runner would try to export its traces to OpenAI

Open = Callable[..., Any]
"""Opens a session of the store under test: ``open(session_id, **settings)`` (typed loosely:
the tests hand the SDK's sessions plain dicts, not its TypedDicts)."""
Scenario = Callable[[Open], Awaitable[list[Any]]]
"""Runs operations on sessions it opens and returns what each one gave back."""


@pytest.fixture
def reference(tmp_path: Path) -> Any:
    """Opens the SDK's ``SQLiteSession`` on a file of this test's own; all closed at the end."""
    opened: list[SQLiteSession] = []

    def open_session(session_id: str, **settings: Any) -> SQLiteSession:
        session = SQLiteSession(session_id, tmp_path / "sdk.db", **settings)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


def _ours(repo: SessionRepository) -> Open:
    def open_session(session_id: str, **settings: Any) -> ConvostoreSession:
        return ConvostoreSession(session_id, repo, **settings)

    return open_session


def _exact(value: Any) -> str:
    """The JSON text of ``value``: equal texts mean equal values in the same key order."""
    return json.dumps(value, ensure_ascii=False)


def _count_archives(place: str) -> str:
    """How many archives there are in a place."""
    return f"{place}: 12"


count_archives = function_tool(_count_archives, name_override="count_archives")
"""The agent's tool (decorated by call: mypy without the SDK sees an untyped decorator)."""


def _model() -> ScriptedModel:
    """The scripted model of a two-run conversation: a tool call and its answer, then an
    answer."""
    return ScriptedModel(
        [
            [function_call("count_archives", {"place": "Utrecht"}, call_id="call_1")],
            [assistant_message("Er zijn 12 archieven in Utrecht.")],
            [assistant_message("In Enschede zijn er 3.", item_id="msg_2")],
        ]
    )


def _inputs(model: ScriptedModel) -> list[Any]:
    return [call.input for call in model.calls]


async def _run(runner: str, agent: Agent[Any], text: Any, **kwargs: Any) -> Any:
    if runner == "run":
        return await Runner.run(agent, text, **kwargs)
    result = Runner.run_streamed(agent, text, **kwargs)
    async for _ in result.stream_events():
        pass
    return result


@pytest.mark.parametrize("runner", ["run", "run_streamed"])
async def test_agent_remembers_the_first_run_in_the_second(
    runner: str, repo: SessionRepository, make_repo: MakeRepo, reference: Open
) -> None:
    """A real agent with a function tool runs twice on a session of convostore: the second
    run's model input holds the first run (question, tool call, tool output, answer); the
    store holds each item as a message with its role, text and tool fields; a restarted
    worker reads the items back exactly; and all of it is what the SDK's SQLiteSession
    gives for the same script."""
    results = []
    for session in (ConvostoreSession("chat-1", repo), reference("chat-1")):
        model = _model()
        agent = Agent(name="archivist", model=model, tools=[count_archives])
        first = await _run(runner, agent, "Welke archieven zijn er in Utrecht?", session=session)
        second = await _run(runner, agent, "En in Enschede?", session=session)
        assert (first.final_output, second.final_output) == (
            "Er zijn 12 archieven in Utrecht.",
            "In Enschede zijn er 3.",
        )
        results.append((_inputs(model), await session.get_items()))
    (inputs, items), (sdk_inputs, sdk_items) = results
    assert _exact(inputs) == _exact(sdk_inputs)
    assert _exact(items) == _exact(sdk_items)
    assert len(inputs[-1]) == 5
    assert inputs[-1][:4] == items[:4]

    state = await repo.get("chat-1")
    assert state is not None
    assert [
        (t.role, t.content, t.tool_name, t.tool_call_id, t.tool_arguments) for t in state.turns
    ] == [
        ("user", "Welke archieven zijn er in Utrecht?", None, None, None),
        ("assistant", "", "count_archives", "call_1", {"place": "Utrecht"}),
        ("tool", "Utrecht: 12", "count_archives", "call_1", None),
        ("assistant", "Er zijn 12 archieven in Utrecht.", None, None, None),
        ("user", "En in Enschede?", None, None, None),
        ("assistant", "In Enschede zijn er 3.", None, None, None),
    ]
    restarted = await make_repo()
    assert _exact(await ConvostoreSession("chat-1", restarted).get_items()) == _exact(sdk_items)


async def _docs_basic_operations(open_session: Open) -> list[Any]:
    """The SDK documentation's "Basic operations" example."""
    session = open_session("user_123")
    seen: list[Any] = [await session.get_items()]
    await session.add_items(
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"}]
    )
    seen += [await session.get_items(), await session.pop_item(), await session.get_items()]
    await session.clear_session()
    seen += [await session.get_items(), await session.pop_item()]
    return seen


async def _pop_until_empty(open_session: Open) -> list[Any]:
    """Popping an empty session, then every item of three, then the empty session again."""
    session = open_session("pop_test")
    seen: list[Any] = [await session.pop_item()]
    await session.add_items(
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there!"},
            {"role": "user", "content": "How are you?"},
        ]
    )
    for _ in range(4):
        seen += [await session.pop_item(), await session.get_items()]
    return seen


async def _sessions_apart(open_session: Open) -> list[Any]:
    """Two sessions on one store: adding to and popping from one leaves the other alone."""
    first, second = open_session("session_1"), open_session("session_2")
    await first.add_items([{"role": "user", "content": "Session 1 message"}])
    await second.add_items(
        [
            {"role": "user", "content": "Session 2 message 1"},
            {"role": "user", "content": "Session 2 message 2"},
        ]
    )
    popped = await second.pop_item()
    await second.clear_session()
    return [popped, await first.get_items(), await second.get_items()]


_SIX: list[Any] = [
    {"role": "user", "content": "Message 1"},
    {"role": "assistant", "content": "Response 1"},
    {"role": "user", "content": "Message 2"},
    {"role": "assistant", "content": "Response 2"},
    {"role": "user", "content": "Message 3"},
    {"role": "assistant", "content": "Response 3"},
]


async def _limits(open_session: Open) -> list[Any]:
    """get_items with every kind of limit: none, fewer, as many as and more than stored
    (up to more than any store holds), zero and negative; on an unknown session too."""
    session = open_session("count_test")
    seen: list[Any] = [await session.get_items(limit=3)]
    await session.add_items(_SIX)
    for limit in (None, 1, 2, 4, 6, 10, 0, -1, 2**40):
        seen.append(await session.get_items(limit=limit))
    return seen


async def _settings_limit(open_session: Open) -> list[Any]:
    """``session_settings.limit`` is the default limit, an explicit one overrides it, and
    settings may be given as a dict."""
    session = open_session("settings_test", session_settings=SessionSettings(limit=3))
    await session.add_items(_SIX)
    as_dict = open_session("settings_test", session_settings={"limit": 2})
    return [
        await session.get_items(),
        await session.get_items(limit=5),
        await as_dict.get_items(),
        session.session_settings and session.session_settings.limit,
    ]


async def _texts(open_session: Open) -> list[Any]:
    """Unicode, quotes and SQL keywords come back as given."""
    session = open_session("special_chars_test")
    await session.add_items(
        [
            {"role": "user", "content": "こんにちは"},
            {"role": "assistant", "content": "😊👍"},
            {"role": "user", "content": "Привет"},
            {"role": "user", "content": "O'Reilly"},
            {"role": "assistant", "content": "DROP TABLE sessions;"},
            {"role": "user", "content": '"SELECT * FROM users WHERE name = "admin";"'},
            {"role": "assistant", "content": "Robert'); DROP TABLE students;--"},
            {"role": "user", "content": ""},
        ]
    )
    return [await session.get_items()]


async def _exact_items(open_session: Open) -> list[Any]:
    """Items of every shape the SDK stores come back equal, key order and number types
    included: messages with content parts, tool calls and outputs, reasoning, a developer
    message, unknown keys."""
    session = open_session("exact_test")
    await session.add_items(
        [
            {"role": "developer", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": "https://example.org/a.png"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "thinking"}],
            },
            {
                "type": "function_call",
                "name": "lookup",
                "call_id": "c1",
                "arguments": '{"b": 1, "a": [1.0, -0.0, 12345678901234567890]}',
                "status": "completed",
                "id": "fc_1",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "patch", "input": "*** x"},
            {
                "type": "custom_tool_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "done"}],
            },
            {
                "z": None,
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Done.", "annotations": []}],
                "type": "message",
                "status": "completed",
                "id": "msg_1",
                "nested": {"b": [True, False, {"c": 1.5}], "a": 0},
            },
        ]
    )
    return [await session.get_items(), await session.get_items(limit=3)]


async def _empty_and_again(open_session: Open) -> list[Any]:
    """Adding no items changes nothing; after a clear, adding starts the history anew."""
    session = open_session("again_test")
    await session.add_items([])
    seen: list[Any] = [await session.get_items()]
    await session.add_items(_SIX[:2])
    await session.clear_session()
    await session.clear_session()
    await session.add_items(_SIX[2:4])
    return [*seen, await session.get_items()]


async def _concurrent_adds(open_session: Open) -> list[Any]:
    """Ten concurrent add_items on one session (the SDK's test uses threads): all stored."""
    session = open_session("concurrent_test")
    await asyncio.gather(
        *(session.add_items([{"role": "user", "content": f"Message {i}"}]) for i in range(10))
    )
    items = await session.get_items()
    return [len(items), sorted(item["content"] for item in items)]


async def _agent_runs(
    open_session: Open,
    runs: Sequence[tuple[str | list[Any], RunConfig | None]],
    *,
    history: list[Any] | None = None,
    pops: int = 0,
) -> list[Any]:
    """Scripted agent runs on one session: the model's input of each run, and the items
    stored after them. ``pops`` items are popped after the first run (the documentation's
    "Using pop_item for corrections")."""
    session = open_session("runner_test")
    if history is not None:
        await session.add_items(history)
    model = ScriptedModel([[assistant_message(f"Reply {i}")] for i in range(len(runs))])
    agent = Agent(name="test", model=model)
    popped = []
    for index, (text, config) in enumerate(runs):
        result = await Runner.run(agent, text, session=session, run_config=config)
        assert result.final_output == f"Reply {index}"
        if index == 0:
            popped = [await session.pop_item() for _ in range(pops)]
    return [_inputs(model), popped, await session.get_items()]


async def _docs_correction(open_session: Open) -> list[Any]:
    return await _agent_runs(
        open_session, [("What's 2 + 2?", None), ("What's 2 + 3?", None)], pops=2
    )


async def _list_input_appended(open_session: Open) -> list[Any]:
    return await _agent_runs(
        open_session, [([{"role": "user", "content": "Test message"}], None)], history=_SIX[:2]
    )


def _users_only(history: list[Any], new_input: list[Any]) -> list[Any]:
    return [item for item in history if item.get("role") == "user"] + new_input


def _repeat_first(history: list[Any], new_input: list[Any]) -> list[Any]:
    return [*history, history[0], *new_input] if history else new_input


async def _input_callbacks(open_session: Open) -> list[Any]:
    """session_input_callback filters history, and repeating history does not store it
    again."""
    users = RunConfig(session_input_callback=_users_only)
    repeat = RunConfig(session_input_callback=_repeat_first)
    return await _agent_runs(
        open_session,
        [("user 0", repeat), ("user 1", repeat), ("user 2", users)],
        history=_SIX[:2],
    )


_TOOL_PAIR: list[Any] = [
    {"role": "user", "content": "What is the weather?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}],
    },
]


async def _run_limits(open_session: Open) -> list[Any]:
    """RunConfig's session_settings limit the history a run reads: one that cuts between a
    tool call and its output, zero, and more than stored."""
    return await _agent_runs(
        open_session,
        [
            ("What about tomorrow?", RunConfig(session_settings=SessionSettings(limit=2))),
            ("And after?", RunConfig(session_settings=SessionSettings(limit=0))),
            ("Thanks", RunConfig(session_settings=SessionSettings(limit=100))),
        ],
        history=_TOOL_PAIR,
    )


SCENARIOS: dict[str, Scenario] = {
    "docs basic operations": _docs_basic_operations,
    "docs pop_item for corrections": _docs_correction,
    "pop until empty": _pop_until_empty,
    "sessions apart": _sessions_apart,
    "limits": _limits,
    "session_settings limit": _settings_limit,
    "unicode and SQL text": _texts,
    "exact items": _exact_items,
    "empty add, clear, add again": _empty_and_again,
    "concurrent adds": _concurrent_adds,
    "list input appended": _list_input_appended,
    "session_input_callback": _input_callbacks,
    "run limits": _run_limits,
}


@pytest.mark.parametrize("name", SCENARIOS)
async def test_behaves_as_the_sdks_sqlite_session(
    name: str, repo: SessionRepository, make_repo: MakeRepo, reference: Open
) -> None:
    """The same operations give the same results on convostore as on the SDK's
    SQLiteSession, item for item, in the same key order; and a restarted worker reads the
    same items from the database."""
    scenario = SCENARIOS[name]
    ours = await scenario(_ours(repo))
    theirs = await scenario(reference)
    assert _exact(ours) == _exact(theirs)
    assert any(ours), "the scenario saw nothing"
    restarted = _ours(await make_repo())
    for session_id in ("user_123", "pop_test", "session_1", "count_test", "exact_test"):
        await _same_items(restarted(session_id), _ours(repo)(session_id))


async def _same_items(cold: Any, warm: Any) -> None:
    assert _exact(await cold.get_items()) == _exact(await warm.get_items())


async def test_items_handed_out_and_in_are_copies(repo: SessionRepository) -> None:
    """Changing an item after add_items, or one that get_items or pop_item returned, changes
    nothing stored or cached."""
    session = ConvostoreSession("copies", repo)
    given: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello"},
    ]
    await session.add_items(given)
    given[0]["content"][0]["text"] = "changed"
    first: list[Any] = await session.get_items()
    first[0]["content"][0]["text"] = "changed"
    first[0]["content"].append({"type": "input_text", "text": "more"})
    first[1]["content"] = "changed"
    again = await session.get_items(limit=2)
    assert again == [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello"},
    ]
    popped = await session.pop_item()
    assert popped == {"role": "assistant", "content": "Hello"}


async def test_each_item_kind_as_a_message(repo: SessionRepository) -> None:
    """Each item becomes a message with the role, text and tool fields SQL and search can
    use; an output without a name gets that of its call in the same add_items."""
    session = ConvostoreSession("kinds", repo)
    items: list[Any] = [
        {"role": "system", "content": "Be kind."},
        {"role": "developer", "content": "Be brief."},
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "One", "annotations": []},
                {"type": "refusal", "refusal": "Two"},
            ],
        },
        {"type": "function_call", "name": "f", "call_id": "c1", "arguments": "not json"},
        {"type": "function_call", "name": "g", "call_id": "c2", "arguments": "NaN"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "out"}],
        },
        {"type": "function_call_output", "call_id": "c9", "output": "orphan"},
        {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "hm"}]},
        {"type": "custom_tool_call", "call_id": "c3", "name": "patch", "input": '{"a": 1}'},
        {"type": "mcp_approval_response", "approval_request_id": "r1", "approve": True},
    ]
    await session.add_items(items)
    state = await repo.get("kinds")
    assert state is not None
    assert [
        (t.role, t.content, t.tool_name, t.tool_call_id, t.tool_arguments) for t in state.turns
    ] == [
        ("system", "Be kind.", None, None, None),
        ("system", "Be brief.", None, None, None),
        ("assistant", "One\nTwo", None, None, None),
        ("assistant", "", "f", "c1", "not json"),
        ("assistant", "", "g", "c2", "NaN"),
        ("tool", "out", "f", "c1", None),
        ("tool", "orphan", None, "c9", None),
        ("assistant", "hm", None, None, None),
        ("assistant", "", "patch", "c3", '{"a": 1}'),
        ("user", "", None, None, None),
    ]


async def test_long_output_kept_whole(make_repo: MakeRepo) -> None:
    """A tool output longer than max_text_chars is stored whole as the item; the message's
    searchable content is its first max_text_chars characters."""
    repo = await make_repo(max_text_chars=50)
    session = ConvostoreSession("long", repo)
    output: Any = {"type": "function_call_output", "call_id": "c1", "output": "x" * 500}
    await session.add_items([output])
    assert await session.get_items() == [output]
    state = await repo.get("long")
    assert state is not None
    assert state.turns[0].content == "x" * 50


async def test_sdk_encrypted_session_wraps_it(repo: SessionRepository) -> None:
    """The SDK's EncryptedSession runs on top of it: items round-trip through the wrapper,
    and the store holds only the SDK's encrypted envelopes."""
    session = EncryptedSession(
        session_id="sealed",
        underlying_session=ConvostoreSession("sealed", repo),
        encryption_key="k" * 32,
        ttl=600,
    )
    await session.add_items(_SIX[:2])
    assert await session.get_items() == _SIX[:2]
    state = await repo.get("sealed")
    assert state is not None
    assert "Message 1" not in json.dumps([turn.model_dump(mode="json") for turn in state.turns])
    assert await session.pop_item() == _SIX[1]


async def test_turns_written_without_items_read_as_items(repo: SessionRepository) -> None:
    """Turns that convostore's own API wrote (no item stored with them) read as the items
    the SDK would have made of them, so one conversation can be fed both ways."""
    await repo.add_turn("shared", "Welke archieven zijn er in Utrecht?", "Er zijn er 12.")
    assert await ConvostoreSession("shared", repo).get_items() == [
        {"role": "user", "content": "Welke archieven zijn er in Utrecht?"},
        {"role": "assistant", "content": "Er zijn er 12."},
    ]


async def test_bad_items_store_nothing(repo: SessionRepository) -> None:
    """An item that is not a JSON object, or holds what JSON cannot carry, is refused before
    any item of its call is stored."""
    session = ConvostoreSession("bad", repo)
    await session.add_items([{"role": "user", "content": "kept"}])
    bad_items: list[Any] = [
        "text",
        {"role": "user", "content": float("nan")},
        {"role": "user", 1: "x"},
    ]
    for bad in bad_items:
        items: list[Any] = [{"role": "user", "content": "not kept"}, bad]
        with pytest.raises(InvalidTurn):
            await session.add_items(items)
    assert await session.get_items() == [{"role": "user", "content": "kept"}]


async def test_user_scoping(repo: SessionRepository) -> None:
    """A session created for one user is another user's to neither read nor change: it reads
    as empty, and writes raise NotSessionOwner and change nothing."""
    alice = ConvostoreSession("shared-id", repo, user_id="alice")
    await alice.add_items(_SIX[:2])
    mallory = ConvostoreSession("shared-id", repo, user_id="mallory")
    assert await mallory.get_items() == []
    assert await mallory.get_items(limit=1) == []
    for write in (mallory.add_items(_SIX[2:3]), mallory.pop_item(), mallory.clear_session()):
        with pytest.raises(NotSessionOwner):
            await write
    assert await alice.get_items() == _SIX[:2]
    assert [s.session_id for s in await repo.list_sessions("alice")] == ["shared-id"]
    with pytest.raises(InvalidSessionId):
        ConvostoreSession("bad id\n", repo)
    with pytest.raises(InvalidSessionId):
        ConvostoreSession("ok", repo, user_id="")


async def test_ttl_expiry(make_repo: MakeRepo, clock: FakeClock) -> None:
    """An expired conversation reads as empty, and the next run starts a new one."""
    repo = await make_repo(session_ttl=60)
    session = ConvostoreSession("short-lived", repo)
    await session.add_items(_SIX[:2])
    clock.advance(59)
    assert await session.get_items() == _SIX[:2]
    clock.advance(61)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items(_SIX[2:4])
    assert await session.get_items() == _SIX[2:4]


async def test_erase_user(repo: SessionRepository) -> None:
    """erase_user removes a user's agent conversations, cleared items included, from every
    table; export_user showed them before."""
    session = ConvostoreSession("erase-me", repo, user_id="bob")
    await session.add_items(_SIX[:4])
    await session.pop_item()
    await session.clear_session()
    await session.add_items(_SIX[4:])
    exported = await repo.export_user("bob")
    assert "Message 1" in json.dumps(exported)
    counts = await repo.erase_user("bob")
    assert counts["turns"] >= 6
    assert await session.get_items() == []
    assert "Message" not in json.dumps(await repo.export_user("bob"))


def _move_sessions() -> Callable[..., Awaitable[int]]:
    """The docs' ``move_sessions``, as the page shows it."""
    found = re.search(
        r"<!-- move-sessions -->\n```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL
    )
    assert found is not None
    namespace: dict[str, Any] = {}
    exec(compile(found.group(1), str(DOCS), "exec"), namespace)
    move: Callable[..., Awaitable[int]] = namespace["move_sessions"]
    return move


async def test_docs_move_sessions(repo: SessionRepository, reference: Open, tmp_path: Path) -> None:
    """The docs' move_sessions copies the SDK's stored conversations into convostore item for
    item (skipping a row the SDK cannot read either), with the owners it is given, and
    moves nothing the second time."""
    sdk = {"conv-a": reference("conv-a"), "conv-b": reference("conv-b")}
    await sdk["conv-a"].add_items(_SIX)
    await sdk["conv-b"].add_items(_TOOL_PAIR)
    with closing(sqlite3.connect(tmp_path / "sdk.db")) as conn:
        conn.execute(
            "INSERT INTO agent_messages (session_id, message_data) VALUES ('conv-b', 'not json')"
        )
        conn.commit()
    move_sessions = _move_sessions()
    sdk_url = f"sqlite+aiosqlite:///{tmp_path / 'sdk.db'}"
    owners = {"conv-a": "alice"}
    assert await move_sessions(sdk_url, repo, owners.get) == len(_SIX) + len(_TOOL_PAIR)
    for session_id, session in sdk.items():
        moved = await ConvostoreSession(session_id, repo).get_items()
        assert _exact(moved) == _exact(await session.get_items())
    assert [s.session_id for s in await repo.list_sessions("alice")] == ["conv-a"]
    assert await move_sessions(sdk_url, repo) == 0


def test_session_follows_the_sdks_protocol(tmp_path: Path) -> None:
    """ConvostoreSession is a Session as the SDK checks it, with default settings."""
    repo = SessionRepository(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    session = ConvostoreSession("s", repo)
    assert isinstance(session, Session)
    assert session.session_settings == SessionSettings()
    assert repr(session) == "ConvostoreSession('s', user_id=None)"


def test_import_convostore_does_not_import_the_sdk() -> None:
    """`import convostore` (and its integrations package) leaves the SDK unimported, in a
    fresh interpreter."""
    code = (
        "import sys, convostore, convostore.integrations; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('agents', 'openai')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
