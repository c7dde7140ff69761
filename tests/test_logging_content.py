"""No turn content in any log record: with every logger at DEBUG (the root, SQLAlchemy's,
aiosqlite's, asyncpg's, convostore's), a workload of every call that writes or reads content
logs none of it, on the fast path and on SQLAlchemy's execution, on both backends.

SQLAlchemy logs result rows at DEBUG and aiosqlite the arguments of every call it runs; the
content would be there if convostore's own engine let them through. The controls: a probe
record with a marker is caught from each of those loggers, statements are still logged (and
take SQLAlchemy's execution) while ``sqlalchemy.engine`` is at INFO or below, and the fast path
runs while it is not."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import MakeRepo
from test_config import MARKERS as CONTENT_MARKERS
from test_config import add_marked_turn

from convostore import ConversationTurn, SessionRepository

MARKERS = {**CONTENT_MARKERS, "turnslot": "mk-turnslot-q7Zx"}
"""A distinctive token per place content can be in."""

WATCHERS = ("sqlalchemy.engine",)
"""The loggers that, at INFO or below, switch convostore's statements to SQLAlchemy's
execution."""

PROBED = ("sqlalchemy.engine.Engine", "sqlalchemy.pool", "aiosqlite", "asyncpg", "convostore")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def every_logger_at_debug(*, but: tuple[str, ...] = ()) -> Iterator[list[logging.LogRecord]]:
    """Every logger at DEBUG, except those named in ``but`` (and their children) at WARNING;
    yields the records that reach the root logger. Restores the levels afterwards."""
    names = {*logging.root.manager.loggerDict, *PROBED, "sqlalchemy", "asyncio"}
    loggers = [logging.root, *(logging.getLogger(name) for name in sorted(names))]
    saved = [(logger, logger.level) for logger in loggers]
    handler = _Records()
    for logger in loggers:
        quiet = any(logger.name == n or logger.name.startswith(f"{n}.") for n in but)
        logger.setLevel(logging.WARNING if quiet else logging.DEBUG)
    logging.root.addHandler(handler)
    try:
        yield handler.records
    finally:
        logging.root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


async def _workload(repo: SessionRepository, make_repo: MakeRepo, fast_path: bool) -> None:
    """Every call that writes or reads content: add_turn, get from the cache and cold, a
    windowed get, update, list_sessions, export_user, delete."""
    m = MARKERS
    sid = "logged"
    await add_marked_turn(repo, sid, user_id="u-1")
    await repo.add_turn(sid, m["question"], m["answer"], user_id="u-1")
    assert await repo.get(sid, user_id="u-1") is not None
    cold = await make_repo(fast_path=fast_path)
    state = await cold.get(sid, user_id="u-1")
    assert state is not None
    assert state.turns[0].results == [{m["resultkey"]: m["resultvalue"]}]
    state.add_turn(ConversationTurn(role="user", content=m["turn"], slots={"x": m["turnslot"]}))
    state.current_slots["place"] = m["current"]
    await cold.update(sid, state, user_id="u-1")
    again = await (await make_repo(fast_path=fast_path)).get(sid, user_id="u-1")
    assert again is not None
    assert again.current_slots["place"] == m["current"]
    window = await (await make_repo(fast_path=fast_path)).get(sid, last_turns=2)
    assert window is not None
    assert [turn.content for turn in window.turns] == [m["answer"], m["turn"]]
    assert len(await repo.list_sessions("u-1")) == 1
    assert m["turnslot"] in str(await repo.export_user("u-1"))
    await repo.add_turn("gone", m["question"], m["answer"], slots={"x": m["slotvalue"]})
    assert await repo.delete("gone")


def _leaks(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(record) for record in records]
    return [text for text in texts if any(marker in text for marker in MARKERS.values())]


@pytest.mark.parametrize("watched", [True, False], ids=["engine-logged", "engine-quiet"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "core"])
async def test_no_log_record_holds_turn_content(
    make_repo: MakeRepo, backend: str, fast_path: bool, watched: bool
) -> None:
    """With every logger at DEBUG (``watched``; else all but ``sqlalchemy.engine``, so that
    the fast path runs) the workload logs no content: only the probes are found."""
    with every_logger_at_debug(but=() if watched else WATCHERS) as records:
        for name in PROBED:
            logging.getLogger(name).warning("probe %s", MARKERS["probe"])
        repo = await make_repo(fast_path=fast_path)
        await _workload(repo, make_repo, fast_path)
        on_driver = repo.fast_path
    assert on_driver == (fast_path and not watched)
    probes = [f"{name} WARNING probe {MARKERS['probe']}" for name in PROBED]
    assert _leaks(records) == probes
    logged = [r.getMessage() for r in records if r.name.startswith("sqlalchemy.engine.Engine")]
    assert any("INSERT INTO turns" in message for message in logged) == watched
    if backend == "sqlite":
        assert any(r.name == "aiosqlite" and r.levelno == logging.DEBUG for r in records)
