"""TTL expiry: the background task that runs the batched sweep (``SqlStore.sweep_batch``).

Each batch is its own short transaction that deletes at most ``batch_size`` sessions by primary
key (turns and slots go by ON DELETE CASCADE), so a sweep never holds long locks. On PostgreSQL
rows another transaction holds are skipped (``SKIP LOCKED``) and left for the next sweep, so
several workers can sweep at once without waiting on each other or on writers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["run_periodically"]

logger = logging.getLogger("convostore")


async def run_periodically(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval`` seconds until cancelled. A failing run, whatever the
    error, is logged and the next one still happens: expiry must not end because the
    database was briefly away or one batch hit a bug."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            logger.exception("convostore: scheduled expiry sweep failed; retrying next interval")
