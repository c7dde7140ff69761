"""``examples/fastapi_app.py`` served through its lifespan, on a real database of each backend:
follow-ups, transcripts that survive a restart, server-made session ids unless
``CHAT_ALLOW_CLIENT_SESSION_IDS`` allows the client's, and the 400 / 404 / 503 answers."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from servers import PrivatePostgres
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore.migrate import upgrade_url

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
UTRECHT = "Welke archieven zijn er in Utrecht?"
ENSCHEDE = "En in Enschede?"


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module, imported from its file (examples/ is not a package) and in
    ``sys.modules`` for the test, where pydantic resolves its models' annotations."""
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, with the app's lifespan run around it as a server would."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://chat") as client,
    ):
        yield client


@pytest.fixture
async def example(backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example, configured by the environment for an empty database of this backend (on
    PostgreSQL migrated first, as the deploy would)."""
    if backend == "postgresql":
        await upgrade_url(empty_url)
    monkeypatch.setenv("CONVOSTORE_DATABASE_URL", empty_url)
    monkeypatch.setenv("CONVOSTORE_CLEANUP_INTERVAL", "0")
    monkeypatch.delenv("CHAT_ALLOW_CLIENT_SESSION_IDS", raising=False)
    return load_example(monkeypatch)


async def chat(client: httpx.AsyncClient, question: str, session_id: str | None = None) -> Any:
    body = {"question": question, "session_id": session_id}
    response = await client.post("/chat", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_follow_up_is_answered_from_the_previous_turn(example: ModuleType) -> None:
    """A new session gets a server-made id; its follow-up's answer names the first question;
    the transcript holds both exchanges, also after the app restarts."""
    async with serve(example.app) as client:
        first = await chat(client, UTRECHT)
        sid = first["session_id"]
        assert len(sid) >= 20
        assert first["answer"] == f"You asked: {UTRECHT}"
        second = await chat(client, ENSCHEDE, sid)
        assert second == {
            "session_id": sid,
            "answer": f"You asked: {ENSCHEDE} (following up on: {UTRECHT})",
        }
        other = await chat(client, UTRECHT)
        assert other["session_id"] != sid
    async with serve(example.create_app()) as client:
        response = await client.get(f"/sessions/{sid}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "session_id": sid,
        "turns": [
            {"role": "user", "content": UTRECHT},
            {"role": "assistant", "content": first["answer"]},
            {"role": "user", "content": ENSCHEDE},
            {"role": "assistant", "content": second["answer"]},
        ],
    }


async def test_client_session_ids_are_refused_by_default(example: ModuleType) -> None:
    """An id the server did not make is 404 and starts nothing."""
    async with serve(example.app) as client:
        response = await client.post("/chat", json={"question": UTRECHT, "session_id": "mine"})
        assert response.status_code == 404
        assert response.json() == {"detail": "unknown session"}
        assert (await client.get("/sessions/mine")).status_code == 404


@pytest.mark.parametrize("allowed", ["true", "1"])
async def test_client_session_ids_when_allowed(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, allowed: str
) -> None:
    """With ``CHAT_ALLOW_CLIENT_SESSION_IDS`` set, an unknown id starts a session under it."""
    monkeypatch.setenv("CHAT_ALLOW_CLIENT_SESSION_IDS", allowed)
    async with serve(example.create_app()) as client:
        assert (await chat(client, UTRECHT, "mine"))["session_id"] == "mine"
        follow_up = await chat(client, ENSCHEDE, "mine")
        assert follow_up["answer"].endswith(f"(following up on: {UTRECHT})")
        assert len((await client.get("/sessions/mine")).json()["turns"]) == 4


@pytest.mark.parametrize("allow_client_ids", [False, True])
async def test_invalid_input_is_a_400(example: ModuleType, allow_client_ids: bool) -> None:
    """A session id convostore refuses (too long, not printable ASCII, empty) and a question
    it cannot store (a NUL character) are 400 with convostore's message, whatever the id
    policy; an id that is merely unknown stays 404."""
    app = example.create_app(example.ChatSettings(allow_client_session_ids=allow_client_ids))
    async with serve(app) as client:
        for bad_id in ("x" * 129, "café", ""):
            response = await client.post("/chat", json={"question": "q", "session_id": bad_id})
            assert response.status_code == 400, (bad_id, response.text)
            assert "session id" in response.json()["detail"]
        for bad_path in ("x" * 129, "caf%C3%A9", "tab%09"):
            response = await client.get(f"/sessions/{bad_path}")
            assert response.status_code == 400, (bad_path, response.text)
        response = await client.post("/chat", json={"question": "nul \x00 byte"})
        assert response.status_code == 400, response.text
        assert "question" in response.json()["detail"]
        assert (await client.get("/sessions/unknown")).status_code == 404


async def stored_sessions(url: str) -> list[tuple[str, int]]:
    """Each stored conversation's session id and number of turns."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.session_id, (SELECT COUNT(*) FROM turns t WHERE t.session_id = "
                    "c.session_id AND t.conversation_id = c.conversation_id) FROM conversations c "
                    "ORDER BY 1"
                )
            )
            return [(sid, int(count)) for sid, count in rows]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("allow_client_ids", [False, True])
async def test_a_refused_chat_leaves_no_session_behind(
    example: ModuleType, empty_url: str, allow_client_ids: bool
) -> None:
    """A new chat (server-made id, or with client ids allowed, a new id of the client's)
    whose question the store refuses stores nothing: the session is stored with its first
    exchange or not at all."""
    app = example.create_app(example.ChatSettings(allow_client_session_ids=allow_client_ids))
    async with serve(app) as client:
        bodies: list[dict[str, Any]] = [{"question": "nul \x00 byte"}]
        if allow_client_ids:
            bodies.append({"question": "nul \x00 byte", "session_id": "mine"})
        for body in bodies:
            response = await client.post("/chat", json=body)
            assert response.status_code == 400, response.text
            assert "question" in response.json()["detail"]
        assert await stored_sessions(empty_url) == []
        sid = (await chat(client, UTRECHT))["session_id"]
    assert await stored_sessions(empty_url) == [(sid, 2)]


async def test_a_long_question_is_refused_as_a_question(
    example: ModuleType, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every question the store can hold is answered, follow-ups too: the echo quotes only
    the start of a question, so the answer never outgrows the limit. One character more is a
    400 that names the question and its limit, not the answer, and stores nothing."""
    monkeypatch.setenv("CONVOSTORE_MAX_TEXT_CHARS", "500")
    async with serve(example.create_app()) as client:
        first = await chat(client, "U" * 500)
        sid = first["session_id"]
        follow_up = await chat(client, "E" * 500, sid)
        assert len(follow_up["answer"]) < 500
        assert follow_up["answer"].endswith(f"(following up on: {'U' * 199}…)")
        for session_id in (None, sid):
            body = {"question": "x" * 501, "session_id": session_id}
            response = await client.post("/chat", json=body)
            assert response.status_code == 400, response.text
            detail = response.json()["detail"]
            assert detail.startswith("question is 501 characters long; at most 500"), detail
    assert await stored_sessions(empty_url) == [(sid, 4)]


@pytest.mark.postgresql
async def test_a_database_that_stays_down_is_a_503(
    private_postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server of the test's own, stopped while the app runs: a chat and a transcript read
    are 503 with Retry-After once ``CONVOSTORE_RECONNECT_TIMEOUT`` has passed, and store
    nothing; after the restart the conversation goes on from the last stored exchange."""
    await upgrade_url(private_postgres.url)
    monkeypatch.setenv("CONVOSTORE_DATABASE_URL", private_postgres.url)
    monkeypatch.setenv("CONVOSTORE_RECONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("CONVOSTORE_CLEANUP_INTERVAL", "0")
    monkeypatch.delenv("CHAT_ALLOW_CLIENT_SESSION_IDS", raising=False)
    example = load_example(monkeypatch)
    async with serve(example.app) as client:
        sid = (await chat(client, UTRECHT))["session_id"]
        await asyncio.to_thread(private_postgres.stop)
        for request in (
            client.post("/chat", json={"question": ENSCHEDE, "session_id": sid}),
            client.post("/chat", json={"question": UTRECHT}),
            client.get("/sessions/never-seen"),
        ):
            response = await request
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
        await asyncio.to_thread(private_postgres.start)
        follow_up = await chat(client, ENSCHEDE, sid)
        assert follow_up["answer"].endswith(f"(following up on: {UTRECHT})")
        assert len((await client.get(f"/sessions/{sid}")).json()["turns"]) == 4
