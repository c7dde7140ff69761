"""The LangChain adapter: ``ConvostoreChatMessageHistory`` keeps every message LangChain
hands it (type, content, tool calls, extra kwargs) on every backend, drives a real
``RunnableWithMessageHistory`` chain with LangChain's fake chat model through ``ainvoke`` and
through ``invoke`` from a worker thread, answers as LangChain's own stores do on the same
operations, and keeps convostore's user scoping, TTL and erasure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, MakeRepo
from langchain_core._api.deprecation import LangChainDeprecationWarning
from langchain_core.chat_history import BaseChatMessageHistory, InMemoryChatMessageHistory
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import (
    ConversationTurn,
    InvalidTurn,
    NotSessionOwner,
    SessionRepository,
    StoreConfig,
)
from convostore.integrations.langchain import (
    ConvostoreChatMessageHistory,
    SyncCallError,
    import_sql_chat_history,
)

pytestmark = pytest.mark.filterwarnings(
    # RunnableWithMessageHistory and InMemoryChatMessageHistory announce their deprecation.
    "ignore::langchain_core._api.deprecation.LangChainDeprecationWarning"
)


def _sql_history_class() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langchain-community announces its own sunset
        from langchain_community.chat_message_histories import SQLChatMessageHistory
    return SQLChatMessageHistory


def _varied() -> list[BaseMessage]:
    """A conversation with every kind of message and field the adapter must keep."""
    return [
        SystemMessage(content="Je bent een archiefassistent."),
        HumanMessage(
            content=[
                {"type": "text", "text": "Welke archieven zijn er in Utrecht?"},
                {"type": "image_url", "image_url": {"url": "https://example.org/kaart.png"}},
            ],
            id="m-1",
            additional_kwargs={"results": [{"name": "Het Utrechts Archief", "score": 0.5}]},
        ),
        AIMessage(
            content="",
            tool_calls=[
                {"name": "search", "args": {"place": "Utrecht", "limit": 3}, "id": "call-1"},
                {"name": "count", "args": {}, "id": "call-2"},
            ],
            response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
        ),
        ToolMessage(
            content='[{"name": "Het Utrechts Archief"}]', tool_call_id="call-1", name="search"
        ),
        ToolMessage(content="12", tool_call_id="call-2"),
        AIMessage(
            content="Er zijn 12 archieven in Utrecht.",
            name="archivaris",
            invalid_tool_calls=[
                {"name": "map", "args": "{not json", "id": "call-3", "error": "parse error"}
            ],
        ),
        ChatMessage(content="Goed antwoord.", role="critic"),
        FunctionMessage(content="3", name="count"),
        HumanMessage(content="En in Enschede? ☃ \u00e9"),
    ]


def _dicts(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    return [message_to_dict(message) for message in messages]


def test_import_convostore_loads_no_langchain() -> None:
    """The adapter is an optional extra: ``import convostore`` leaves LangChain unloaded."""
    code = "import sys, convostore; print(sorted(m for m in sys.modules if 'langchain' in m))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


async def test_every_field_round_trips(make_repo: MakeRepo) -> None:
    """What goes in comes back equal (type, content blocks, ids, tool calls, extra kwargs),
    from the cache and cold from the database; the columns hold role, text and tool fields."""
    repo = await make_repo()
    history = ConvostoreChatMessageHistory("lc-varied", repo)
    sent = _varied()
    await history.aadd_messages(sent[:3])
    await history.aadd_messages(sent[3:])
    assert _dicts(await history.aget_messages()) == _dicts(sent)
    assert await history.aget_messages() == sent

    cold = await make_repo()
    assert await ConvostoreChatMessageHistory("lc-varied", cold).aget_messages() == sent
    state = await cold.get("lc-varied")
    assert state is not None
    columns = [
        (t.role, t.content, t.tool_name, t.tool_call_id, t.tool_arguments) for t in state.turns
    ]
    assert columns == [
        ("system", "Je bent een archiefassistent.", None, None, None),
        ("user", "Welke archieven zijn er in Utrecht?", None, None, None),
        ("assistant", "", "search", "call-1", {"place": "Utrecht", "limit": 3}),
        ("tool", '[{"name": "Het Utrechts Archief"}]', "search", "call-1", None),
        ("tool", "12", None, "call-2", None),
        ("assistant", "Er zijn 12 archieven in Utrecht.", None, None, None),
        ("user", "Goed antwoord.", None, None, None),
        ("tool", "3", "count", None, None),
        ("user", "En in Enschede? ☃ \u00e9", None, None, None),
    ]
    assert [json.dumps(t.data) for t in state.turns] == [json.dumps(d) for d in _dicts(sent)]


async def test_returned_messages_are_the_callers(repo: SessionRepository) -> None:
    """Changing a returned message (deep inside its kwargs, too) changes nothing stored."""
    history = ConvostoreChatMessageHistory("lc-copy", repo)
    await history.aadd_messages(_varied())
    got = await history.aget_messages()
    got[1].additional_kwargs["results"][0]["name"] = "changed"
    assert isinstance(got[2], AIMessage)
    got[2].tool_calls[0]["args"]["place"] = "changed"
    assert await history.aget_messages() == _varied()


async def test_turns_stored_without_langchain_data_read_as_messages(
    repo: SessionRepository,
) -> None:
    """A session written by ``add_turn`` or plain turns reads as the messages they stand for."""
    await repo.add_turn("lc-plain", "Archieven in Utrecht?", "Twaalf.")
    await repo.add_messages(
        "lc-plain",
        [
            ConversationTurn(role="system", content="Kort."),
            ConversationTurn(role="tool", content="12", tool_name="count", tool_call_id="c-9"),
        ],
    )
    got = await ConvostoreChatMessageHistory("lc-plain", repo).aget_messages()
    assert got == [
        HumanMessage(content="Archieven in Utrecht?"),
        AIMessage(content="Twaalf."),
        SystemMessage(content="Kort."),
        ToolMessage(content="12", tool_call_id="c-9", name="count"),
    ]


async def test_a_message_json_cannot_hold_stores_nothing(repo: SessionRepository) -> None:
    """NaN in a message's kwargs is refused before any SQL, and nothing of the batch lands."""
    history = ConvostoreChatMessageHistory("lc-bad", repo)
    await history.aadd_messages([HumanMessage(content="eerst")])
    bad = [
        HumanMessage(content="ok"),
        AIMessage(content="x", additional_kwargs={"p": float("nan")}),
    ]
    with pytest.raises(InvalidTurn):
        await history.aadd_messages(bad)
    assert await history.aget_messages() == [HumanMessage(content="eerst")]


class _Recorder:
    """Sits between the prompt and the model, keeping what the model was sent."""

    def __init__(self) -> None:
        self.seen: list[list[BaseMessage]] = []

    def __call__(self, prompt: PromptValue) -> PromptValue:
        self.seen.append(prompt.to_messages())
        return prompt


def _chain(answers: list[str], recorder: _Recorder) -> Runnable[Any, Any]:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You're an assistant who's good at {ability}"),
            MessagesPlaceholder(variable_name="history"),
            ("human", "{question}"),
        ]
    )
    model = GenericFakeChatModel(messages=iter([AIMessage(content=a) for a in answers]))
    return prompt | RunnableLambda(recorder) | model


def _with_history(chain: Runnable[Any, Any], factory: Any, **kwargs: Any) -> Runnable[Any, Any]:
    return RunnableWithMessageHistory(
        chain,
        factory,
        input_messages_key="question",
        history_messages_key="history",
        **kwargs,
    )


EXPECTED = [
    HumanMessage(content="What does cosine mean?"),
    AIMessage(content="The ratio of the adjacent side to the hypotenuse."),
    HumanMessage(content="What's its inverse?"),
    AIMessage(content="Arccosine."),
]


def _stored(got: list[BaseMessage]) -> list[tuple[str, Any]]:
    """Type and content: the model's answers carry run ids LangChain assigns per call."""
    return [(message.type, message.content) for message in got]


async def test_runnable_with_message_history_ainvoke(repo: SessionRepository) -> None:
    """LangChain's own docstring example, run with ``ainvoke``: the second question is sent
    with the first exchange before it, and the session holds both exchanges."""
    recorder = _Recorder()
    chain = _with_history(
        _chain([str(m.content) for m in EXPECTED[1::2]], recorder),
        lambda session_id: ConvostoreChatMessageHistory(session_id, repo),
    )
    config: Any = {"configurable": {"session_id": "foo"}}
    first = await chain.ainvoke({"ability": "math", "question": EXPECTED[0].content}, config)
    assert first.content == EXPECTED[1].content
    await chain.ainvoke({"ability": "math", "question": EXPECTED[2].content}, config)
    assert _stored(recorder.seen[1][1:]) == _stored(EXPECTED[:3])
    stored = await ConvostoreChatMessageHistory("foo", repo).aget_messages()
    assert _stored(stored) == _stored(EXPECTED)


async def test_runnable_with_message_history_invoke_from_a_thread(
    repo: SessionRepository,
) -> None:
    """The sync ``invoke`` in a worker thread (as a sync web framework runs it) reads and
    writes through the repository's loop. With the docstring's two-key factory (user id and
    conversation id), two users' conversations "1" are two histories, as in LangChain's own
    test of that factory: the session id is made of both, and each is its user's."""
    loop = asyncio.get_running_loop()

    def factory(user_id: str, conversation_id: str) -> BaseChatMessageHistory:
        session_id = f"{user_id}/{conversation_id}"
        return ConvostoreChatMessageHistory(session_id, repo, user_id=user_id, loop=loop)

    recorder = _Recorder()
    keys = [
        ConfigurableFieldSpec(id="user_id", annotation=str, default="", is_shared=True),
        ConfigurableFieldSpec(id="conversation_id", annotation=str, default="", is_shared=True),
    ]
    answers = [str(m.content) for m in EXPECTED[1::2]]
    chain = _with_history(
        _chain([*answers, "Meow."], recorder), factory, history_factory_config=keys
    )
    config: Any = {"configurable": {"user_id": "user1", "conversation_id": "1"}}
    for question in (EXPECTED[0].content, EXPECTED[2].content):
        await asyncio.to_thread(chain.invoke, {"ability": "math", "question": question}, config)
    other: Any = {"configurable": {"user_id": "user2", "conversation_id": "1"}}
    await asyncio.to_thread(chain.invoke, {"ability": "cats", "question": "meow"}, other)
    assert _stored(recorder.seen[1][1:]) == _stored(EXPECTED[:3])
    assert _stored(recorder.seen[2][1:]) == [("human", "meow")]
    user1 = ConvostoreChatMessageHistory("user1/1", repo, user_id="user1")
    user2 = ConvostoreChatMessageHistory("user2/1", repo, user_id="user2")
    assert _stored(await user1.aget_messages()) == _stored(EXPECTED)
    assert _stored(await user2.aget_messages()) == [("human", "meow"), ("ai", "Meow.")]
    assert (
        await ConvostoreChatMessageHistory("user1/1", repo, user_id="user2").aget_messages() == []
    )


def _you_said(messages: list[BaseMessage], current: str | None = None) -> str:
    said = [str(m.content) for m in messages if isinstance(m, HumanMessage)]
    return "you said: " + "\n".join([*said, *([current] if current is not None else [])])


SHAPES: dict[str, tuple[Any, dict[str, Any], Any, Any]] = {
    "messages in": (
        lambda messages: _you_said(messages),
        {},
        lambda text: [HumanMessage(content=text)],
        lambda said: said,
    ),
    "dict in": (
        lambda given: _you_said(given["messages"]),
        {"input_messages_key": "messages"},
        lambda text: {"messages": [HumanMessage(content=text)]},
        lambda said: said,
    ),
    "dict in, history key": (
        lambda given: _you_said(given["history"], given["input"]),
        {"input_messages_key": "input", "history_messages_key": "history"},
        lambda text: {"input": text},
        lambda said: said,
    ),
    "message out": (
        lambda given: AIMessage(content=_you_said(given["history"], given["input"])),
        {"input_messages_key": "input", "history_messages_key": "history"},
        lambda text: {"input": text},
        lambda said: AIMessage(content=said),
    ),
    "messages out": (
        lambda given: [AIMessage(content=_you_said(given["history"], given["input"]))],
        {"input_messages_key": "input", "history_messages_key": "history"},
        lambda text: {"input": text},
        lambda said: [AIMessage(content=said)],
    ),
    "dict out": (
        lambda given: {"output": [AIMessage(content=_you_said(given["history"], given["input"]))]},
        {
            "input_messages_key": "input",
            "history_messages_key": "history",
            "output_messages_key": "output",
        },
        lambda text: {"input": text},
        lambda said: {"output": [AIMessage(content=said)]},
    ),
}
"""The input and output shapes LangChain's own tests of ``RunnableWithMessageHistory`` run:
the wrapped runnable, the keys, how an input is made from a text, and the output expected."""


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_shape_langchain_tests(repo: SessionRepository, shape: str) -> None:
    """Each input and output shape of LangChain's own tests, with ``ainvoke`` and then the
    sync ``invoke`` from a thread: the second call sees the first call's human message."""
    runnable, keys, given, expected = SHAPES[shape]
    loop = asyncio.get_running_loop()
    chain = RunnableWithMessageHistory(
        RunnableLambda(runnable),
        lambda session_id: ConvostoreChatMessageHistory(session_id, repo, loop=loop),
        **keys,
    )
    config: Any = {"configurable": {"session_id": "shape-" + shape.replace(" ", "-")}}
    assert await chain.ainvoke(given("hello"), config) == expected("you said: hello")
    second = await asyncio.to_thread(chain.invoke, given("good bye"), config)
    assert second == expected("you said: hello\ngood bye")


async def test_history_as_text(repo: SessionRepository) -> None:
    """``str(history)`` and the one-message helpers, as LangChain's interface test has them."""
    history = ConvostoreChatMessageHistory("lc-text", repo)

    def fill() -> str:
        history.add_message(SystemMessage(content="system"))
        history.add_user_message("human 1")
        history.add_ai_message("ai")
        history.add_message(HumanMessage(content="human 2"))
        return str(history)

    text = await asyncio.to_thread(fill)
    assert text == "System: system\nHuman: human 1\nAI: ai\nHuman: human 2"


async def test_sync_methods_from_a_thread(repo: SessionRepository) -> None:
    """``messages``, ``add_messages``, ``add_message`` and ``clear`` work from another
    thread; the history learns the loop from the running one at construction."""
    history = ConvostoreChatMessageHistory("lc-sync", repo)

    def work() -> list[BaseMessage]:
        history.add_messages(EXPECTED[:2])
        history.add_user_message("Nog een vraag?")
        before = history.messages
        history.clear()
        return [*before, *history.messages]

    got = await asyncio.to_thread(work)
    assert got == [*EXPECTED[:2], HumanMessage(content="Nog een vraag?")]
    assert await history.aget_messages() == []


async def test_sync_methods_on_the_loop_raise(repo: SessionRepository) -> None:
    """On the loop's own thread a sync call would deadlock: it raises instead, storing
    nothing."""
    history = ConvostoreChatMessageHistory("lc-deadlock", repo)
    with pytest.raises(SyncCallError, match="aget_messages"):
        history.add_messages([HumanMessage(content="x")])
    with pytest.raises(SyncCallError):
        _ = history.messages
    assert await history.aget_messages() == []


async def test_sync_methods_without_a_known_loop_raise(repo: SessionRepository) -> None:
    """A history made outside any loop, never given one, says what to do."""

    def made_in_a_thread() -> list[BaseMessage]:
        return ConvostoreChatMessageHistory("lc-noloop", repo).messages

    with pytest.raises(SyncCallError, match="loop="):
        await asyncio.to_thread(made_in_a_thread)


def test_sync_methods_on_an_idle_loop(url: str) -> None:
    """A sync program that runs the repository on a loop of its own between calls: the sync
    methods run the loop until each call is done."""
    loop = asyncio.new_event_loop()
    try:
        repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0))
        loop.run_until_complete(repo.start())
        try:
            history = ConvostoreChatMessageHistory("lc-idle", repo, loop=loop)
            history.add_messages(EXPECTED)
            assert history.messages == EXPECTED
            history.clear()
            assert history.messages == []
        finally:
            loop.run_until_complete(repo.stop())
    finally:
        loop.close()


@pytest.fixture
def sql_history_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'langchain.db'}"


async def test_same_answers_as_langchains_own_stores(
    repo: SessionRepository, sql_history_url: str
) -> None:
    """The same operations on ``InMemoryChatMessageHistory``, ``SQLChatMessageHistory`` and
    convostore give the same messages after each step."""
    engine = create_async_engine(sql_history_url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangChainDeprecationWarning)
            memory = InMemoryChatMessageHistory()
        histories: dict[str, Any] = {
            "memory": memory,
            "sql": _sql_history_class()(session_id="parity", connection=engine),
            "convostore": ConvostoreChatMessageHistory("parity", repo),
        }
        varied = _varied()
        steps: list[Any] = [
            lambda h: h.aget_messages(),
            lambda h: h.aadd_messages(varied[:1]),
            lambda h: h.aadd_messages([]),
            lambda h: h.aadd_messages(varied[1:]),
            lambda h: h.aget_messages(),
            lambda h: h.aclear(),
            lambda h: h.aget_messages(),
            lambda h: h.aclear(),
            lambda h: h.aadd_messages(EXPECTED),
            lambda h: h.aget_messages(),
        ]
        for index, step in enumerate(steps):
            answers = {name: await step(h) for name, h in histories.items()}
            listed = {name: None if got is None else _dicts(got) for name, got in answers.items()}
            assert listed["convostore"] == listed["memory"] == listed["sql"], index
        assert len(await histories["convostore"].aget_messages()) == len(EXPECTED)
    finally:
        await engine.dispose()


async def test_clear_keeps_the_session(repo: SessionRepository) -> None:
    """``aclear`` empties the history; the session stays live with its title."""
    history = ConvostoreChatMessageHistory("lc-clear", repo)
    await history.aadd_messages(EXPECTED)
    await repo.set_title("lc-clear", "Cosinus")
    await history.aclear()
    state = await repo.get("lc-clear")
    assert state is not None
    assert state.turns == []
    assert await history.aget_messages() == []


async def test_users_are_kept_apart_and_erased(repo: SessionRepository) -> None:
    """Another user's history under the same session id reads empty (as ``get`` does, not
    telling the session exists) and refuses writes; ``erase_user`` removes the owner's
    history."""
    alice = ConvostoreChatMessageHistory("lc-owned", repo, user_id="alice")
    await alice.aadd_messages(EXPECTED[:2])
    mallory = ConvostoreChatMessageHistory("lc-owned", repo, user_id="mallory")
    assert await mallory.aget_messages() == []
    with pytest.raises(NotSessionOwner):
        await mallory.aadd_messages(EXPECTED[2:])
    with pytest.raises(NotSessionOwner):
        await mallory.aclear()
    assert await alice.aget_messages() == EXPECTED[:2]
    erased = await repo.erase_user("alice")
    assert sum(erased.values()) > 0
    assert await alice.aget_messages() == []


async def test_an_expired_history_is_empty(make_repo: MakeRepo, clock: FakeClock) -> None:
    """Past the TTL the history reads empty, and the next write starts it anew."""
    repo = await make_repo(session_ttl=100)
    history = ConvostoreChatMessageHistory("lc-ttl", repo)
    await history.aadd_messages(EXPECTED[:2])
    clock.advance(60)
    assert await history.aget_messages() == EXPECTED[:2]
    clock.advance(101)
    assert await history.aget_messages() == []
    await history.aadd_messages(EXPECTED[2:])
    assert await history.aget_messages() == EXPECTED[2:]


async def test_import_from_sql_chat_message_history(
    repo: SessionRepository, sql_history_url: str
) -> None:
    """``import_sql_chat_history`` copies each session of LangChain's table in order, in
    batches; a second run stores nothing again."""
    engine = create_async_engine(sql_history_url)
    try:
        cls = _sql_history_class()
        await cls(session_id="a", connection=engine).aadd_messages(_varied())
        await cls(session_id="b", connection=engine).aadd_messages(EXPECTED)
        await cls(session_id="a", connection=engine).aadd_messages(EXPECTED[:1])
        read = await import_sql_chat_history(repo, engine, user_id="owner", batch=3)
        assert read == len(_varied()) + len(EXPECTED) + 1
        assert await import_sql_chat_history(repo, engine, user_id="owner", batch=3) == read
        a = ConvostoreChatMessageHistory("a", repo, user_id="owner")
        b = ConvostoreChatMessageHistory("b", repo, user_id="owner")
        assert _dicts(await a.aget_messages()) == _dicts([*_varied(), EXPECTED[0]])
        assert await b.aget_messages() == EXPECTED
    finally:
        await engine.dispose()


async def test_an_ended_history_is_kept_until_retention(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """After the TTL and the sweep the history reads empty, but the user's export still holds
    its messages (LangChain's own data included) until ``transcript_retention`` has passed."""
    repo = await make_repo(session_ttl=100, transcript_retention=1000)
    history = ConvostoreChatMessageHistory("lc-kept", repo, user_id="alice")
    await history.aadd_messages(EXPECTED)
    clock.advance(101)
    assert await repo.sweep_expired() == 1
    assert await history.aget_messages() == []
    (conversation,) = (await repo.export_user("alice"))["conversations"]
    assert [turn["data"] for turn in conversation["turns"]] == _dicts(EXPECTED)
    clock.advance(1000)
    await repo.sweep_expired()
    assert (await repo.export_user("alice"))["conversations"] == []
