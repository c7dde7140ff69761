"""Peer stores a user might pick instead of convostore, behind one small interface, each
imported only when asked for (``--peers``); a missing package is reported and skipped.

- LangChain ``PostgresChatMessageHistory`` (langchain-postgres, psycopg 3; PostgreSQL only)
- OpenAI Agents SDK ``SQLAlchemySession`` (openai-agents[sqlalchemy]), and on SQLite its
  ``SQLiteSession`` and ``AsyncSQLiteSession``
- LangChain ``SQLChatMessageHistory`` (langchain-community)
- LangGraph ``AsyncSqliteSaver`` / ``AsyncPostgresSaver``: the conversation is the message
  list in a checkpoint's ``channel_values``, as a graph with a ``messages`` channel keeps it;
  an append is one ``aput`` of the grown list (the graph holds the list in memory, so no read
  first, and one checkpoint per exchange: a real graph writes one per super-step), a load one
  ``aget_tuple``
- Google ADK ``DatabaseSessionService``: an append is ``append_event`` of a user and an
  assistant event, a load ``get_session``

Each stores an exchange as two messages, the exchange's results JSON as the user message's
metadata, in its own tables of the same database. Their histories are filled with the same
texts and results as convostore's stored histories (``workload.history_exchanges``), so a
load reads the same payload from each.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .backends import Database
from .workload import Exchange, history_exchanges

__all__ = ["PEER_PACKAGES", "Peer", "open_peers"]

PEER_PACKAGES = {
    "langchain-postgres": "langchain-postgres",
    "openai-agents": "openai-agents[sqlalchemy]",
    "langchain-community": "langchain-community",
    "langgraph-checkpoint-sqlite": "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres": "langgraph-checkpoint-postgres",
    "google-adk": "google-adk",
}
"""pip requirement of each peer, for the notes a missing one leaves."""


class Peer(Protocol):
    """What the benchmark asks of a peer store."""

    label: str

    def session_id(self, name: str) -> str: ...

    async def prefill(self, sid: str, n_turns: int) -> None: ...

    async def append(self, sid: str, exchange: Exchange) -> None: ...

    async def load(self, sid: str) -> int: ...

    async def close(self) -> None: ...


def _messages(question: str, answer: str, results: list[dict[str, Any]] | None = None) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    extra = {"results": results} if results is not None else {}
    return [HumanMessage(content=question, additional_kwargs=extra), AIMessage(content=answer)]


class _LangChainHistory:
    """What both LangChain peers share: one history object per session, messages in and out."""

    _histories: dict[str, Any]

    def _history_for(self, sid: str) -> Any:
        raise NotImplementedError

    def _get(self, sid: str) -> Any:
        history = self._histories.get(sid)
        if history is None:
            history = self._history_for(sid)
            self._histories[sid] = history
        return history

    async def prefill(self, sid: str, n_turns: int) -> None:
        messages = [m for q, a, r in history_exchanges(n_turns) for m in _messages(q, a, r)]
        await self._get(sid).aadd_messages(messages)

    async def append(self, sid: str, exchange: Exchange) -> None:
        messages = _messages(exchange.question, exchange.answer, exchange.results)
        await self._get(sid).aadd_messages(messages)

    async def load(self, sid: str) -> int:
        return len(await self._get(sid).aget_messages())


class LangChainPostgres(_LangChainHistory):
    """LangChain's ``PostgresChatMessageHistory`` on one psycopg async connection."""

    label = "LangChain PostgresChatMessageHistory"
    _table = "bench_lc_pg_messages"

    def __init__(self, conn: Any) -> None:
        from langchain_postgres import PostgresChatMessageHistory

        self._conn = conn
        self._cls = PostgresChatMessageHistory
        self._histories: dict[str, Any] = {}

    @classmethod
    async def open(cls, db: Database) -> LangChainPostgres:
        import psycopg
        from langchain_postgres import PostgresChatMessageHistory

        conn = await psycopg.AsyncConnection.connect(db.target)
        await PostgresChatMessageHistory.acreate_tables(conn, cls._table)
        return cls(conn)

    def session_id(self, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, name))  # it accepts UUIDs only

    def _history_for(self, sid: str) -> Any:
        return self._cls(self._table, sid, async_connection=self._conn)

    async def close(self) -> None:
        await self._conn.close()


def _agent_items(
    question: str, answer: str, results: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    user: dict[str, Any] = {"role": "user", "content": question}
    if results is not None:
        user["results"] = results
    return [user, {"role": "assistant", "content": answer}]


class _AgentsSessions:
    """What the OpenAI Agents SDK's sessions share: one session object per conversation,
    items in and out."""

    _sessions: dict[str, Any]

    def _open(self, sid: str) -> Any:
        raise NotImplementedError

    def session_id(self, name: str) -> str:
        return name

    def _get(self, sid: str) -> Any:
        session = self._sessions.get(sid)
        if session is None:
            session = self._sessions[sid] = self._open(sid)
        return session

    async def prefill(self, sid: str, n_turns: int) -> None:
        items = [i for q, a, r in history_exchanges(n_turns) for i in _agent_items(q, a, r)]
        await self._get(sid).add_items(items)

    async def append(self, sid: str, exchange: Exchange) -> None:
        items = _agent_items(exchange.question, exchange.answer, exchange.results)
        await self._get(sid).add_items(items)

    async def load(self, sid: str) -> int:
        return len(await self._get(sid).get_items())


class OpenAIAgentsSession(_AgentsSessions):
    """The OpenAI Agents SDK's ``SQLAlchemySession`` on an engine of its own."""

    label = "OpenAI Agents SQLAlchemySession"

    def __init__(self, engine: AsyncEngine) -> None:
        from agents.extensions.memory import SQLAlchemySession

        self._engine = engine
        self._cls = SQLAlchemySession
        self._sessions: dict[str, Any] = {}

    @classmethod
    async def open(cls, db: Database) -> OpenAIAgentsSession:
        return cls(create_async_engine(db.url))

    def _open(self, sid: str) -> Any:
        return self._cls(sid, engine=self._engine, create_tables=True)

    async def close(self) -> None:
        await self._engine.dispose()


class OpenAIAgentsSqlite(_AgentsSessions):
    """The OpenAI Agents SDK's ``SQLiteSession`` (sqlite3 in a worker thread; SQLite only),
    in tables of its own (the SDK's SQLite sessions share default table names)."""

    label = "OpenAI Agents SQLiteSession"

    def __init__(self, path: str) -> None:
        from agents import SQLiteSession

        self._path = path
        self._cls = SQLiteSession
        self._sessions: dict[str, Any] = {}

    @classmethod
    async def open(cls, db: Database) -> OpenAIAgentsSqlite:
        return cls(db.target)

    def _open(self, sid: str) -> Any:
        return self._cls(sid, self._path, "agent_sqlite_sessions", "agent_sqlite_messages")

    async def close(self) -> None:
        for session in self._sessions.values():
            session.close()


class OpenAIAgentsAsyncSqlite(_AgentsSessions):
    """The OpenAI Agents SDK's ``AsyncSQLiteSession`` (aiosqlite; SQLite only), in tables of
    its own."""

    label = "OpenAI Agents AsyncSQLiteSession"

    def __init__(self, path: str) -> None:
        from agents.extensions.memory import AsyncSQLiteSession

        self._path = path
        self._cls = AsyncSQLiteSession
        self._sessions: dict[str, Any] = {}

    @classmethod
    async def open(cls, db: Database) -> OpenAIAgentsAsyncSqlite:
        return cls(db.target)

    def _open(self, sid: str) -> Any:
        return self._cls(sid, self._path, "agent_async_sessions", "agent_async_messages")

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


class LangChainSql(_LangChainHistory):
    """LangChain's ``SQLChatMessageHistory`` (langchain-community) on an async engine."""

    label = "LangChain SQLChatMessageHistory"
    _table = "bench_lc_sql_messages"

    def __init__(self, engine: AsyncEngine) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package announces its own sunset on import
            from langchain_community.chat_message_histories import SQLChatMessageHistory

        self._engine = engine
        self._cls = SQLChatMessageHistory
        self._histories: dict[str, Any] = {}

    @classmethod
    async def open(cls, db: Database) -> LangChainSql:
        return cls(create_async_engine(db.url))

    def session_id(self, name: str) -> str:
        return name

    def _history_for(self, sid: str) -> Any:
        return self._cls(session_id=sid, connection=self._engine, table_name=self._table)

    async def close(self) -> None:
        await self._engine.dispose()


class LangGraphSaver:
    """A LangGraph checkpointer holding the conversation as a checkpoint's ``messages``."""

    label = "LangGraph AsyncSqliteSaver / AsyncPostgresSaver"

    def __init__(self, label: str, saver: Any, resource: Any) -> None:
        self.label = label
        self._saver = saver
        self._resource = resource  # the connection the saver runs on
        self._threads: dict[str, tuple[list[Any], str | None, str | None]] = {}
        """Each thread's messages, channel version and checkpoint id: the graph's state."""

    @classmethod
    async def open(cls, db: Database) -> LangGraphSaver:
        if db.backend == "sqlite":
            import aiosqlite
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            conn: Any = await aiosqlite.connect(db.target)
            saver: Any = AsyncSqliteSaver(conn)
            label = "LangGraph AsyncSqliteSaver"
        else:
            import psycopg
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            from psycopg.rows import dict_row

            conn = await psycopg.AsyncConnection.connect(
                db.target, autocommit=True, prepare_threshold=0, row_factory=dict_row
            )
            saver = AsyncPostgresSaver(conn)
            label = "LangGraph AsyncPostgresSaver"
        await saver.setup()
        return cls(label, saver, conn)

    def session_id(self, name: str) -> str:
        return name

    @staticmethod
    def _config(sid: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        configurable = {"thread_id": sid, "checkpoint_ns": ""}
        if checkpoint_id is not None:
            configurable["checkpoint_id"] = checkpoint_id
        return {"configurable": configurable}

    async def _put(self, sid: str, new: list[Any]) -> None:
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.base.id import uuid6

        messages, version, parent = self._threads.get(sid, ([], None, None))
        messages = [*messages, *new]
        version = self._saver.get_next_version(version, None)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = str(uuid6())
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {"messages": version}
        metadata: Any = {"source": "loop", "step": len(messages) // 2, "parents": {}}
        await self._saver.aput(
            self._config(sid, parent), checkpoint, metadata, {"messages": version}
        )
        self._threads[sid] = (messages, version, checkpoint["id"])

    async def prefill(self, sid: str, n_turns: int) -> None:
        await self._put(
            sid, [m for q, a, r in history_exchanges(n_turns) for m in _messages(q, a, r)]
        )

    async def append(self, sid: str, exchange: Exchange) -> None:
        await self._put(sid, _messages(exchange.question, exchange.answer, exchange.results))

    async def load(self, sid: str) -> int:
        found = await self._saver.aget_tuple(self._config(sid))
        return len(found.checkpoint["channel_values"]["messages"])

    async def close(self) -> None:
        await self._resource.close()


class GoogleAdk:
    """Google ADK's ``DatabaseSessionService`` on an engine of its own."""

    label = "Google ADK DatabaseSessionService"
    _app = "bench"
    _user = "bench-user"
    _schema = "adk"

    def __init__(self, service: Any) -> None:
        self._service = service
        self._sessions: dict[str, Any] = {}
        """Each session as ``append_event`` wants it: the object it keeps up to date."""

    @classmethod
    async def open(cls, db: Database) -> GoogleAdk:
        """ADK's tables have fixed names, one of them ``sessions`` (convostore's too): on
        SQLite it gets a file of its own beside the database, on PostgreSQL a schema."""
        from google.adk.sessions import DatabaseSessionService

        if db.backend == "sqlite":
            path = Path(db.target)
            url = f"sqlite+aiosqlite:///{path.with_name(path.stem + '-adk.db')}"
            return cls(DatabaseSessionService(db_url=url))
        import asyncpg

        conn = await asyncpg.connect(db.target)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {cls._schema}")
        finally:
            await conn.close()
        settings = {"server_settings": {"search_path": cls._schema}}
        return cls(DatabaseSessionService(db_url=db.url, connect_args=settings))

    def session_id(self, name: str) -> str:
        return name

    @staticmethod
    def _events(question: str, answer: str, results: list[dict[str, Any]] | None) -> list[Any]:
        from google.adk.events import Event
        from google.genai import types

        invocation = uuid.uuid4().hex
        metadata = {"results": results} if results is not None else None
        return [
            Event(
                author="user",
                invocation_id=invocation,
                content=types.Content(role="user", parts=[types.Part(text=question)]),
                custom_metadata=metadata,
            ),
            Event(
                author="assistant",
                invocation_id=invocation,
                content=types.Content(role="model", parts=[types.Part(text=answer)]),
            ),
        ]

    async def _add(self, sid: str, events: list[Any]) -> None:
        session = self._sessions.get(sid)
        if session is None:
            session = await self._service.create_session(
                app_name=self._app, user_id=self._user, session_id=sid
            )
            self._sessions[sid] = session
        for event in events:
            await self._service.append_event(session, event)

    async def prefill(self, sid: str, n_turns: int) -> None:
        await self._add(
            sid, [e for q, a, r in history_exchanges(n_turns) for e in self._events(q, a, r)]
        )

    async def append(self, sid: str, exchange: Exchange) -> None:
        await self._add(sid, self._events(exchange.question, exchange.answer, exchange.results))

    async def load(self, sid: str) -> int:
        session = await self._service.get_session(
            app_name=self._app, user_id=self._user, session_id=sid
        )
        return len(session.events)

    async def close(self) -> None:
        await self._service.close()


_PEERS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("langchain-postgres", LangChainPostgres, ("postgresql",)),
    ("openai-agents", OpenAIAgentsSession, ("sqlite", "postgresql")),
    ("openai-agents", OpenAIAgentsSqlite, ("sqlite",)),
    ("openai-agents", OpenAIAgentsAsyncSqlite, ("sqlite",)),
    ("langchain-community", LangChainSql, ("sqlite", "postgresql")),
    ("langgraph-checkpoint-sqlite", LangGraphSaver, ("sqlite",)),
    ("langgraph-checkpoint-postgres", LangGraphSaver, ("postgresql",)),
    ("google-adk", GoogleAdk, ("sqlite", "postgresql")),
]


async def open_peers(db: Database) -> tuple[list[Peer], list[str]]:
    """The peers that are installed and run on ``db``'s backend, and notes on the others."""
    peers: list[Peer] = []
    notes: list[str] = []
    for package, peer_cls, backends in _PEERS:
        if db.backend not in backends:
            continue
        try:
            peers.append(await peer_cls.open(db))
        except ImportError as exc:
            notes.append(
                f"peer {peer_cls.label} skipped: {exc}; "
                f"install it with `pip install '{PEER_PACKAGES[package]}'`"
            )
        except Exception as exc:  # a peer that cannot start here is left out, not the run
            notes.append(f"peer {peer_cls.label} skipped: it failed to open ({exc!r})")
    return peers, notes
