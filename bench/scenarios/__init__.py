"""The scenarios, one module per group of rows of BENCHMARKS.md's table (each module holds its
rows' targets), in the order they run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..context import Context
from ..results import Row
from . import (
    append,
    cache_hit,
    callers,
    caps,
    catalog,
    coherence,
    coherence_writers,
    cold_get,
    encryption,
    expiry,
    langchain_history,
    large_store,
    memory,
    openai_agents,
    peers,
    pydantic_ai_history,
    search,
    throughput,
)

__all__ = ["SCENARIOS", "Scenario"]

Scenario = Callable[[Context], Awaitable[list[Row]]]

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "hit": ("cache-hit get", cache_hit.run),
    "append": ("add_turn and append cost vs history", append.run),
    "cold": ("cold get", cold_get.run),
    "encryption": ("add_turn and cold get with encryption_keys vs without", encryption.run),
    "throughput": ("concurrent throughput (PostgreSQL)", throughput.run),
    "callers": ("concurrency sweep: 1 to 200 callers, every backend", callers.run),
    "large": ("large store (PostgreSQL)", large_store.run),
    "expiry": ("expiry sweep, both passes, retention 30 days and 0", expiry.run),
    "memory": ("memory per cached session", memory.run),
    "coherence": ("coherence across processes: staleness and costs", coherence.run),
    "coherence_writers": (
        "coherence's cost to 8, 32 and 64 concurrent writers",
        coherence_writers.run,
    ),
    "catalog": ("the catalog: list_sessions page after page", catalog.run),
    "caps": ("add_turn at max_turns_per_session against no cap", caps.run),
    "search": ("full-text search: latency, and the index's cost to appends", search.run),
    "peers": ("peers (--peers)", peers.run),
    "langchain": (
        "LangChain's history operations: the adapter vs SQLChatMessageHistory",
        langchain_history.run,
    ),
    "pydantic_ai": (
        "pydantic-ai's message history: the adapter vs a JSON blob per conversation",
        pydantic_ai_history.run,
    ),
    "openai_agents": (
        "OpenAI Agents SDK sessions: ConvostoreSession against the SDK's stores (--peers)",
        openai_agents.run,
    ),
}
"""Each scenario by its ``--only`` name: (title, coroutine function)."""
