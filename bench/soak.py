"""``python -m bench soak``: worker processes append exchanges to a private PostgreSQL server
while it drops their connections, restarts and crashes; afterwards every acknowledged exchange
must be stored exactly once, its two turns adjacent, and no call may have failed.

The fault tests prove the same in one process for a few seconds; this runs several processes
(each with its own repository, pool and listener) on shared sessions for as long as asked, so
rarer interleavings of a fault with a call get their chance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Literal, cast

import asyncpg
from servers import PrivatePostgres

from convostore import SessionRepository, StoreConfig
from convostore.migrate import upgrade_url

__all__ = ["Audit", "audit", "main"]

RestartMode = Literal["restart", "kill", "both"]
Exchange = tuple[str, str, str]
"""(session id, question, answer)."""

_OWN_SESSIONS = 6
"""Sessions each worker's tasks share among themselves."""
_SHARED_SESSIONS = 3
"""Sessions every worker writes to."""
_GET_SHARE = 0.25
"""Share of iterations that also read the session back."""
_CRASH_DOWNTIME = 0.5
_STARTUP_TIMEOUT = 60.0
_JOIN_GRACE = 60.0
"""Seconds past the deadline a worker may take to finish its last calls and stop (a call can
retry for ``reconnect_timeout``)."""


@dataclass(frozen=True)
class SoakOptions:
    seconds: float
    workers: int
    tasks: int
    seed: int
    restarts: RestartMode


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process needs; pickled to it by the spawn start method."""

    index: int
    url: str
    seconds: float
    tasks: int
    seed: int
    out: Path


@dataclass
class Faults:
    terminations: int = 0
    terminated_connections: int = 0
    restarts: int = 0
    crashes: int = 0


@dataclass
class Tally:
    """What one worker did: its acknowledged exchanges, its calls and how each failure read."""

    acknowledged: list[Exchange] = field(default_factory=list)
    calls: int = 0
    gets: int = 0
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    logged_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Audit:
    """The stored turns measured against the acknowledged exchanges."""

    stored: int
    duplicates: int
    """Extra copies of exchanges stored more than once."""
    lost: int
    """Acknowledged exchanges not stored."""
    broken: int
    """Sessions whose turns do not run 1..n as user/assistant pairs of one exchange each."""
    unacknowledged: int
    """Exchanges stored once whose call failed (allowed: it failed after the commit)."""


def parse(argv: Sequence[str]) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak",
        description="Worker processes append to a private PostgreSQL server that drops their "
        "connections, restarts and crashes; then every acknowledged exchange must be stored "
        "exactly once. Exits 1 on any failed call, duplicate, loss or broken session.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per process (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="fault timing and choices")
    parser.add_argument(
        "--restarts",
        choices=("restart", "kill", "both"),
        default="both",
        help="restart: one clean restart mid-run; kill: one crash, started again 0.5 s later; "
        "both (default): the restart at 1/3 of the run and the crash at 2/3",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.workers < 1 or args.tasks < 1:
        parser.error("--seconds must be positive, --workers and --tasks at least 1")
    return SoakOptions(
        args.seconds, args.workers, args.tasks, args.seed, cast(RestartMode, args.restarts)
    )


class _LogTally(logging.Handler):
    """Counts what convostore and SQLAlchemy log instead of printing thousands of records: how
    often a call met a lost connection and retried, and each distinct error record (these never
    fail a call, but the summary shows them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0
        self.errors: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            text = f"{record.name}: {record.getMessage().partition(chr(10))[0]}"
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {_describe(record.exc_info[1])}"
            self.errors[re.sub(r"0x[0-9a-f]+", "0x...", text)] += 1
        elif record.name == "convostore" and "retrying" in record.getMessage():
            self.retries += 1


def _describe(exc: BaseException) -> str:
    """The exception's type and first line, and its cause's (a StoreError chains the driver's)."""
    text = f"{type(exc).__name__}: {str(exc).partition(chr(10))[0]}"
    if exc.__cause__ is not None:
        cause = exc.__cause__
        text += f" (from {type(cause).__module__}.{type(cause).__name__}: "
        text += f"{str(cause).partition(chr(10))[0]})"
    return text


async def _task(
    repo: SessionRepository,
    plan: WorkerPlan,
    task: int,
    sessions: Sequence[str],
    deadline: float,
    tally: Tally,
) -> None:
    rng = random.Random(f"{plan.seed}-{plan.index}-{task}")
    n = 0
    while time.time() < deadline:
        sid = rng.choice(sessions)
        n += 1
        tag = f"{plan.index}-{task}-{n}"
        tally.calls += 1
        try:
            await repo.add_turn(sid, f"q {tag}", f"a {tag}")
        except Exception as exc:
            tally.failures.append(f"add_turn: {_describe(exc)}")
            continue
        tally.acknowledged.append((sid, f"q {tag}", f"a {tag}"))
        if rng.random() < _GET_SHARE:
            tally.calls += 1
            tally.gets += 1
            try:
                await repo.get(sid)
            except Exception as exc:
                tally.failures.append(f"get: {_describe(exc)}")


async def _work(plan: WorkerPlan, barrier: Barrier) -> Tally:
    logs = _LogTally()
    logging.getLogger().addHandler(logs)
    sessions = [f"w{plan.index}-s{k}" for k in range(_OWN_SESSIONS)]
    sessions += [f"shared-{k}" for k in range(_SHARED_SESSIONS)]
    config = StoreConfig(database_url=plan.url, cleanup_interval=0, reconnect_timeout=30)
    tally = Tally()
    async with SessionRepository(config) as repo:
        await asyncio.to_thread(barrier.wait)
        deadline = time.time() + plan.seconds
        await asyncio.gather(
            *(_task(repo, plan, task, sessions, deadline, tally) for task in range(plan.tasks))
        )
    tally.retries = logs.retries
    tally.logged_errors = list(logs.errors.elements())
    return tally


def run_worker(plan: WorkerPlan, barrier: Barrier) -> None:
    """A worker process: start a repository, wait for the others, append until the deadline,
    stop the repository, and write the tally to ``plan.out`` as JSON."""
    tally = asyncio.run(_work(plan, barrier))
    plan.out.write_text(
        json.dumps(
            {
                "acknowledged": tally.acknowledged,
                "calls": tally.calls,
                "gets": tally.gets,
                "retries": tally.retries,
                "failures": tally.failures,
                "logged_errors": tally.logged_errors,
            }
        )
    )


def _schedule(options: SoakOptions) -> list[tuple[float, str]]:
    """When each fault strikes, in seconds from the start: terminations every 1 to 4 s (seeded),
    and the restart and/or crash at fixed fractions of the run."""
    rng = random.Random(options.seed)
    events: list[tuple[float, str]] = []
    at = rng.uniform(1.0, 4.0)
    while at < options.seconds - 0.5:
        events.append((at, "terminate"))
        at += rng.uniform(1.0, 4.0)
    if options.restarts == "both":
        events += [(options.seconds / 3, "restart"), (2 * options.seconds / 3, "kill")]
    else:
        events.append((options.seconds / 2, options.restarts))
    return sorted(events)


async def _inject(server: PrivatePostgres, options: SoakOptions, start: float) -> Faults:
    """Strike each scheduled fault in turn (one at a time, so none meets a server that is down)."""
    faults = Faults()
    for at, kind in _schedule(options):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        if kind == "terminate":
            faults.terminated_connections += await server.terminate_backends()
            faults.terminations += 1
        elif kind == "restart":
            await asyncio.to_thread(server.restart)
            faults.restarts += 1
        else:
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(_CRASH_DOWNTIME)
            await asyncio.to_thread(server.start)
            faults.crashes += 1
    return faults


async def _stored_turns(dsn: str) -> list[tuple[str, int, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(
            "SELECT session_id, seq, role, content FROM turns ORDER BY session_id, seq"
        )
    finally:
        await conn.close()
    return [(r["session_id"], r["seq"], r["role"], r["content"]) for r in records]


def audit(turns: Iterable[tuple[str, int, str, str]], acknowledged: Iterable[Exchange]) -> Audit:
    """Measure stored turns ``(session id, seq, role, content)``, ordered by session and seq,
    against the acknowledged exchanges. A session's turns must run 1..n, each user turn
    ``q <tag>`` followed at once by its assistant turn ``a <tag>``."""
    by_session: dict[str, list[tuple[int, str, str]]] = {}
    for sid, seq, role, content in turns:
        by_session.setdefault(sid, []).append((seq, role, content))
    stored: Counter[Exchange] = Counter()
    broken = 0
    for sid, rows in by_session.items():
        ok = [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1)) and len(rows) % 2 == 0
        for (_, user_role, question), (_, answer_role, answer) in zip(
            rows[::2], rows[1::2], strict=False
        ):
            ok = ok and (user_role, answer_role) == ("user", "assistant")
            ok = ok and question.startswith("q ") and answer == "a " + question[2:]
            stored[(sid, question, answer)] += 1
        broken += not ok
    expected = set(acknowledged)
    return Audit(
        stored=sum(stored.values()),
        duplicates=sum(count - 1 for count in stored.values()),
        lost=len(expected - stored.keys()),
        broken=broken,
        unacknowledged=len(stored.keys() - expected),
    )


def _spawn_workers(
    options: SoakOptions, url: str, folder: Path
) -> tuple[Sequence[BaseProcess], list[Path], Barrier]:
    """Start the worker processes ("spawn": each is a fresh interpreter, as real workers are,
    with no event loop or pool inherited from this one)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(options.workers + 1, timeout=_STARTUP_TIMEOUT)
    outs = [folder / f"worker-{index}.json" for index in range(options.workers)]
    processes = [
        context.Process(
            target=run_worker,
            args=(
                WorkerPlan(index, url, options.seconds, options.tasks, options.seed, out),
                barrier,
            ),
            name=f"soak-worker-{index}",
        )
        for index, out in enumerate(outs)
    ]
    for process in processes:
        process.start()
    return processes, outs, barrier


async def _soak(options: SoakOptions, server: PrivatePostgres, folder: Path) -> int:
    with server:
        await upgrade_url(server.url)
        processes, outs, barrier = _spawn_workers(options, server.url, folder)
        try:
            await asyncio.to_thread(barrier.wait)
            faults = await _inject(server, options, time.monotonic())
            for process in processes:
                await asyncio.to_thread(process.join, options.seconds + _JOIN_GRACE)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        turns = await _stored_turns(server.dsn)
    tallies = [json.loads(out.read_text()) for out in outs if out.is_file()]
    crashed = [p.name for p in processes if p.exitcode != 0]
    acknowledged = [tuple(exchange) for tally in tallies for exchange in tally["acknowledged"]]
    verdict = audit(turns, cast(list[Exchange], acknowledged))
    failures: Counter[str] = Counter(f for tally in tallies for f in tally["failures"])
    calls = sum(tally["calls"] for tally in tallies)
    gets = sum(tally["gets"] for tally in tallies)

    print(
        f"soak: {options.seconds:g} s, {options.workers} worker processes x {options.tasks} "
        f"tasks, private PostgreSQL, seed {options.seed}"
    )
    print(
        f"  calls {calls} (add_turn {calls - gets}, get {gets}), {len(acknowledged)} exchanges "
        f"acknowledged, {sum(tally['retries'] for tally in tallies)} retried after a lost "
        "connection"
    )
    print(
        f"  faults: {faults.terminations} terminations ({faults.terminated_connections} "
        f"connections), {faults.restarts} restarts, {faults.crashes} crashes"
    )
    print(
        f"  failed calls {sum(failures.values())}, duplicates {verdict.duplicates}, "
        f"lost {verdict.lost}, broken sessions {verdict.broken}, "
        f"stored but unacknowledged {verdict.unacknowledged}"
    )
    for text, count in failures.most_common(5):
        print(f"  failed {count}x: {text}")
    logged: Counter[str] = Counter(e for tally in tallies for e in tally["logged_errors"])
    for text, count in logged.most_common(5):
        print(f"  logged {count}x (no call failed by it): {text}")
    if crashed:
        print(f"  worker processes that did not finish: {', '.join(crashed)}")
    bad = sum(failures.values()) + verdict.duplicates + verdict.lost + verdict.broken
    print("  FAILED" if bad or crashed else "  OK")
    return 1 if bad or crashed else 0


def main(argv: Sequence[str]) -> int:
    options = parse(argv)
    try:
        server = PrivatePostgres()
    except FileNotFoundError as missing:
        print(f"soak: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="convostore-soak-") as folder:
        return asyncio.run(_soak(options, server, Path(folder)))
