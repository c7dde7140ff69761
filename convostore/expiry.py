"""TTL expiry: a batched DELETE of expired sessions, and the background task that runs it.

Each batch is its own short transaction that deletes at most ``batch_size`` sessions by primary
key (turns and slots go by ON DELETE CASCADE), so a sweep never holds long locks. On PostgreSQL
rows another transaction holds are skipped (``SKIP LOCKED``) and left for the next sweep, so
several workers can sweep at once without waiting on each other or on writers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import Integer, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .driver import Compiled, PostgresDriver, SqliteDriver
from .errors import ConvostoreError
from .schema import UTCDateTime, sessions

__all__ = ["delete_expired_batch", "run_periodically"]

logger = logging.getLogger("convostore")

_expired_ids = (
    select(sessions.c.session_id)
    .where(sessions.c.expires_at <= bindparam("now", type_=UTCDateTime()))
    .order_by(sessions.c.expires_at)
    .limit(bindparam("batch", type_=Integer()))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_delete_batch = (
    delete(sessions).where(sessions.c.session_id.in_(_expired_ids)).returning(sessions.c.session_id)
)


_compiled: dict[str, Compiled] = {}


async def delete_expired_batch(engine: AsyncEngine, now: datetime, batch_size: int) -> list[str]:
    """Delete up to ``batch_size`` sessions that expired by ``now``, in one statement (its own
    transaction), on the driver path: one round trip on PostgreSQL, one thread hop on SQLite.
    Returns their ids."""
    dialect = engine.dialect
    compiled = _compiled.get(dialect.name)
    if compiled is None:
        compiled = _compiled[dialect.name] = Compiled(_delete_batch, dialect)
    driver = PostgresDriver(engine) if dialect.name == "postgresql" else SqliteDriver(engine)
    rows = await driver.write(compiled, {"now": now, "batch": batch_size})
    return [row[0] for row in rows]


async def run_periodically(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval`` seconds until cancelled. A failing run is logged and
    the next one still happens: a database that is briefly away must not end expiry."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except ConvostoreError:
            logger.exception("convostore: scheduled expiry sweep failed; retrying next interval")
