"""The system convostore replaces, as a baseline: the original in-memory SessionManager, run
as is from ``../shared/seed/session_manager.py`` (or env ``CONVOSTORE_SEED_PATH``), in memory
and with its Redis mode (one JSON blob per session, rewritten on every update)."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "REDIS_URL_ENV",
    "SEED_PATH_ENV",
    "load_seed",
    "original_state",
    "seed_path",
    "start_original",
    "stop_original",
]

SEED_PATH_ENV = "CONVOSTORE_SEED_PATH"
REDIS_URL_ENV = "CONVOSTORE_BENCH_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
_MODULE_NAME = "convostore_bench_original_session_manager"


def seed_path() -> Path:
    """Where the original SessionManager's source is: env ``CONVOSTORE_SEED_PATH``, else
    ``../shared/seed/session_manager.py`` beside the repository."""
    explicit = os.environ.get(SEED_PATH_ENV)
    if explicit:
        return Path(explicit)
    root = Path(__file__).resolve().parent.parent
    return root.parent / "shared" / "seed" / "session_manager.py"


def load_seed() -> ModuleType | None:
    """The original module, imported from its file, or None if the file is missing."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    path = seed_path()
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


async def start_original(
    seed: ModuleType, *, ttl: float, max_sessions: int, redis: bool = False
) -> Any | None:
    """A started original SessionManager (with its Redis mode when ``redis``), or None when
    Redis was asked for and cannot be reached (the original then silently keeps memory only).
    Its keys get a prefix of this process, removed again by ``stop_original``."""
    config = seed.SessionConfig(
        session_ttl=int(ttl),
        cleanup_interval=10**9,
        max_sessions=max_sessions,
        redis_enabled=redis,
        redis_url=redis_url(),
        redis_prefix=f"convostore-bench:{os.getpid()}:{id(seed)}:",
    )
    manager = seed.SessionManager(config)
    await manager.start()
    if redis and not manager._redis_available:
        await stop_original(manager)
        return None
    return manager


async def stop_original(manager: Any) -> None:
    """Delete the manager's Redis keys, then stop it."""
    client = manager._redis
    if client is not None:
        keys = [key async for key in client.scan_iter(match=manager.config.redis_prefix + "*")]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its redis close() is deprecated
        await manager.stop()


def original_state(seed: ModuleType, n_turns: int) -> Any:
    """An original ``ConversationState`` with the same content ``workload.history_rows``
    stores, built through its own ``add_turn`` with fresh strings."""
    state = seed.ConversationState()
    for seq in range(1, n_turns + 1):
        number = (seq + 1) // 2
        if seq % 2:
            turn = seed.ConversationTurn(
                role="user",
                content=f"Welke archieven zijn er in Plaats {number}?",
                template_id="archives_in_place",
                slots={"place": f"Plaats {number}"},
                results=[{"name": f"Archief van Plaats {number}", "city": f"Plaats {number}"}],
            )
        else:
            turn = seed.ConversationTurn(
                role="assistant",
                content=f"Er zijn {seq % 17 + 1} archieven in Plaats {number}, waaronder het"
                " Regionaal Archief.",
            )
        state.add_turn(turn)
    return state
