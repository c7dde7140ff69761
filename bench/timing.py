"""Latency statistics and the interleaved measuring loop that puts a floor beside each figure."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Op", "Stats", "interleave", "time_each"]

Op = Callable[[], Awaitable[object]]
"""One operation to time: a coroutine function without arguments."""


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of samples in seconds (or in whatever unit the samples are)."""

    n: int
    median: float
    p95: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Median, nearest-rank p95, mean, min and max of ``samples`` (at least one)."""
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        rank = max(1, math.ceil(0.95 * len(ordered)))
        return cls(
            n=len(ordered),
            median=statistics.median(ordered),
            p95=ordered[rank - 1],
            mean=statistics.fmean(ordered),
            minimum=ordered[0],
            maximum=ordered[-1],
        )


async def time_each(op: Op, count: int, into: list[float]) -> None:
    """Run ``op`` ``count`` times, appending each call's wall time to ``into``."""
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        await op()
        into.append(clock() - start)


async def interleave(
    ops: Mapping[str, Op],
    iterations: int | Mapping[str, int],
    *,
    warmup: int,
    rounds: int = 10,
) -> dict[str, Stats]:
    """Time every op in alternating blocks, so drift on a shared machine hits all of them.

    Each op first runs ``warmup`` untimed calls. Then, for each of ``rounds`` rounds, every op
    runs one block of timed calls; the order of the ops rotates and reverses from round to
    round. ``iterations`` (per op, or one number for all) is the total of timed calls.
    """
    counts = {name: iterations if isinstance(iterations, int) else iterations[name] for name in ops}
    for name, op in ops.items():
        for _ in range(min(warmup, counts[name])):
            await op()
    rounds = max(1, min(rounds, min(counts.values())))
    gc.collect()
    samples: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        for name in order:
            done = len(samples[name])
            block = math.ceil((counts[name] - done) / (rounds - index))
            gc.collect(1)  # the young generations only: a full pass costs ~0.1 s on this heap
            await time_each(ops[name], block, samples[name])
    return {name: Stats.of(values) for name, values in samples.items()}
