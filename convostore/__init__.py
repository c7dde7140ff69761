"""convostore: multi-turn chat/RAG conversation state in SQL (SQLite, PostgreSQL or MariaDB).

from convostore import SessionRepository, StoreConfig

async with SessionRepository(StoreConfig(database_url="sqlite+aiosqlite:///chat.db")) as repo:
    sid, state = await repo.get_or_create()
    state = await repo.add_turn(sid, "Welke archieven zijn er in Utrecht?", "Er zijn er 12.")
"""

from convostore.compat import get_session_manager, shutdown_session_manager
from convostore.config import StoreConfig
from convostore.errors import (
    ConfigError,
    ConvostoreError,
    DecryptionFailed,
    ForeignStateError,
    InvalidPage,
    InvalidQuery,
    InvalidSessionId,
    InvalidTurn,
    NotRunning,
    NotSessionOwner,
    RedactionFailed,
    SchemaNotReady,
    StaleStateError,
    StatementTimeout,
    StoreError,
    StoreUnavailable,
)
from convostore.models import (
    ConversationState,
    ConversationSummary,
    ConversationTurn,
    SearchHit,
    SearchPage,
    SessionPage,
)
from convostore.repository import SessionRepository

SessionConfig = StoreConfig
"""The original SessionManager's name for the configuration."""

__all__ = [
    "ConfigError",
    "ConversationState",
    "ConversationSummary",
    "ConversationTurn",
    "ConvostoreError",
    "DecryptionFailed",
    "ForeignStateError",
    "InvalidPage",
    "InvalidQuery",
    "InvalidSessionId",
    "InvalidTurn",
    "NotRunning",
    "NotSessionOwner",
    "RedactionFailed",
    "SchemaNotReady",
    "SearchHit",
    "SearchPage",
    "SessionConfig",
    "SessionPage",
    "SessionRepository",
    "StaleStateError",
    "StatementTimeout",
    "StoreConfig",
    "StoreError",
    "StoreUnavailable",
    "get_session_manager",
    "shutdown_session_manager",
]
