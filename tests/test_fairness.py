"""Many callers at once: served in the order they came, none starved by the pool.

At 50 concurrent callers on the default pool (5 + 10 connections) the pool's own queue let a
caller that arrived later take a freed connection from one that had waited, so some calls
waited out the pool's 30 s timeout while thousands were served. Operations now queue at the
repository's ``Gate``, first come first served.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from convostore import SessionRepository
from convostore._core.gate import Gate, Turns, holding, stepping_aside

MakeRepo = Callable[..., Awaitable[SessionRepository]]

SESSIONS = 1000
SECONDS = 5.0
MAX_WAIT = 1.0
"""Issue 15's bound: no call of a burst waits longer than this (the pool timeout is 30 s)."""


async def _holders(gate: Gate, order: list[int], names: range) -> None:
    async def hold(name: int) -> None:
        async with gate:
            order.append(name)
            await asyncio.sleep(0)

    await asyncio.gather(*(hold(name) for name in names))


async def test_gate_lets_waiters_in_in_arrival_order() -> None:
    gate = Gate(2)
    order: list[int] = []
    await _holders(gate, order, range(50))
    assert order == list(range(50))


async def test_gate_is_not_overtaken_by_a_late_caller() -> None:
    """A permit given back goes to the longest waiter, not to whoever asks next."""
    gate = Gate(1)
    await gate.acquire()
    first = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()
    late = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert first.done()
    assert not late.done()
    gate.release()
    await late
    assert gate.waiting == 0


async def test_gate_wait_gives_up_in_time_and_leaves_its_place() -> None:
    """A caller waits for a permit no longer than it is told (the operations ahead may be
    held by a server that stopped answering), and its place goes with it."""
    gate = Gate(1)
    await gate.acquire()
    with pytest.raises(asyncio.TimeoutError):
        await gate.acquire(timeout=0.05)
    assert gate.waiting == 0
    gate.release()
    await asyncio.wait_for(gate.acquire(timeout=0.05), 1)


@pytest.mark.parametrize("make", [lambda: Gate(1), Turns], ids=["Gate", "Turns"])
async def test_a_cancelled_waiter_leaves_its_place_and_passes_on_a_turn_handed_to_it(
    make: Callable[[], Gate | Turns],
) -> None:
    lock = make()
    await lock.acquire()
    leaving = asyncio.ensure_future(lock.acquire())
    staying = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    lock.release()
    await asyncio.wait_for(staying, 1)
    # A waiter cancelled in the same moment it was handed the turn hands it on.
    handed = asyncio.ensure_future(lock.acquire())
    after = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    lock.release()
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    await asyncio.wait_for(after, 1)
    lock.release()
    await asyncio.wait_for(lock.acquire(), 1)


async def test_a_holder_stepping_aside_lets_the_next_in_and_comes_back_first() -> None:
    """While a holder waits for work others do (its write in a group), its permit serves the
    next in line; it then gets one back ahead of those who came after it."""
    gate = Gate(1)
    order: list[str] = []
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def grouped() -> str:
        order.append("a waits")
        result = await stepping_aside(done)
        order.append("a back")
        return result

    async def other(name: str) -> None:
        order.append(name)
        if name == "b":
            done.set_result("stored")
        await asyncio.sleep(0)

    a = asyncio.ensure_future(holding(gate, None, grouped))
    await asyncio.sleep(0)
    b = asyncio.ensure_future(holding(gate, None, partial(other, "b")))
    c = asyncio.ensure_future(holding(gate, None, partial(other, "c")))
    assert await a == "stored"
    await asyncio.gather(b, c)
    assert order == ["a waits", "b", "a back", "c"]
    assert gate.waiting == 0
    await asyncio.wait_for(gate.acquire(), 1)  # every permit came back


async def test_turns_go_in_asking_order_across_threads_and_the_loop() -> None:
    """Worker threads and event-loop tasks ask in turn; each gets the turn in that order,
    one at a time."""
    turns = Turns()
    order: list[str] = []
    holding = threading.Lock()
    await turns.acquire()  # hold the turn while the others line up
    loop = asyncio.get_running_loop()

    def in_thread(name: str) -> None:
        turns.hold_in_thread()
        try:
            assert holding.acquire(blocking=False), "two holders at once"
            order.append(name)
            holding.release()
        finally:
            turns.release()

    async def in_loop(name: str) -> None:
        async with turns.turn():
            assert holding.acquire(blocking=False), "two holders at once"
            order.append(name)
            await asyncio.sleep(0)
            holding.release()

    asked: list[str] = []
    pending: list[asyncio.Future[None]] = []
    for n in range(12):
        name = f"{'thread' if n % 3 else 'loop'}-{n}"
        if n % 3:
            pending.append(_in_a_thread(loop, in_thread, name))
        else:
            pending.append(asyncio.ensure_future(in_loop(name)))
        await _until(partial(_asked, turns, n + 2))  # it has its ticket
        asked.append(name)
    turns.release()
    await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert order == asked


def _asked(turns: Turns, count: int) -> bool:
    return turns.asked >= count


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out waiting")


def _in_a_thread(
    loop: asyncio.AbstractEventLoop, work: Callable[[str], None], name: str
) -> asyncio.Future[None]:
    """Run ``work(name)`` in a thread of its own; the future ends with it."""
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            work(name)
        except BaseException as exc:
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, None)

    threading.Thread(target=run, daemon=True).start()
    return done


@pytest.mark.parametrize("callers", [50, 200])
async def test_no_caller_is_starved_under_a_burst(make_repo: MakeRepo, callers: int) -> None:
    """``callers`` coroutines append to 1,000 live sessions for a few seconds with the
    default settings: no call fails, none waits more than a second."""
    repo = await make_repo(cleanup_interval=300)
    sids = [f"burst-{n:04d}" for n in range(SESSIONS)]
    for start in range(0, SESSIONS, 50):
        await asyncio.gather(*(repo.get_or_create(sid) for sid in sids[start : start + 50]))
    # The bound is issue 15's, in seconds, so it also depends on how fast this machine runs
    # now: a burst that misses it (a neighbour took the CPU) is run once more, and the test
    # fails only if both miss. On 960f401 both missed by seconds (starved callers).
    slowest: list[str] = []
    for attempt in range(2):
        waits = await _burst(repo, sids, callers, random.Random(callers + attempt))
        if max(waits) <= MAX_WAIT:
            return
        slowest.append(
            f"slowest of {len(waits)} calls took {max(waits):.2f} s; "
            f"{sum(w > MAX_WAIT for w in waits)} over {MAX_WAIT} s"
        )
    pytest.fail("; then ".join(slowest))


async def _burst(
    repo: SessionRepository, sids: list[str], callers: int, rng: random.Random
) -> list[float]:
    """Every call's wait while ``callers`` coroutines append for ``SECONDS``; none fails."""
    waits: list[float] = []
    failures: list[BaseException] = []
    end = time.monotonic() + SECONDS

    async def caller() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                await repo.add_turn(rng.choice(sids), "Welke archieven?", "Twaalf.")
            except Exception as exc:
                failures.append(exc)
            waits.append(time.monotonic() - started)

    await asyncio.gather(*(caller() for _ in range(callers)))
    assert not failures, failures[:3]
    assert len(waits) > callers
    return waits
