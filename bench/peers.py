"""Peer stores a user might pick instead of convostore, behind one small interface, each
imported only when asked for (``--peers``); a missing package is reported and skipped.

- LangChain ``PostgresChatMessageHistory`` (langchain-postgres, psycopg 3; PostgreSQL only)
- OpenAI Agents SDK ``SQLAlchemySession`` (openai-agents[sqlalchemy])
- LangChain ``SQLChatMessageHistory`` (langchain-community)

Each stores an exchange as two messages in its own tables of the same database.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .backends import Database

__all__ = ["PEER_PACKAGES", "Peer", "open_peers"]

PEER_PACKAGES = {
    "langchain-postgres": "langchain-postgres",
    "openai-agents": "openai-agents[sqlalchemy]",
    "langchain-community": "langchain-community",
}
"""pip requirement of each peer, for the notes a missing one leaves."""


class Peer(Protocol):
    """What the benchmark asks of a peer store."""

    label: str

    def session_id(self, name: str) -> str: ...

    async def prefill(self, sid: str, n_turns: int) -> None: ...

    async def append(self, sid: str, question: str, answer: str) -> None: ...

    async def load(self, sid: str) -> int: ...

    async def close(self) -> None: ...


def _messages(question: str, answer: str) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage

    return [HumanMessage(content=question), AIMessage(content=answer)]


def _history(n_turns: int) -> list[tuple[str, str]]:
    return [
        (
            f"Welke archieven zijn er in Plaats {i}?",
            f"Er zijn {i % 17 + 1} archieven in Plaats {i}.",
        )
        for i in range(1, n_turns // 2 + 1)
    ]


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
        messages = [m for q, a in _history(n_turns) for m in _messages(q, a)]
        await self._get(sid).aadd_messages(messages)

    async def append(self, sid: str, question: str, answer: str) -> None:
        await self._get(sid).aadd_messages(_messages(question, answer))

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


class OpenAIAgentsSession:
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

    def session_id(self, name: str) -> str:
        return name

    def _get(self, sid: str) -> Any:
        session = self._sessions.get(sid)
        if session is None:
            session = self._cls(sid, engine=self._engine, create_tables=True)
            self._sessions[sid] = session
        return session

    @staticmethod
    def _items(question: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    async def prefill(self, sid: str, n_turns: int) -> None:
        items = [item for q, a in _history(n_turns) for item in self._items(q, a)]
        await self._get(sid).add_items(items)

    async def append(self, sid: str, question: str, answer: str) -> None:
        await self._get(sid).add_items(self._items(question, answer))

    async def load(self, sid: str) -> int:
        return len(await self._get(sid).get_items())

    async def close(self) -> None:
        await self._engine.dispose()


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


_PEERS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("langchain-postgres", LangChainPostgres, ("postgresql",)),
    ("openai-agents", OpenAIAgentsSession, ("sqlite", "postgresql")),
    ("langchain-community", LangChainSql, ("sqlite", "postgresql")),
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
    return peers, notes
