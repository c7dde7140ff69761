"""Row 7: the expiry sweep in its two passes, on every backend. Its targets (rate, longest
batch, appends' p95 beside it) are the database's work, not a fast path's, so they hold on
MariaDB (SQLAlchemy's execution) too.

``SessionRepository.sweep_expired`` (``SessionOperations.sweep``) runs pass 1,
``SqlStore.sweep_batch``: expired sessions go, and the schema's trigger ends their
conversations; then pass 2, ``SqlStore.sweep_transcripts_batch``: conversations that ended
``transcript_retention`` or more ago go, with their turns and slots (by cascade). Each pass
runs batches of ``sweep_batch_size`` until one comes back short. Here ``sweep_expired()`` runs,
each batch timed by the repository's timing hooks (``"sweep.sessions"``,
``"sweep.transcripts"``) and its rows counted by its stats, over expired sessions x 10 turns
loaded in bulk (then VACUUM ANALYZE and, except with ``--quick``, a checkpoint, so the sweep
does not pay for the load's), in two settings:

- retention 30 days (the default): the sweep ends the sessions and its pass 2 finds nothing
  yet. Then VACUUM ANALYZE and a checkpoint (what the month between does) and, a retention
  later, pass 2 deletes the transcripts: the sweep of a repository with retention 0, whose
  pass 2 runs the same statement with the same cutoff (``now - 0``, as ``now + retention -
  retention`` a retention on); its pass 1 finds nothing.
- retention 0: one sweep deletes the sessions, then at once their transcripts.

The raw floor (``raw.open_raw_sweeper``: the same batched statements by hand) does each sweep
the same way on an equal load of its own (a retention later, its clock moved on). Beside
every sweep, convostore's and the floor's alike, one task keeps calling ``add_turn`` on live
sessions: both sweeps meet the same contention, and the task's p95 during convostore's sweeps
is compared with its p95 without a sweep (measured before and after) and during the floor's
sweeps. It appends through the repository that sweeps with retention 30 days (its timing
hook, which counts only the sweep's batches, is called for its appends too); the sweeps with
retention 0, and a retention later, run on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from convostore import SessionRepository

from ..backends import Database, Server
from ..context import Context
from ..loader import checkpoint, load_histories, vacuum_analyze
from ..options import TTL
from ..raw import (
    RawSweeper,
    connect_mariadb,
    connect_postgres,
    connect_sqlite,
    open_raw_sweeper,
)
from ..results import Figure, Row, figure
from ..timing import Stats
from ..workload import session_ids, sqlite_timestamp
from ._util import DRIVERS, add_turn, fmt_count, now_utc, timed, warm_cache

__all__ = ["run"]

RATE_TARGET = 20_000.0
BATCH_TARGET = 0.100
P95_FACTOR = 2.0
TURNS = 10

Step = Callable[[datetime, int], Awaitable[int]]
"""One batch of a pass: (now, batch size) to rows deleted."""


@dataclass(slots=True)
class Pass:
    """One pass of a sweep: each batch's seconds, and the rows the pass deleted."""

    seconds: list[float] = field(default_factory=list)
    rows: int = 0


@dataclass(slots=True)
class Sweeps:
    """What one setting measured: the sweep's two passes, and pass 2 a retention later (None
    with retention 0, whose sweep deleted the transcripts already)."""

    sessions: Pass
    transcripts: Pass
    later: Pass | None

    @property
    def rate(self) -> float:
        """Sessions the sweep removed per second of the whole sweep (both passes)."""
        return self.sessions.rows / (sum(self.sessions.seconds) + sum(self.transcripts.seconds))


class _Convostore:
    """convostore's sweep, ``sweep_expired()`` at its repository's "now": ``repo``'s, and a
    retention later ``later``'s (a repository with ``transcript_retention=0``)."""

    def __init__(self, repo: SessionRepository, later: SessionRepository) -> None:
        self._repo = repo
        self._later = later

    async def sweep(self, now: datetime, batch_size: int) -> tuple[Pass, Pass]:
        return await _timed_sweep(self._repo)

    async def sweep_later(self, now: datetime, retention: float, batch_size: int) -> Pass:
        return (await _timed_sweep(self._later))[1]


async def _timed_sweep(repo: SessionRepository) -> tuple[Pass, Pass]:
    """``repo.sweep_expired()``: each pass's batches, timed, and the rows it deleted."""
    seconds: dict[str, list[float]] = {"sweep.sessions": [], "sweep.transcripts": []}

    def hook(what: str, elapsed: float) -> None:
        if what in seconds:
            seconds[what].append(elapsed)

    before = repo.stats()
    repo.add_timing_hook(hook)
    try:
        await repo.sweep_expired()
    finally:
        repo.remove_timing_hook(hook)
    after = repo.stats()
    return (
        Pass(seconds["sweep.sessions"], after["sessions_expired"] - before["sessions_expired"]),
        Pass(
            seconds["sweep.transcripts"],
            after["transcripts_deleted"] - before["transcripts_deleted"],
        ),
    )


class _Raw:
    """The floor's sweep, batch by batch as convostore's, its clock moved on by hand."""

    def __init__(self, sweeper: RawSweeper) -> None:
        self._sweeper = sweeper

    async def sweep(self, now: datetime, batch_size: int) -> tuple[Pass, Pass]:
        sessions = await _pass(self._sweeper.sessions, now, batch_size)
        return sessions, await _pass(self._sweeper.transcripts, now, batch_size)

    async def sweep_later(self, now: datetime, retention: float, batch_size: int) -> Pass:
        later = now + timedelta(seconds=retention)
        return await _pass(self._sweeper.transcripts, later, batch_size)


class _Writer:
    """The task that appends to live sessions while a sweep runs, and its latencies."""

    def __init__(self, repo: SessionRepository, sids: list[str]) -> None:
        self._repo = repo
        self._sids = sids
        self.during: dict[str, dict[str, list[float]]] = {"convostore": {}, "raw": {}}
        """Latencies while each named part of convostore's and of the floor's sweeps ran."""

    async def _append(self, index: int, latencies: list[float]) -> None:
        start = time.perf_counter()
        await add_turn(self._repo, self._sids[index % len(self._sids)])
        latencies.append(time.perf_counter() - start)

    async def without(self, count: int) -> list[float]:
        """``count`` appends with no sweep beside them."""
        latencies: list[float] = []
        for index in range(count):
            await self._append(index, latencies)
        return latencies

    @contextlib.asynccontextmanager
    async def beside(self, sweeper: str, part: str) -> AsyncIterator[None]:
        """Append in a loop while the body runs (the part ``part`` of a sweep by ``sweeper``,
        "convostore" or "raw")."""
        done = asyncio.Event()
        latencies = self.during[sweeper].setdefault(part, [])

        async def writer() -> None:
            index = 0
            while not done.is_set():
                await self._append(index, latencies)
                index += 1

        task = asyncio.create_task(writer())
        await asyncio.sleep(0)
        try:
            yield
        finally:
            done.set()
            await task


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for server in ctx.servers.values():
        rows += await _run_backend(ctx, server)
    return rows


async def _run_backend(ctx: Context, server: Server) -> list[Row]:
    count = ctx.sizes.expiry_sessions
    db = await server.database("expiry")
    writers = session_ids("live", 4)
    conv: dict[float, Sweeps] = {}
    raw: dict[float, Sweeps] = {}
    try:
        await load_histories(db, writers, 10, now=now_utc(), ttl=TTL)
        repo = ctx.repository(db.url)
        retention = repo.config.transcript_retention
        batch = repo.config.sweep_batch_size
        repo0 = ctx.repository(db.url, transcript_retention=0)
        async with repo, repo0:
            await warm_cache(repo, writers, 10)
            writer = _Writer(repo, writers)
            with _no_gc_pauses():
                without = await writer.without(ctx.sizes.expiry_baseline)
            for kept, sweeping in ((retention, repo), (0.0, repo0)):
                conv[kept] = await _measure(
                    ctx, db, _Convostore(sweeping, repo0), kept, batch, writer
                )
                sweeper = await open_raw_sweeper(db, kept)
                try:
                    raw[kept] = await _measure(ctx, db, _Raw(sweeper), kept, batch, writer)
                finally:
                    await sweeper.close()
            with _no_gc_pauses():
                without += await writer.without(ctx.sizes.expiry_baseline)
    finally:
        await server.drop(db)
    raw_label = f"raw {DRIVERS[server.name]}"
    rows: list[Row] = []
    for kept in (retention, 0.0):
        rows += _sweep_rows(server, raw_label, count, batch, kept, conv[kept], raw[kept])
    rows.append(_p95_row(server, writer.during, without))
    return rows


async def _measure(
    ctx: Context,
    db: Database,
    sweeper: _Convostore | _Raw,
    retention: float,
    batch_size: int,
    writer: _Writer,
) -> Sweeps:
    """Load expired sessions and sweep them, each batch timed, beside ``writer``'s appends;
    with ``retention``, then run pass 2 again a retention later, after VACUUM ANALYZE and a
    checkpoint."""
    count = ctx.sizes.expiry_sessions
    who = "convostore" if isinstance(sweeper, _Convostore) else "raw"
    setting = f"retention {_days(retention)}"
    sids = session_ids(f"expired-{who}-{retention:.0f}", count)
    await timed(
        f"load {fmt_count(count)} expired sessions x {TURNS} turns ({who}, {setting})",
        load_histories(db, sids, TURNS, now=now_utc(), ttl=TTL, expired=True),
    )
    await _settle(ctx, db)
    now = now_utc()
    async with writer.beside(who, f"{setting}: sweep"):
        with _no_gc_pauses():
            sessions, transcripts = await sweeper.sweep(now, batch_size)
    later = None
    if retention > 0:
        await _settle(ctx, db)
        async with writer.beside(who, f"{setting}: pass 2 a retention later"):
            with _no_gc_pauses():
                later = await sweeper.sweep_later(now, retention, batch_size)
    sweeps = Sweeps(sessions, transcripts, later)
    await _check(ctx, db, f"{who}, {setting}", count, sweeps)
    return sweeps


async def _settle(ctx: Context, db: Database) -> None:
    """VACUUM ANALYZE after a load or a pass, then (in a full run) a checkpoint. A quick run
    proves the scenario runs and judges nothing; there a checkpoint, which on PostgreSQL
    flushes the whole server, only made it slower (up to a second on a busy server)."""
    await vacuum_analyze(db)
    if not ctx.options.quick:
        await checkpoint(db)


async def _pass(step: Step, now: datetime, batch_size: int) -> Pass:
    """Batches of ``step`` until one comes back short, each timed."""
    done = Pass()
    while True:
        start = time.perf_counter()
        deleted = await step(now, batch_size)
        done.seconds.append(time.perf_counter() - start)
        done.rows += deleted
        if deleted < batch_size:
            return done


async def _check(ctx: Context, db: Database, tag: str, count: int, sweeps: Sweeps) -> None:
    """Every loaded session and transcript went, by the pass that should delete it."""
    transcripts = sweeps.transcripts.rows + (sweeps.later.rows if sweeps.later else 0)
    early = sweeps.transcripts.rows if sweeps.later else 0
    sessions_left, ended_left = await _left(db)
    found = (sweeps.sessions.rows, transcripts, early, sessions_left, ended_left)
    if found != (count, count, 0, 0, 0):
        ctx.note(
            f"expiry ({db.backend}, {tag}): of {count} expired sessions the sweep deleted "
            f"{sweeps.sessions.rows}, and {transcripts} transcripts ({early} before retention); "
            f"left: {sessions_left} expired sessions, {ended_left} ended conversations"
        )


async def _left(db: Database) -> tuple[int, int]:
    """Expired sessions and ended conversations still stored."""
    ended = "SELECT count(*) FROM conversations WHERE ended_at IS NOT NULL"
    if db.backend == "sqlite":
        lite = await connect_sqlite(db.target)
        try:
            expired = await lite.execute_fetchall(
                "SELECT count(*) FROM sessions WHERE expires_at <= ?",
                (sqlite_timestamp(now_utc()),),
            )
            return next(iter(expired))[0], next(iter(await lite.execute_fetchall(ended)))[0]
        finally:
            await lite.close()
    if db.backend == "mariadb":
        maria = await connect_mariadb(db.target, autocommit=True)
        try:
            async with maria.cursor() as cursor:
                await cursor.execute(
                    "SELECT count(*) FROM sessions WHERE expires_at <= %s", (now_utc(),)
                )
                (expired,) = await cursor.fetchone()
                await cursor.execute(ended)
                (ended_count,) = await cursor.fetchone()
            return expired, ended_count
        finally:
            await maria.ensure_closed()
    pg = await connect_postgres(db.target)
    try:
        return (
            await pg.fetchval("SELECT count(*) FROM sessions WHERE expires_at <= now()"),
            await pg.fetchval(ended),
        )
    finally:
        await pg.close()


def _days(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g} days" if seconds else "0"


def _sweep_rows(
    server: Server,
    raw_label: str,
    count: int,
    batch_size: int,
    retention: float,
    conv: Sweeps,
    raw: Sweeps,
) -> list[Row]:
    """The rate and per-batch rows of one retention setting (and, with retention, the
    per-batch row of pass 2 a retention later)."""
    sessions = f"{fmt_count(count)} expired sessions x {TURNS} turns"
    if retention:
        setting = f"transcript_retention {_days(retention)}"
        sweep = f"expiry sweep, {setting}: {sessions} end, transcripts kept"
    else:
        setting = "transcript_retention 0"
        sweep = f"expiry sweep, {setting}: {sessions} and their transcripts"
    key = f"{server.name}.{'retained' if retention else 'retention0'}"
    rows = [
        Row(
            key=f"expiry.rate.{key}",
            path=sweep,
            backend=server.label,
            convostore=Figure("convostore", conv.rate, None, 1, "rate"),
            raw=Figure(raw_label, raw.rate, None, 1, "rate"),
            ratio=conv.rate / raw.rate,
            ratio_of="convostore / raw sessions/s",
            target=f"≥ {RATE_TARGET:,.0f} sessions/s",
            met=conv.rate >= RATE_TARGET,
            note=f"both passes; pass 2 deleted {fmt_count(conv.transcripts.rows)} transcripts",
        ),
        _batch_row(
            f"expiry.batch.{key}",
            f"{sweep}: each batch transaction ({fmt_count(batch_size)} rows), both passes",
            server.label,
            raw_label,
            (conv.sessions, conv.transcripts),
            (raw.sessions, raw.transcripts),
        ),
    ]
    if conv.later is not None and raw.later is not None:
        rate = conv.later.rows / sum(conv.later.seconds)
        raw_rate = raw.later.rows / sum(raw.later.seconds)
        rows.append(
            _batch_row(
                f"expiry.transcripts_batch.{key}",
                f"transcript sweep {_days(retention)} later ({setting}): "
                f"{fmt_count(count)} conversations x {TURNS} turns past retention: each batch "
                f"transaction ({fmt_count(batch_size)} conversations)",
                server.label,
                raw_label,
                (conv.later,),
                (raw.later,),
                f"; {rate:,.0f} transcripts/s, raw {raw_rate:,.0f}/s",
            )
        )
    return rows


def _batch_row(
    key: str,
    path: str,
    backend: str,
    raw_label: str,
    conv: tuple[Pass, ...],
    raw: tuple[Pass, ...],
    extra: str = "",
) -> Row:
    """A row of batch transactions: median (p95) per batch, judged on the longest."""
    conv_s = [s for part in conv for s in part.seconds]
    raw_s = [s for part in raw for s in part.seconds]
    longest, raw_longest = max(conv_s), max(raw_s)
    note = (
        f"{len(conv_s)} batches; longest convostore {longest * 1e3:.1f} ms, "
        f"raw {raw_longest * 1e3:.1f} ms"
    )
    if len(conv) == 2:
        medians = ", ".join(
            f"pass {n} median {Stats.of(c.seconds).median * 1e3:.1f} ms "
            f"(raw {Stats.of(r.seconds).median * 1e3:.1f} ms)"
            for n, (c, r) in enumerate(zip(conv, raw, strict=True), start=1)
        )
        note += f"; {medians}"
    return Row(
        key=key,
        path=path,
        backend=backend,
        convostore=figure("convostore", Stats.of(conv_s)),
        raw=figure(raw_label, Stats.of(raw_s)),
        ratio=longest / raw_longest,
        ratio_of="convostore / raw longest batch",
        target=f"longest ≤ {BATCH_TARGET * 1e3:.0f} ms",
        met=longest <= BATCH_TARGET,
        note=note + extra,
    )


def _p95_row(
    server: Server, during: dict[str, dict[str, list[float]]], without: list[float]
) -> Row:
    conv, raw = (
        Stats.of([s for part in during[who].values() for s in part])
        for who in ("convostore", "raw")
    )
    quiet = Stats.of(without)
    parts = "; ".join(
        f"{part}: convostore {Stats.of(conv_s).p95 * 1e3:.2f} ms, "
        f"raw {Stats.of(during['raw'][part]).p95 * 1e3:.2f} ms"
        for part, conv_s in during["convostore"].items()
    )
    return Row(
        key=f"expiry.add_turn_p95.{server.name}",
        path="add_turn p95 during the sweeps (every pass above) vs without",
        backend=server.label,
        convostore=figure("during convostore's sweeps", conv),
        raw=figure("during the raw sweeps", raw),
        others=[figure("without a sweep", quiet)],
        ratio=conv.p95 / quiet.p95,
        ratio_of="p95 during / p95 without",
        target=f"≤ {P95_FACTOR:g}×",
        met=conv.p95 / quiet.p95 <= P95_FACTOR,
        note=f"during the raw sweeps / without {raw.p95 / quiet.p95:.2f}×; p95 by part: {parts}",
    )


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Keep Python's garbage collector out of the timed sweep: a full pass over this process's
    heap (large after the earlier scenarios) takes about 0.1 s, and it would be charged to
    whichever batch it interrupted, though the database transaction had long finished."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
