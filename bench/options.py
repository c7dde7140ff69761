"""What a run measures and how much: the command-line options and the sizes they imply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backends import BackendName

__all__ = ["TTL", "Options", "Sizes"]

TTL = 86_400.0
"""Session TTL of every store in the run: a day, so no read during a run is old enough
(ttl/10) to refresh the stored expiry; hits stay free of SQL, as in steady use."""


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    quick: bool
    peers: bool
    scale: int
    backends: tuple[BackendName, ...]
    out: Path
    benchmarks_md: Path | None
    command: str
    only: tuple[str, ...] = ()
    """Names of the scenarios to run (all when empty)."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """Iteration counts and store sizes of each scenario."""

    warmup: int
    rounds: int
    hit_levels: tuple[int, ...]
    hit_iterations: int
    hit_turns: int
    original_hit_budget: float
    """Seconds the original manager's O(n) get may take per level; fewer samples beyond it."""
    histories: tuple[int, ...]
    append_iterations: int
    append_sessions: int
    cold_iterations: int
    cold_turns: int
    concurrency_tasks: int
    concurrency_pool: int
    concurrency_per_task: int
    concurrency_rounds: int
    sweep_seconds: float
    sweep_rounds: int
    writers_seconds: float
    writers_rounds: int
    """Rounds of each variant (coherence on, off) per writer count in ``coherence_writers``."""
    store_small: int
    store_large: int
    store_iterations: int
    expiry_sessions: int
    expiry_turns: int
    expiry_baseline: int
    memory_sessions: int
    memory_turns: int
    peer_iterations: int
    catalog_conversations: int
    """Conversations of the one user ``catalog`` pages through (half of them ended)."""
    search_turns: int
    """Turns of varied text in the search's store: ten per session of ``--scale``, at most
    1,000,000 (issue 17's figure)."""
    search_iterations: int

    @classmethod
    def for_run(cls, quick: bool, scale: int) -> Sizes:
        if quick:
            return cls(
                warmup=5,
                rounds=4,
                hit_levels=(100, 1_000),
                hit_iterations=400,
                hit_turns=10,
                original_hit_budget=0.2,
                histories=(10, 100, 1_000),
                append_iterations=24,
                append_sessions=4,
                cold_iterations=24,
                cold_turns=100,
                concurrency_tasks=16,
                concurrency_pool=10,
                concurrency_per_task=4,
                concurrency_rounds=2,
                sweep_seconds=0.3,
                sweep_rounds=1,
                writers_seconds=0.25,
                writers_rounds=1,
                store_small=200,
                store_large=min(scale, 2_000),
                store_iterations=16,
                expiry_sessions=1_000,
                expiry_turns=10,
                expiry_baseline=30,
                memory_sessions=100,
                memory_turns=20,
                peer_iterations=12,
                catalog_conversations=2_000,
                search_turns=2_000,
                search_iterations=40,
            )
        return cls(
            warmup=20,
            rounds=10,
            hit_levels=(100, 1_000, 10_000, 100_000),
            hit_iterations=20_000,
            hit_turns=10,
            original_hit_budget=3.0,
            histories=(10, 100, 1_000),
            append_iterations=400,
            append_sessions=20,
            cold_iterations=400,
            cold_turns=100,
            concurrency_tasks=16,
            concurrency_pool=10,
            concurrency_per_task=60,
            concurrency_rounds=6,
            sweep_seconds=4.0,
            sweep_rounds=3,
            writers_seconds=2.0,
            writers_rounds=7,
            store_small=1_000,
            store_large=scale,
            store_iterations=300,
            expiry_sessions=100_000,
            expiry_turns=10,
            expiry_baseline=400,
            memory_sessions=2_000,
            memory_turns=20,
            peer_iterations=200,
            catalog_conversations=100_000,
            search_turns=min(scale * 10, 1_000_000),
            search_iterations=1_000,
        )
