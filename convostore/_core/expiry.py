"""TTL expiry off the request path: the timer that runs a job periodically (the repository's
sweep, and the flush of expiry refreshes), and the expiry refreshes reads leave behind,
written later in batches.

The sweep itself is not here: ``repository.SessionRepository.sweep_expired`` runs
``session_ops.SessionOperations.sweep``, whose batches are ``store.SqlStore.sweep_batch`` and
``sweep_transcripts_batch`` (statements ``sweep`` and ``sweep_transcripts`` in
``backends/_statements.py``, where their locking is described).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

__all__ = ["DeferredRefreshes", "run_periodically"]

logger = logging.getLogger("convostore")

Touch = Callable[[Sequence[tuple[str, datetime, int]]], Awaitable[None]]
"""Writes refreshes: (session id, read at, hits) each, in one transaction."""


async def run_periodically(
    interval: float, job: Callable[[], Awaitable[object]], what: str = "expiry sweep"
) -> None:
    """Run ``job`` every ``interval`` seconds until cancelled. A failing run, whatever the
    error, is logged and the next one still happens: expiry must not end because the
    database was briefly away or one batch hit a bug."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            logger.exception("convostore: scheduled %s failed; retrying next interval", what)


class DeferredRefreshes:
    """Expiry refreshes that reads need, written behind them in batches.

    A read that finds the stored ``last_accessed`` stale notes its refresh here and returns at
    once; ``flush`` (every ``refresh_delay`` seconds, before a sweep, at ``stop()``) writes
    what is pending, ``batch_size`` sessions per transaction. A refresh only slides an expiry
    forward, so one lost to a crash or a failed flush makes that session expire up to the
    delay (plus the usual tenth of the TTL) sooner than it would have; no content is at
    stake."""

    def __init__(self, touch: Touch, batch_size: int) -> None:
        self._touch = touch
        self._batch_size = batch_size
        self._pending: dict[str, tuple[datetime, int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def note(self, sid: str, now: datetime, hits: int) -> None:
        """Remember that session ``sid`` was read at ``now``, with ``hits`` reads to add."""
        earlier = self._pending.get(sid)
        self._pending[sid] = (now, hits + (earlier[1] if earlier else 0))

    async def flush(self) -> int:
        """Write every pending refresh. Returns how many were written; on a failure, the
        batches not yet written are dropped and the error raised."""
        pending, self._pending = self._pending, {}
        items = [(sid, now, hits) for sid, (now, hits) in pending.items()]
        size = self._batch_size
        for start in range(0, len(items), size):
            await self._touch(items[start : start + size])
        return len(items)
