"""The original SessionManager's module-level entry points, so old code only changes its import.

``get_session_manager()`` returns one shared, started ``SessionRepository`` per process, built
from the ``StoreConfig`` given on the first call (later configs are ignored, as before);
``shutdown_session_manager()`` stops it. The original manager kept sessions in memory and
needed no migration step, so code written for it gets none either: unless its config sets
``auto_migrate``, the shared repository brings the schema up to date itself, on PostgreSQL too.
Its states were all in Dutch ("nl"), so the shared repository's sessions are too, unless its
config sets ``default_language`` (a ``SessionRepository`` of its own tags none by default).
"""

from __future__ import annotations

import asyncio

from convostore.config import StoreConfig
from convostore.repository import SessionRepository

__all__ = ["ORIGINAL_LANGUAGE", "get_session_manager", "shutdown_session_manager"]

ORIGINAL_LANGUAGE = "nl"
"""The language of every state of the original SessionManager (its ``ConversationState``
default), and so of every session the shared repository creates unless its config names
another ``default_language``."""

_shared: SessionRepository | None = None
_lock: asyncio.Lock | None = None


def _get_lock() -> asyncio.Lock:
    global _lock
    if _lock is None:
        _lock = asyncio.Lock()
    return _lock


async def get_session_manager(config: StoreConfig | None = None) -> SessionRepository:
    """The process's shared repository, started on first use, migrating the schema unless
    ``config`` sets ``auto_migrate``, and tagging sessions "nl" unless it sets
    ``default_language``."""
    global _shared
    async with _get_lock():
        if _shared is None:
            config = config or StoreConfig()
            if config.auto_migrate is None:
                config = config.model_copy(update={"auto_migrate": True})
            if "default_language" not in config.model_fields_set:
                config = config.model_copy(update={"default_language": ORIGINAL_LANGUAGE})
            repository = SessionRepository(config)
            await repository.start()
            _shared = repository
        return _shared


async def shutdown_session_manager() -> None:
    """Stop the shared repository, if there is one (for graceful shutdown)."""
    global _shared, _lock
    async with _get_lock():
        if _shared is not None:
            await _shared.stop()
            _shared = None
    _lock = None
