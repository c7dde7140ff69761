"""Small helpers the scenarios share."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from convostore import ConversationState, SessionRepository
from convostore.backends import backend_for

from ..backends import Server
from ..results import Row, figure
from ..timing import Op, Stats
from ..workload import EXCHANGE

__all__ = [
    "CORE_LABEL",
    "DRIVERS",
    "NO_FAST_PATH",
    "add_turn",
    "cycling",
    "fast_path",
    "floor_rows",
    "fmt_count",
    "now_utc",
    "timed",
    "warm_cache",
]

CORE_LABEL = "convostore, core path (fast_path=False)"
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mariadb": "asyncmy"}
"""The raw driver of each backend, as the floors' labels name it."""
NO_FAST_PATH = "convostore runs on SQLAlchemy's execution here (no fast path): shown, no target"
"""The note of a row whose target other backends have for their fast path."""

T = TypeVar("T")


def fast_path(server: Server) -> bool:
    """Whether convostore has a fast path on ``server``'s backend. Where it has none
    (MariaDB), ``fast_path=False`` changes nothing, and targets set for what a fast path
    reaches do not apply."""
    return backend_for(server.name).why_no_fast_path() is None


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


def floor_rows(
    server: Server,
    keys: tuple[str, str],
    paths: tuple[str, str],
    measured: dict[str, Stats],
    labels: tuple[str, str],
    target: float,
) -> list[Row]:
    """The two rows of an operation against its true floor: convostore (fast path) / floor
    with ``target``, and the core path / fast path (``keys`` and ``paths`` of each).
    ``measured`` holds ``convostore``, ``floor``, ``core`` and ``naive`` (the naive raw floor);
    ``labels`` name the floor and the naive raw floor. On a backend without a fast path
    (``fast_path``) the first row only, without ``target`` (``measured`` has no ``core``)."""
    conv, floor = measured["convostore"], measured["floor"]
    floor_label, naive_label = labels
    ratio = conv.median / floor.median
    if not fast_path(server):
        return [
            Row(
                key=f"{keys[0]}.{server.name}",
                path=paths[0],
                backend=server.label,
                convostore=figure("convostore", conv),
                raw=figure(floor_label, floor),
                others=[figure(naive_label, measured["naive"])],
                ratio=ratio,
                ratio_of="convostore / true floor",
                note=NO_FAST_PATH,
            )
        ]
    core = measured["core"]
    return [
        Row(
            key=f"{keys[0]}.{server.name}",
            path=paths[0],
            backend=server.label,
            convostore=figure("convostore", conv),
            raw=figure(floor_label, floor),
            others=[figure(naive_label, measured["naive"]), figure(CORE_LABEL, core)],
            ratio=ratio,
            ratio_of="convostore / true floor",
            target=f"≤ {target}× true floor",
            met=ratio <= target,
        ),
        Row(
            key=f"{keys[1]}.{server.name}",
            path=paths[1],
            backend=server.label,
            convostore=figure(CORE_LABEL, core),
            raw=figure(floor_label, floor),
            others=[figure("convostore (fast path)", conv)],
            ratio=core.median / conv.median,
            ratio_of="core path / fast path",
            note=f"core path / true floor {core.median / floor.median:.2f}×",
        ),
    ]
