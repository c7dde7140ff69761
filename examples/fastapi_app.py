"""A chat service on convostore with FastAPI: follow-up questions answered from the stored turns.

    pip install ".[postgres]" fastapi uvicorn   # in the convostore checkout; "." for SQLite only
    uvicorn fastapi_app:app --app-dir examples

- ``POST /chat`` with ``{"question": ..., "session_id": ...}`` (the id optional) answers and
  stores the exchange. The answer is an echo that names the previous question of the session
  (each quoted up to ``QUOTED`` characters), where a real service runs its RAG pipeline on the
  conversation state.
- ``GET /sessions/{session_id}`` returns the transcript.

The repository is opened in the app's lifespan, with its settings from the ``CONVOSTORE_*``
environment variables (on PostgreSQL run ``convostore migrate`` in the deploy first), and
handed to each request by the ``get_repository`` dependency. A malformed session id or a
question the store cannot hold (``CONVOSTORE_MAX_TEXT_CHARS``, a NUL character) is 400 with
convostore's message naming the field, an unknown session 404, and a database that stays
unreachable for ``CONVOSTORE_RECONNECT_TIMEOUT`` seconds 503. A new session is stored with its
first exchange, by ``add_turn``, so a refused chat leaves nothing behind.

Session ids: by default the server makes the id of every new session (unguessable), and a
``/chat`` with an id it does not know (or whose session expired) is 404, so clients cannot
choose ids. ``CHAT_ALLOW_CLIENT_SESSION_IDS=true`` lets a client name a new session itself
(a front end that has its own conversation ids): an unknown id then starts a session under it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from convostore import (
    ConversationState,
    InvalidSessionId,
    InvalidTurn,
    SessionRepository,
    StoreConfig,
    StoreUnavailable,
)


class ChatSettings(BaseSettings):
    """The app's own settings, from ``CHAT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CHAT_")

    allow_client_session_ids: bool = False
    """True: a chat under a session id the store does not know starts a session with it.
    False (default): such a chat is 404, and every session gets an id made by the server."""


class ChatRequest(BaseModel):
    question: str = Field(min_length=1)
    session_id: str | None = None


class ChatResponse(BaseModel):
    session_id: str
    answer: str


class Turn(BaseModel):
    role: Literal["user", "assistant", "system", "tool"]
    content: str


class Transcript(BaseModel):
    session_id: str
    turns: list[Turn]


QUOTED = 200
"""Characters of a question the echo repeats: an answer stays short whatever was asked, so a
question the store can hold never makes an answer it cannot."""


def _quote(text: str) -> str:
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"


def answer(question: str, state: ConversationState) -> str:
    """Stands in for the RAG pipeline: echoes the question and, for a follow-up, the previous
    question it builds on, read from the stored conversation."""
    previous = state.get_previous_user_turn()
    if previous is None:
        return f"You asked: {_quote(question)}"
    return f"You asked: {_quote(question)} (following up on: {_quote(previous.content)})"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One repository for the app's lifetime, stopped (pending writes flushed) at shutdown."""
    async with SessionRepository(StoreConfig()) as repository:
        app.state.repository = repository
        yield


def get_repository(request: Request) -> SessionRepository:
    """The app's repository, for a request."""
    repository: SessionRepository = request.app.state.repository
    return repository


Repository = Annotated[SessionRepository, Depends(get_repository)]


async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    """convostore refused the session id or the question before any SQL; its message says why."""
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database stayed unreachable; the call stored nothing, so the client may retry."""
    return JSONResponse(
        {"detail": "the conversation store is unavailable; try again"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def create_app(settings: ChatSettings | None = None) -> FastAPI:
    """The app, with ``settings`` or else those of the environment."""
    allow_client_ids = (settings or ChatSettings()).allow_client_session_ids
    app = FastAPI(title="convostore chat example", lifespan=lifespan)
    app.add_exception_handler(InvalidSessionId, bad_request)
    app.add_exception_handler(InvalidTurn, bad_request)
    app.add_exception_handler(StoreUnavailable, unavailable)

    @app.post("/chat")
    async def chat(body: ChatRequest, repository: Repository) -> ChatResponse:
        # A new conversation starts from an empty state; add_turn stores it with its first
        # exchange, after checking both, so nothing is stored for a chat it refuses.
        if body.session_id is None:
            session_id, state = repository.generate_session_id(), ConversationState()
        else:
            session_id, found = body.session_id, await repository.get(body.session_id)
            if found is None and not allow_client_ids:
                raise HTTPException(404, "unknown session")
            state = found or ConversationState()
        reply = answer(body.question, state)
        await repository.add_turn(session_id, body.question, reply)
        return ChatResponse(session_id=session_id, answer=reply)

    @app.get("/sessions/{session_id}")
    async def transcript(session_id: str, repository: Repository) -> Transcript:
        state = await repository.get(session_id)
        if state is None:
            raise HTTPException(404, "unknown session")
        turns = [Turn(role=turn.role, content=turn.content) for turn in state.turns]
        return Transcript(session_id=session_id, turns=turns)

    return app


app = create_app()
