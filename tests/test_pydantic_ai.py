"""The pydantic-ai adapter: ``load_messages`` / ``store_messages`` keep a real ``Agent``'s
messages (a scripted ``FunctionModel`` with a tool call, and pydantic-ai's ``TestModel``) on
every backend, so a second run sees the first, and what loads dumps to the very JSON
``ModelMessagesTypeAdapter`` dumped when it was stored; user scoping, TTL and erasure hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import FakeClock, MakeRepo
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import ConversationTurn, NotSessionOwner, SessionRepository
from convostore.integrations.pydantic_ai import load_messages, store_messages


def _json(messages: list[ModelMessage]) -> bytes:
    return ModelMessagesTypeAdapter.dump_json(messages)


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the tool for each new user prompt, then answers with what it saw."""
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    prompts = [p for p in last.parts if isinstance(p, UserPromptPart)]
    if prompts:
        place = str(prompts[0].content).split()[-1].rstrip("?")
        call = ToolCallPart("count_archives", {"place": place}, tool_call_id=f"call-{place}")
        return ModelResponse(parts=[call])
    returned = [p for p in last.parts if isinstance(p, ToolReturnPart)]
    seen = sum(1 for m in messages for p in m.parts if isinstance(p, UserPromptPart))
    return ModelResponse(parts=[TextPart(f"{returned[0].content} archieven; vraag {seen}")])


def _agent() -> Agent[None, str]:
    agent = Agent(FunctionModel(_scripted), system_prompt="Antwoord kort.")

    @agent.tool_plain
    def count_archives(place: str) -> int:
        """How many archives ``place`` has."""
        return {"Utrecht": 12, "Enschede": 3}.get(place, 0)

    return agent


def test_import_convostore_loads_no_pydantic_ai() -> None:
    """The adapter is an optional extra: ``import convostore`` leaves pydantic-ai unloaded."""
    code = "import sys, convostore; print(sorted(m for m in sys.modules if 'pydantic_ai' in m))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


async def test_a_second_run_sees_the_first(make_repo: MakeRepo) -> None:
    """Two runs of a real agent with a tool call: the second run, given the loaded history,
    sees the first run's prompt; what loads (cached, then cold) dumps to the JSON stored."""
    repo = await make_repo()
    agent = _agent()
    first = await agent.run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-two-runs", first.new_messages())
    loaded = await load_messages(repo, "pa-two-runs")
    assert _json(loaded) == _json(first.all_messages())

    second = await agent.run("En in Enschede?", message_history=loaded)
    assert second.output == "3 archieven; vraag 2"
    await store_messages(repo, "pa-two-runs", second.new_messages())
    everything = second.all_messages()
    assert _json(await load_messages(repo, "pa-two-runs")) == _json(everything)
    cold = await make_repo()
    assert _json(await load_messages(cold, "pa-two-runs")) == _json(everything)

    state = await cold.get("pa-two-runs")
    assert state is not None
    columns = [
        (t.role, t.content, t.tool_name, t.tool_call_id, t.tool_arguments) for t in state.turns
    ]
    assert columns == [
        ("user", "Welke archieven zijn er in Utrecht?", None, None, None),
        ("assistant", "", "count_archives", "call-Utrecht", {"place": "Utrecht"}),
        ("tool", "12", "count_archives", "call-Utrecht", None),
        ("assistant", "12 archieven; vraag 1", None, None, None),
        ("user", "En in Enschede?", None, None, None),
        ("assistant", "", "count_archives", "call-Enschede", {"place": "Enschede"}),
        ("tool", "3", "count_archives", "call-Enschede", None),
        ("assistant", "3 archieven; vraag 2", None, None, None),
    ]
    stored = ModelMessagesTypeAdapter.dump_python(everything, mode="json")
    assert [json.dumps(t.data) for t in state.turns] == [json.dumps(m) for m in stored]


async def test_test_model_round_trips(repo: SessionRepository) -> None:
    """pydantic-ai's ``TestModel`` (it calls every tool, then answers in JSON) through two
    runs; ``last=`` loads the newest messages only."""
    agent = Agent(TestModel())

    @agent.tool_plain
    def lookup(term: str) -> str:
        """Looks a term up."""
        return f"{term}: gevonden"

    first = await agent.run("Zoek iets")
    await store_messages(repo, "pa-test-model", first.new_messages())
    second = await agent.run("Nog eens", message_history=await load_messages(repo, "pa-test-model"))
    await store_messages(repo, "pa-test-model", second.new_messages())
    everything = second.all_messages()
    assert len(everything) == len(first.all_messages()) + len(second.new_messages()) > 4
    assert _json(await load_messages(repo, "pa-test-model")) == _json(everything)
    assert _json(await load_messages(repo, "pa-test-model", last=4)) == _json(everything[-4:])


async def test_loaded_messages_are_the_callers(repo: SessionRepository) -> None:
    """Changing loaded messages (a tool call's args) changes nothing stored."""
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-copy", first.new_messages())
    loaded = await load_messages(repo, "pa-copy")
    call = loaded[1].parts[0]
    assert isinstance(call, ToolCallPart)
    assert isinstance(call.args, dict)
    cast(dict[str, Any], call.args)["place"] = "changed"
    assert _json(await load_messages(repo, "pa-copy")) == _json(first.all_messages())


async def test_idempotent_store(repo: SessionRepository) -> None:
    """A retried store with the same key appends nothing."""
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    for _ in range(2):
        await store_messages(repo, "pa-retry", first.new_messages(), idempotency_key="run-1")
    assert len(await load_messages(repo, "pa-retry")) == len(first.new_messages())


async def test_turns_stored_without_pydantic_ai_data_load(repo: SessionRepository) -> None:
    """Turns written by ``add_turn`` and plain turns load as the messages they stand for,
    in order among messages the adapter stored."""
    await repo.add_turn("pa-plain", "Archieven in Utrecht?", "Twaalf.")
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-plain", first.new_messages())
    await repo.add_messages(
        "pa-plain",
        [
            ConversationTurn(role="system", content="Kort."),
            ConversationTurn(role="tool", content="3", tool_name="count", tool_call_id="c-9"),
        ],
    )
    loaded = await load_messages(repo, "pa-plain")
    assert [type(m).__name__ for m in loaded] == [
        "ModelRequest",
        "ModelResponse",
        *(type(m).__name__ for m in first.new_messages()),
        "ModelRequest",
        "ModelRequest",
    ]
    assert _json(loaded[2:-2]) == _json(first.new_messages())
    head, answer, *_, system, tool = loaded
    assert isinstance(head, ModelRequest)
    assert len(head.parts) == 1
    prompt = head.parts[0]
    assert isinstance(prompt, UserPromptPart)
    assert prompt.content == "Archieven in Utrecht?"
    assert isinstance(answer, ModelResponse)
    assert answer.text == "Twaalf."
    assert isinstance(system, ModelRequest)
    assert isinstance(system.parts[0], SystemPromptPart)
    returned = tool.parts[0]
    assert isinstance(returned, ToolReturnPart)
    assert (returned.tool_name, returned.content, returned.tool_call_id) == ("count", "3", "c-9")
    again = await _agent().run("En in Enschede?", message_history=loaded[:2])
    assert again.output == "3 archieven; vraag 2"


async def test_users_are_kept_apart_and_erased(repo: SessionRepository) -> None:
    """Another user's load under the same session id is empty (as ``get`` is) and their store
    is refused; ``erase_user`` removes the owner's messages."""
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-owned", first.new_messages(), user_id="alice")
    assert await load_messages(repo, "pa-owned", user_id="mallory") == []
    with pytest.raises(NotSessionOwner):
        await store_messages(repo, "pa-owned", first.new_messages(), user_id="mallory")
    assert len(await load_messages(repo, "pa-owned", user_id="alice")) == 4
    assert sum((await repo.erase_user("alice")).values()) > 0
    assert await load_messages(repo, "pa-owned", user_id="alice") == []


async def test_an_expired_history_is_empty(make_repo: MakeRepo, clock: FakeClock) -> None:
    """Past the TTL the history loads empty, and the next store starts it anew."""
    repo = await make_repo(session_ttl=100)
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-ttl", first.new_messages())
    clock.advance(101)
    assert await load_messages(repo, "pa-ttl") == []
    await store_messages(repo, "pa-ttl", first.new_messages()[-1:])
    assert len(await load_messages(repo, "pa-ttl")) == 1


def _docs_snippet(heading: str) -> str:
    """The first Python block after ``heading`` in docs/pydantic-ai.md."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "pydantic-ai.md").read_text()
    after = page.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


async def test_the_documented_move_from_json_blobs(repo: SessionRepository, tmp_path: Path) -> None:
    """The docs' snippet moves a table of JSON blobs (pydantic-ai's documented way to keep
    a history) into convostore; run twice, it stores nothing again."""
    agent = _agent()
    runs = [
        await agent.run(f"Welke archieven zijn er in {place}?") for place in ("Utrecht", "Enschede")
    ]
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'blobs.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE agent_histories (id TEXT PRIMARY KEY, messages TEXT)")
            )
            for index, run in enumerate(runs):
                await conn.execute(
                    text("INSERT INTO agent_histories VALUES (:id, :messages)"),
                    {"id": f"blob-{index}", "messages": _json(run.all_messages()).decode()},
                )
        namespace: dict[str, Any] = {}
        exec(_docs_snippet("## Moving existing data"), namespace)
        assert await namespace["move_blobs"](repo, engine) == 2
        assert await namespace["move_blobs"](repo, engine) == 2
    finally:
        await engine.dispose()
    for index, run in enumerate(runs):
        loaded = await load_messages(repo, f"blob-{index}")
        assert _json(loaded) == _json(run.all_messages())


async def test_a_plain_tool_turn_without_a_call_id_gets_one(repo: SessionRepository) -> None:
    """A tool turn stored without a call id loads with one pydantic-ai makes up (its models
    need one), not an empty string."""
    await repo.add_messages("pa-no-id", [ConversationTurn(role="tool", content="3")])
    (loaded,) = await load_messages(repo, "pa-no-id")
    returned = loaded.parts[0]
    assert isinstance(returned, ToolReturnPart)
    assert returned.tool_call_id
    assert returned.content == "3"


async def test_an_ended_history_is_kept_until_retention(
    make_repo: MakeRepo, clock: FakeClock
) -> None:
    """After the TTL and the sweep the history loads empty, but the user's export still holds
    its messages (pydantic-ai's JSON included) until ``transcript_retention`` has passed."""
    repo = await make_repo(session_ttl=100, transcript_retention=1000)
    first = await _agent().run("Welke archieven zijn er in Utrecht?")
    await store_messages(repo, "pa-kept", first.new_messages(), user_id="alice")
    clock.advance(101)
    assert await repo.sweep_expired() == 1
    assert await load_messages(repo, "pa-kept", user_id="alice") == []
    (conversation,) = (await repo.export_user("alice"))["conversations"]
    stored = ModelMessagesTypeAdapter.dump_python(first.new_messages(), mode="json")
    assert [turn["data"] for turn in conversation["turns"]] == stored
    clock.advance(1000)
    await repo.sweep_expired()
    assert (await repo.export_user("alice"))["conversations"] == []
