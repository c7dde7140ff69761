"""A stateful property test: two workers (two repositories, each with its own engine, cache and
change watcher) on one database, driven by random operations and checked against a plain
in-memory model after every step.

The operations: ``add_turn`` (with and without slots), ``update`` (append a turn and change a
current slot on a state read through that worker), ``rewind`` (to an exchange's end, or one
that would split an exchange, which must be refused), ``fork`` (the copy is read through both
workers at once), ``get``, ``delete``, moving the fake clock
(by steps that make some sessions expire and not others), ``sweep_expired``, reading every
session through one worker (its cache holds only two, so the LRU evicts) and restarting a
worker (stopping it and starting a new repository in its place). Three session ids, so the
operations collide.

After each write or delete the test waits for the coherence bound (polling, at most
``WAIT`` seconds) until BOTH workers' ``get`` agrees with the model: the turns' roles and
contents in order, ``current_slots``, and None for a deleted or expired session. A plain
``get`` is checked at once (the previous step already waited for the bound).

Expiry is modelled exactly by moving the clock only in steps of ``STEP`` seconds, more than a
tenth of the TTL: every read or write of a live session then stores a fresh expiry, so a
session expires ``TTL`` seconds after its last access. The workers write a read's refresh
before returning (``refresh_delay=0``): with the default write-behind a sweep in the other
worker may take a session up to the delay early, which a clock moved by hand would turn into
whole steps (``test_refresh_behind.py`` covers that mode).

The machine runs twice: without a cap, and with ``max_turns_per_session`` (``CAP``), which the
model applies as the cap's rule says: after each append, the oldest whole exchanges go until
at most ``CAP`` turns are left (the newest exchange stays whole).

Env ``CONVOSTORE_TEST_SM_COHERENCE`` picks another ``cache_coherence`` mode (default
``bounded``); with ``local`` the test fails, as it should: a worker keeps serving its cached
copy of a session the other worker wrote or deleted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from convostore import (
    ConversationState,
    ConversationTurn,
    InvalidTurn,
    SessionRepository,
    StoreConfig,
)

T = TypeVar("T")

TTL = 100.0
STEP = 40.0
"""The clock moves by 1, 2 or 3 steps: 2 keep a session alive, 3 expire it (3 * 40 > 100)."""
SIDS = ("sm-a", "sm-b", "sm-c")
SLOT_KEYS = ("stad", "jaar")
SLOT_VALUES = ("Utrecht", "Enschede", "1900")
WAIT = 0.2
"""How long a write may take to reach the other worker (the promise is 0.1 s at most)."""
Coherence = Literal["bounded", "strict", "local"]
MODE = cast(Coherence, os.environ.get("CONVOSTORE_TEST_SM_COHERENCE", "bounded"))
MAX_SESSIONS = 2
"""Smaller than ``len(SIDS)``, so the caches evict."""
CAP = 5
"""The capped machine's ``max_turns_per_session`` (odd: ``update``'s single user turns make
exchanges of one turn and of two)."""

SETTINGS = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Turns = list[tuple[str, str]]


class MovableClock(Protocol):
    """The ``clock`` fixture (``conftest.FakeClock``)."""

    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


@dataclass
class Session:
    """The model of one live (or expired, not yet noticed) session."""

    turns: Turns = field(default_factory=list)
    turn_slots: list[dict[str, str]] = field(default_factory=list)
    """Each turn's slots, beside ``turns``."""
    slots: dict[str, str] = field(default_factory=dict)
    first: int = 1
    """The number of the oldest turn left (the cap takes the oldest out)."""
    deadline: float = 0.0
    """The session is alive while ``clock() < deadline``."""

    def append(self, role: str, content: str, slots: dict[str, str]) -> None:
        self.turns.append((role, content))
        self.turn_slots.append(slots)
        if role == "user":
            self.slots.update(slots)

    def cap_to(self, cap: int | None) -> None:
        """After a write: the oldest whole exchanges go until at most ``cap`` turns are left
        (the newest exchange stays whole)."""
        if cap is None or len(self.turns) <= cap:
            return
        starts = [index for index, (kind, _) in enumerate(self.turns) if kind == "user"]
        cut = len(self.turns) - cap
        begins = next((index for index in starts if index >= cut), starts[-1] if starts else 0)
        del self.turns[:begins], self.turn_slots[:begins]
        self.first += begins

    def exchange_ends(self) -> list[int]:
        """The turn numbers a rewind may end at: just before a user turn, or the newest."""
        before_user = [
            self.first - 1 + index for index, (kind, _) in enumerate(self.turns) if kind == "user"
        ]
        return [*before_user, self.first - 1 + len(self.turns)]

    def splits(self) -> list[int]:
        """The turn numbers a rewind may not end at: just before an assistant turn."""
        return [
            self.first - 1 + index
            for index, (kind, _) in enumerate(self.turns)
            if kind == "assistant"
        ]

    def rewind(self, to: int) -> None:
        kept = to - self.first + 1
        del self.turns[kept:], self.turn_slots[kept:]
        self.slots = {}
        for slots in self.turn_slots:
            self.slots.update(slots)


def observed(state: ConversationState | None) -> tuple[Turns, dict[str, str]] | None:
    if state is None:
        return None
    return [(turn.role, turn.content) for turn in state.turns], dict(state.current_slots)


class StoreMachine(RuleBasedStateMachine):
    """Two workers on one database against a dict of session id -> ``Session``."""

    def __init__(
        self, url: str, clock: MovableClock, mode: Coherence, cap: int | None = None
    ) -> None:
        super().__init__()
        self.cap = cap
        self.url = url
        self.clock = clock
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.model: dict[str, Session] = {}
        self.counter = itertools.count()
        self.workers: list[SessionRepository] = []
        self.admin: AsyncEngine | None = None
        try:
            self.run(self._setup())
        except BaseException:
            self.teardown()
            raise

    # -- plumbing -----------------------------------------------------------------------------

    def run(self, coroutine: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _setup(self) -> None:
        """Empty the database (every example starts from nothing), then start two workers."""
        self.admin = create_async_engine(self.url)
        async with self.admin.begin() as conn:
            for table in ("turn_slots", "turns", "sessions", "conversations"):
                await conn.execute(text(f"DELETE FROM {table}"))
        for _ in range(2):
            self.workers.append(await self._start_worker())

    async def _start_worker(self) -> SessionRepository:
        config = StoreConfig(
            database_url=self.url,
            cleanup_interval=0,
            session_ttl=TTL,
            max_sessions=MAX_SESSIONS,
            cache_coherence=self.mode,
            refresh_delay=0,  # the model's exact expiry needs each read's refresh stored at once
            max_turns_per_session=self.cap,
        )
        repository = SessionRepository(config, clock=self.clock)
        await repository.start()
        return repository

    def teardown(self) -> None:
        async def close() -> None:
            for worker in self.workers:
                await worker.stop()
            if self.admin is not None:
                await self.admin.dispose()

        try:
            self.run(close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def live(self, sid: str) -> Session | None:
        """The model's session, dropping it if it has expired."""
        session = self.model.get(sid)
        if session is not None and self.clock() >= session.deadline:
            del self.model[sid]
            return None
        return session

    def touched(self, session: Session) -> None:
        session.deadline = self.clock() + TTL

    def expected(self, sid: str) -> tuple[Turns, dict[str, str]] | None:
        session = self.live(sid)
        return None if session is None else (list(session.turns), dict(session.slots))

    async def _read(self, worker: int, sid: str) -> ConversationState | None:
        """A get through one worker; a live session read is an access (it slides the expiry)."""
        state = await self.workers[worker].get(sid)
        session = self.live(sid)
        if state is not None and session is not None:
            self.touched(session)
        return state

    async def _disagreement(self, sids: tuple[str, ...]) -> str | None:
        for sid in sids:
            for worker in range(len(self.workers)):
                got = observed(await self._read(worker, sid))
                want = self.expected(sid)
                if got != want:
                    return f"worker {worker} get({sid!r}) = {got!r}, the model has {want!r}"
        return None

    async def _agree(self, *sids: str) -> None:
        """Wait (at most ``WAIT``) until both workers' ``get`` agrees with the model."""
        start = time.monotonic()
        while True:
            problem = await self._disagreement(sids or SIDS)
            if problem is None:
                return
            if time.monotonic() - start > WAIT:
                raise AssertionError(f"after {WAIT} s (mode {self.mode!r}): {problem}")
            await asyncio.sleep(0.005)

    def content(self, kind: str) -> str:
        return f"{kind} {next(self.counter)}"

    # -- rules --------------------------------------------------------------------------------

    @rule(
        worker=st.integers(0, 1),
        sid=st.sampled_from(SIDS),
        slot=st.none() | st.tuples(st.sampled_from(SLOT_KEYS), st.sampled_from(SLOT_VALUES)),
    )
    def add_turn(self, worker: int, sid: str, slot: tuple[str, str] | None) -> None:
        question, answer = self.content("vraag"), self.content("antwoord")
        slots = dict([slot]) if slot is not None else None

        async def step() -> None:
            state = await self.workers[worker].add_turn(sid, question, answer, slots=slots)
            session = self.live(sid)
            if session is None:
                session = self.model[sid] = Session()
            session.append("user", question, slots or {})
            session.append("assistant", answer, {})
            session.cap_to(self.cap)
            self.touched(session)
            assert observed(state) == self.expected(sid), "add_turn returned another state"
            await self._agree(sid)

        self.run(step())

    @rule(
        worker=st.integers(0, 1),
        sid=st.sampled_from(SIDS),
        key=st.sampled_from(SLOT_KEYS),
        value=st.sampled_from(SLOT_VALUES),
    )
    def update(self, worker: int, sid: str, key: str, value: str) -> None:
        """Read through one worker, append a turn and change a current slot, then update."""
        content = self.content("bijgewerkt")

        async def step() -> None:
            state = await self._read(worker, sid)
            assert observed(state) == self.expected(sid), "update read another state"
            if state is None:
                state = ConversationState()
            state.turns.append(ConversationTurn(role="user", content=content))
            state.current_slots[key] = value
            await self.workers[worker].update(sid, state)
            session = self.live(sid)
            if session is None:
                session = self.model[sid] = Session()
            session.append("user", content, {})
            session.cap_to(self.cap)
            session.slots[key] = value
            self.touched(session)
            await self._agree(sid)

        self.run(step())

    @rule(
        worker=st.integers(0, 1),
        sid=st.sampled_from(SIDS),
        pick=st.integers(0, 20),
        split=st.booleans(),
    )
    def rewind(self, worker: int, sid: str, pick: int, split: bool) -> None:
        """Rewind to an exchange's end (or refuse one that would split an exchange)."""

        async def step() -> None:
            repo = self.workers[worker]
            session = self.live(sid)
            if session is None:
                assert await repo.rewind(sid, 0) is None
                return
            self.touched(session)  # the rewind reads the session first
            if split and session.splits():
                with pytest.raises(InvalidTurn):
                    await repo.rewind(sid, session.splits()[pick % len(session.splits())])
                return
            ends = session.exchange_ends()
            to = ends[pick % len(ends)]
            state = await repo.rewind(sid, to)
            if to != ends[-1]:
                session.rewind(to)
            assert observed(state) == self.expected(sid), "rewind returned another state"
            await self._agree(sid)

        self.run(step())

    @rule(worker=st.integers(0, 1), sid=st.sampled_from(SIDS))
    def fork(self, worker: int, sid: str) -> None:
        """Fork the whole history: both workers read the copy as the model has the original;
        the copy then goes, so the model stays three sessions."""

        async def step() -> None:
            session = self.live(sid)
            new_sid = await self.workers[worker].fork(sid)
            if session is None:
                assert new_sid is None
                return
            self.touched(session)
            assert new_sid is not None
            for reader in self.workers:
                assert observed(await reader.get(new_sid)) == self.expected(sid)
            assert await self.workers[worker].delete(new_sid)

        self.run(step())

    @rule(worker=st.integers(0, 1), sid=st.sampled_from(SIDS))
    def get(self, worker: int, sid: str) -> None:
        async def step() -> None:
            got = observed(await self._read(worker, sid))
            assert got == self.expected(sid), f"worker {worker} get({sid!r}) = {got!r}"

        self.run(step())

    @rule(worker=st.integers(0, 1), sid=st.sampled_from(SIDS))
    def delete(self, worker: int, sid: str) -> None:
        async def step() -> None:
            existed = self.live(sid) is not None
            assert await self.workers[worker].delete(sid) == existed
            self.model.pop(sid, None)
            await self._agree(sid)

        self.run(step())

    @rule(steps=st.integers(1, 3))
    def advance_clock(self, steps: int) -> None:
        """Move time without reading anything (a read would slide the expiry)."""
        self.clock.advance(steps * STEP)

    @rule(worker=st.integers(0, 1), steps=st.integers(0, 3))
    def sweep(self, worker: int, steps: int) -> None:
        """Move the clock (possibly past the TTL of some sessions), then sweep through one
        worker."""
        self.clock.advance(steps * STEP)

        async def step() -> None:
            expired = [sid for sid in SIDS if sid in self.model and self.live(sid) is None]
            swept = await self.workers[worker].sweep_expired()
            # A read may have removed an expired session already; live ones are never swept.
            assert swept <= len(expired), f"swept {swept}, but only {expired} had expired"
            await self._agree()

        self.run(step())

    @rule(worker=st.integers(0, 1))
    def read_all(self, worker: int) -> None:
        """Read every session through one worker: its cache holds two, so it evicts."""

        async def step() -> None:
            for sid in SIDS:
                got = observed(await self._read(worker, sid))
                assert got == self.expected(sid), f"worker {worker} get({sid!r}) = {got!r}"

        self.run(step())

    @rule(worker=st.integers(0, 1))
    def restart(self, worker: int) -> None:
        async def step() -> None:
            old = self.workers[worker]
            await old.stop()
            self.workers[worker] = await self._start_worker()
            await self._agree()

        self.run(step())


@pytest.mark.parametrize("cap", [None, CAP], ids=["uncapped", "capped"])
def test_two_workers_agree_with_a_model(url: str, clock: MovableClock, cap: int | None) -> None:
    class Machine(StoreMachine):
        def __init__(self) -> None:
            super().__init__(url, clock, MODE, cap)

    run_state_machine_as_test(Machine, settings=SETTINGS)
