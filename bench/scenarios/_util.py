"""Small helpers the scenarios share."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from convostore import ConversationState, SessionRepository

from ..timing import Op
from ..workload import EXCHANGE

__all__ = ["add_turn", "cycling", "fmt_count", "now_utc", "timed", "warm_cache"]

T = TypeVar("T")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def fmt_count(value: int) -> str:
    return f"{value:,}"


def cycling(items: Iterable[T], action: Callable[[T], Awaitable[Any]]) -> Op:
    """An op that applies ``action`` to the next item, round and round."""
    source = itertools.cycle(list(items))

    async def op() -> None:
        await action(next(source))

    return op


async def add_turn(repo: SessionRepository, sid: str) -> ConversationState:
    """convostore's append of the benchmark's exchange."""
    return await repo.add_turn(
        sid,
        EXCHANGE.question,
        EXCHANGE.answer,
        template_id=EXCHANGE.template_id,
        slots=EXCHANGE.slots,
        results=EXCHANGE.results,
    )


async def warm_cache(repo: SessionRepository, sids: Sequence[str], n_turns: int) -> None:
    """Read each session once (so it is cached) and check it holds the stored turns."""
    for sid in sids:
        state = await repo.get(sid)
        if state is None or len(state.turns) != n_turns:
            found = None if state is None else len(state.turns)
            raise RuntimeError(f"session {sid}: expected {n_turns} stored turns, read {found}")


async def timed(label: str, work: Awaitable[T]) -> T:
    """Await ``work`` and print how long it took (for setup steps such as bulk loads)."""
    start = time.perf_counter()
    result = await work
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return result
