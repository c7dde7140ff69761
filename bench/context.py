"""What every scenario gets: the options, sizes, database servers, the original manager's
module, and places to leave notes and plot series."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from convostore import SessionRepository, StoreConfig

from .backends import BackendName, Server
from .options import TTL, Options, Sizes

__all__ = ["Context"]


@dataclass(slots=True)
class Context:
    options: Options
    sizes: Sizes
    servers: dict[BackendName, Server]
    seed: ModuleType | None
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)

    def note(self, message: str) -> None:
        """Print a note now and keep it for the report."""
        print(f"  note: {message}", flush=True)
        self.notes.append(message)

    @staticmethod
    def repository(url: str, *, max_sessions: int = 100_000, **settings: Any) -> SessionRepository:
        """A convostore repository for the run: the run's TTL, no background sweep."""
        config = StoreConfig(
            database_url=url,
            session_ttl=TTL,
            cleanup_interval=0,
            max_sessions=max_sessions,
            **settings,
        )
        return SessionRepository(config)
