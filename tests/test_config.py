"""Configuration errors, secrets and size limits: ``ConfigError`` when a repository is built, no
password in a repr, an error message or a log record, the text and results limits, and a
``convostore`` logger that never logs turn content.

PostgreSQL runs with trust auth, so a URL with a password connects for real.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import (
    ConfigError,
    ConversationState,
    ConversationTurn,
    ConvostoreError,
    InvalidTurn,
    SessionRepository,
    StoreConfig,
    StoreError,
)
from convostore._core.validation import Limits, copy_results
from convostore.errors import translate_errors

Sql = Callable[..., Awaitable[list[Any]]]
MakeRepo = Callable[..., Awaitable[SessionRepository]]

PASSWORD = "s3cr3t-pw"


def with_password(url: str) -> str:
    """``url`` with ``PASSWORD`` on PostgreSQL; a SQLite URL has no password to add."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        (
            f"postgresql://app:{PASSWORD}@db:5432/chat",
            "write 'postgresql+asyncpg://app:***@db:5432/chat'",
        ),
        (
            f"postgresql+psycopg2://app:{PASSWORD}@db/chat",
            "write 'postgresql+asyncpg://app:***@db/chat'",
        ),
        (f"postgres://app:{PASSWORD}@db/chat", "write 'postgresql+asyncpg://app:***@db/chat'"),
        ("sqlite:///chat.db", "write 'sqlite+aiosqlite:///chat.db'"),
        ("sqlite+pysqlite:///chat.db", "write 'sqlite+aiosqlite:///chat.db'"),
        (f"mysql+aiomysql://app:{PASSWORD}@db/chat", "supports SQLite, PostgreSQL and MariaDB"),
        ("not a url", "not a database URL"),
        (f"postgresql+asyncpg://app:{PASSWORD}@db:port/chat", "not a database URL"),
    ],
)
def test_unusable_url_fails_when_the_repository_is_built(url: str, advice: str) -> None:
    """A URL convostore cannot run on raises ConfigError from the constructor (a str or a
    StoreConfig), saying what to write, without the password."""
    for config in (url, StoreConfig(database_url=url)):
        with pytest.raises(ConfigError) as raised:
            SessionRepository(config)
        assert advice in str(raised.value)
        assert PASSWORD not in str(raised.value)
        assert isinstance(raised.value, ConvostoreError)
        assert isinstance(raised.value, ValueError)


def test_url_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """StoreConfig itself does not check the URL (a repository given an engine never uses it);
    the repository built from it does."""
    monkeypatch.setenv("CONVOSTORE_DATABASE_URL", "sqlite:///chat.db")
    config = StoreConfig()
    with pytest.raises(ConfigError, match=r"sqlite\+aiosqlite:///chat.db"):
        SessionRepository(config)


def test_postgres_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # find_spec now finds no asyncpg
    with pytest.raises(ConfigError, match='pip install "convostore\\[postgres\\]"'):
        SessionRepository(f"postgresql+asyncpg://app:{PASSWORD}@db/chat")
    SessionRepository("sqlite+aiosqlite:///chat.db")


def test_engine_that_is_not_async_fails_when_built(tmp_path: Path) -> None:
    sync_engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'chat.db'}")
    try:
        with pytest.raises(ConfigError, match="AsyncEngine"):
            SessionRepository(StoreConfig(), engine=sync_engine)  # type: ignore[arg-type]
    finally:
        sync_engine.dispose()
    with pytest.raises(ConfigError, match="not str"):
        SessionRepository(engine="sqlite+aiosqlite://")  # type: ignore[arg-type]


async def test_engine_passed_in_is_used_whatever_the_config_url(url: str) -> None:
    """With an engine, the config's URL is not checked (it is not used); the repr shows the
    engine's URL, masked."""
    engine = create_async_engine(with_password(url))
    try:
        repo = SessionRepository(StoreConfig(database_url="sqlite:///unused.db"), engine=engine)
        async with repo:
            state = await repo.add_turn("s", "q", "a")
            assert [turn.content for turn in state.turns] == ["q", "a"]
            assert PASSWORD not in repr(repo)
            assert make_url(with_password(url)).render_as_string(hide_password=True) in repr(repo)
    finally:
        await engine.dispose()


async def test_password_is_in_no_repr(url: str, backend: str) -> None:
    config = StoreConfig(database_url=with_password(url), cleanup_interval=0)
    repo = SessionRepository(config)
    texts = [repr(config), str(config), repr(repo), str(repo)]
    async with repo:
        await repo.add_turn("s", "q", "a")
        texts += [repr(repo), str(repo)]
    texts.append(repr(repo))
    assert all(PASSWORD not in text for text in texts), texts
    assert config.database_url == with_password(url)  # the value itself is intact
    if backend == "postgresql":
        assert all(":***@" in text for text in texts), texts
    assert "running" in texts[4]
    assert "stopped" in texts[-1]


async def test_failing_connection_error_shows_no_password(
    empty_url: str, backend: str, tmp_path: Path
) -> None:
    """A database that cannot be reached (wrong port; a SQLite file in a missing folder) fails
    start() with a StoreError whose whole traceback leaves out the password."""
    if backend != "sqlite":
        unreachable = make_url(with_password(empty_url)).set(port=1)
        bad = unreachable.render_as_string(hide_password=False)
    else:
        bad = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'chat.db'}"
    repo = SessionRepository(StoreConfig(database_url=bad, cleanup_interval=0))
    threads_before = set(threading.enumerate())
    with pytest.raises(StoreError) as raised:
        await repo.start()
    # aiosqlite 0.22 answers a failed connect by queueing its worker thread's stop without
    # awaiting it; should this test's event loop close first, that thread raises "Event loop is
    # closed" into whichever test runs next (omnilib/aiosqlite#389). Let it finish here.
    for thread in set(threading.enumerate()) - threads_before:
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive(), thread
    assert raised.value.__cause__ is not None
    formatted = "".join(traceback.format_exception(raised.value))
    assert PASSWORD not in formatted
    assert PASSWORD not in repr(repo)


def test_store_error_messages_mask_the_password() -> None:
    """Should a driver ever put the password in its error, the StoreError shows ``***``."""
    SessionRepository(f"postgresql+asyncpg://app:{PASSWORD}@db/chat")
    with pytest.raises(StoreError) as raised, translate_errors("connecting"):
        raise OSError(f"password {PASSWORD} rejected")
    assert str(raised.value) == "connecting failed: password *** rejected"


def test_limits_have_documented_defaults() -> None:
    config = StoreConfig()
    assert (config.max_text_chars, config.max_results_bytes) == (100_000, 1_000_000)
    with pytest.raises(ValueError, match="max_text_chars"):
        StoreConfig(max_text_chars=0)


TEXT_FIELDS = {
    "question": "question is 21 characters long",
    "answer": "answer is 21 characters long",
    "resolved_question": "resolved_question is 21 characters long",
    "template_id": "template_id is 21 characters long",
    "slot name": "slots name is 21 characters long",
    "slot value": "slots['place'] is 21 characters long",
}


def exchange(field: str, text: str) -> dict[str, Any]:
    """add_turn's keyword arguments with ``text`` in ``field``."""
    arguments: dict[str, Any] = {"question": "q", "answer": "a", "slots": {"place": "Utrecht"}}
    if field == "slot name":
        arguments["slots"] = {text: "Utrecht"}
    elif field == "slot value":
        arguments["slots"] = {"place": text}
    else:
        arguments[field] = text
    return arguments


async def test_add_turn_refuses_text_over_the_limit(make_repo: MakeRepo, sql: Sql) -> None:
    """Each text field: one character over max_text_chars raises InvalidTurn naming the field
    and the limit, and stores nothing; exactly at the limit is stored."""
    repo = await make_repo(max_text_chars=20)
    for field, message in TEXT_FIELDS.items():
        with pytest.raises(InvalidTurn, match="at most 20 are allowed") as raised:
            await repo.add_turn("s", **exchange(field, "x" * 21))
        assert message in str(raised.value)
        assert await sql("SELECT count(*) FROM sessions") == [(0,)]
    for field in TEXT_FIELDS:
        await repo.add_turn("s", **exchange(field, "x" * 20))
    assert await sql("SELECT count(*) FROM turns") == [(2 * len(TEXT_FIELDS),)]


async def test_add_turn_refuses_results_over_the_limit(make_repo: MakeRepo, sql: Sql) -> None:
    results = [{"name": "Het Utrechts Archief", "city": "Utrecht", "score": 0.93}] * 40
    size = len(json.dumps(results))
    tight = await make_repo(max_results_bytes=size - 1)
    with pytest.raises(InvalidTurn, match=f"results take {size:,} bytes as JSON; at most"):
        await tight.add_turn("s", "q", "a", results=results)
    assert await sql("SELECT count(*) FROM turns") == [(0,)]
    exact = await make_repo(max_results_bytes=size)
    state = await exact.add_turn("s", "q", "a", results=results)
    assert state.turns[0].results == results


async def test_defaults_refuse_a_10_mb_answer(repo: SessionRepository, sql: Sql) -> None:
    with pytest.raises(InvalidTurn, match="answer is 10,000,000 characters long; at most 100,000"):
        await repo.add_turn("s", "q", "x" * 10_000_000)
    with pytest.raises(InvalidTurn, match="at most 1,000,000 are allowed"):
        await repo.add_turn("s", "q", "a", results=[{"text": "x" * 1_000_000}])
    assert await sql("SELECT count(*) FROM sessions") == [(0,)]


async def test_update_refuses_what_is_over_the_limits(make_repo: MakeRepo, sql: Sql) -> None:
    """update() checks the turns it would store, current_slots and the template against the
    limits, and stores nothing of a state that breaks one."""
    repo = await make_repo(max_text_chars=20, max_results_bytes=50)
    sid, _ = await repo.get_or_create()
    too_long = "x" * 21
    cases: list[tuple[str, Callable[[Any], None]]] = [
        ("turns[0].content is 21", lambda s: s.add_turn(ConversationTurn(content=too_long))),
        (
            "turns[0].slots['place'] is 21",
            lambda s: s.add_turn(ConversationTurn(slots={"place": too_long})),
        ),
        (
            "turns[0].results take",
            lambda s: s.add_turn(ConversationTurn(results=[{"text": too_long * 3}])),
        ),
        ("current_slots['place'] is 21", lambda s: s.current_slots.update(place=too_long)),
        ("current_template_id is 21", lambda s: setattr(s, "current_template_id", too_long)),
    ]
    for message, change in cases:
        state = await repo.get(sid)
        assert state is not None
        change(state)
        with pytest.raises(InvalidTurn, match="are allowed") as raised:
            await repo.update(sid, state)
        assert message in str(raised.value)
    assert await sql("SELECT count(*) FROM turns") == [(0,)]
    assert await sql("SELECT version FROM sessions") == [(0,)]


async def test_limits_are_checked_before_any_sql(tmp_path: Path) -> None:
    """A repository that was never started has no engine, yet over-limit input gets InvalidTurn
    rather than NotRunning: the checks come first."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    repo = SessionRepository(StoreConfig(database_url=url, max_text_chars=5))
    with pytest.raises(InvalidTurn):
        await repo.add_turn("s", "question", "a")
    with pytest.raises(InvalidTurn):
        await repo.update("s", ConversationState(current_slots={"place": "Amersfoort"}))


@pytest.mark.parametrize(
    "item",
    [
        {"text": "plain ascii text " * 20},
        {"ctl": "\x01\x02\x1f" * 30, "quote": '"\\' * 30},
        {"accents": "é" * 50, "cjk": "档案" * 20},
        {"astral": "😀" * 40},
        {"big": 10**300, "neg": -(2**63), "small": 1, "t": True, "f": False, "n": None},
        {"floats": [-1.2345678901234567e-308, 1e308, 0.1, -0.0]},
        {"nested": [[{"a": [{}, [], ""]}]], "tuple": (1, "two", (3.0,))},
    ],
)
def test_results_limit_is_exact_for_any_json(item: dict[str, Any]) -> None:
    """The limit is the JSON length to the byte: one byte less refuses, the length passes, for
    text that JSON escapes, non-ASCII, big numbers and nesting (the walk's cheap bound must
    never let an over-limit result through)."""
    size = len(json.dumps([item]))
    assert copy_results("results", [item], Limits(100, size)) == json.loads(json.dumps([item]))
    with pytest.raises(InvalidTurn, match=f"take {size:,} bytes"):
        copy_results("results", [item], Limits(100, size - 1))


MARKERS = {
    place: f"mk-{place}-q7Zx"
    for place in (
        "question",
        "answer",
        "resolved",
        "template",
        "slotname",
        "slotvalue",
        "resultkey",
        "resultvalue",
        "turn",
        "current",
        "refused",
        "probe",
    )
}


async def add_marked_turn(
    repo: SessionRepository, sid: str, user_id: str | None = None
) -> ConversationState:
    """An exchange with a marker in each of its fields."""
    m = MARKERS
    return await repo.add_turn(
        sid,
        m["question"],
        m["answer"],
        resolved_question=m["resolved"],
        template_id=m["template"],
        slots={m["slotname"]: m["slotvalue"]},
        results=[{m["resultkey"]: m["resultvalue"]}],
        user_id=user_id,
    )


def leaks(records: list[logging.LogRecord], secrets: list[str]) -> list[str]:
    """The formatted convostore records (message, exception, stack) that contain a secret."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [
        formatter.format(record)
        for record in records
        if record.name == "convostore" or record.name.startswith("convostore.")
    ]
    return [text for text in texts if any(secret in text for secret in secrets)]


async def refuse_in_database(sql: Sql, backend: str, content: str) -> None:
    """Make the database refuse turns with ``content`` and the deletion of any session."""
    if backend == "postgresql":
        await sql(f"ALTER TABLE turns ADD CONSTRAINT refused_turn CHECK (content <> '{content}')")
        await sql(
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'deleting sessions is refused'; END $$"
        )
        await sql(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON sessions "
            "FOR EACH ROW EXECUTE FUNCTION refuse_delete()"
        )
    elif backend == "mariadb":
        await sql(f"ALTER TABLE turns ADD CONSTRAINT refused_turn CHECK (content <> '{content}')")
        await sql(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON sessions FOR EACH ROW "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'deleting sessions is refused'"
        )
    else:
        await sql(
            f"CREATE TRIGGER refused_turn BEFORE INSERT ON turns WHEN NEW.content = '{content}' "
            "BEGIN SELECT RAISE(ABORT, 'turn refused'); END"
        )
        await sql(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON sessions "
            "BEGIN SELECT RAISE(ABORT, 'deleting sessions is refused'); END"
        )


async def test_logs_hold_no_turn_content_and_no_password(
    url: str, backend: str, clock: Any, sql: Sql, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole workload, logged at DEBUG: create, add_turn, get (cached and cold), update,
    delete, sweep, refused writes and a failing background sweep. No convostore record, with
    its traceback, shows a marker put in turn content, slots or results, or the password.
    The controls: the probe record is caught, and convostore did log (its engine, the failed
    sweep with its traceback).

    The background sweeper starts only after the test's triggers exist: DDL committed by
    another connection while a sweep ran once made SQLite report a table of ours missing,
    which is not what this test is about."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("convostore").debug("probe %s", MARKERS["probe"])
    m = MARKERS
    config = StoreConfig(
        database_url=with_password(url), cleanup_interval=0, session_ttl=60, max_text_chars=200
    )
    repo = SessionRepository(config, clock=clock)
    cold = SessionRepository(config, clock=clock)
    background = SessionRepository(
        config.model_copy(update={"cleanup_interval": 0.02}), clock=clock
    )
    errors: list[ConvostoreError] = []
    async with repo, cold:
        sid, _ = await repo.get_or_create()
        await add_marked_turn(repo, sid)
        assert await repo.get(sid) is not None
        state = await cold.get(sid)
        assert state is not None
        state.add_turn(ConversationTurn(role="user", content=m["turn"]))
        state.current_slots["place"] = m["current"]
        await cold.update(sid, state)
        other, _ = await repo.get_or_create()
        await repo.add_turn(other, m["question"], m["answer"])
        assert await repo.delete(other)

        await refuse_in_database(sql, backend, m["refused"])
        for write in (
            repo.add_turn(sid, m["refused"] * 20, m["answer"]),  # over the limit
            repo.add_turn(sid, m["refused"], m["answer"]),  # refused by the database
        ):
            with pytest.raises((InvalidTurn, StoreError)) as raised:
                await write
            errors.append(raised.value)
        clock.advance(61)
        with pytest.raises(StoreError):
            await repo.sweep_expired()
        async with background:
            for _ in range(250):  # the background sweep fails too, and logs it
                if any(r.name == "convostore" and r.exc_info for r in caplog.records):
                    break
                await asyncio.sleep(0.02)

    assert [type(error) for error in errors] == [InvalidTurn, StoreError]
    assert not [e for e in errors if any(marker in str(e) for marker in MARKERS.values())]
    ours = [r for r in caplog.records if r.name == "convostore"]
    assert any("creating an engine" in r.getMessage() for r in ours), "engine was not logged"
    failed = [r for r in ours if r.exc_info]
    assert failed, "the failing background sweep was not logged"
    assert "deleting sessions is refused" in logging.Formatter().format(failed[0])
    secrets = [*MARKERS.values(), PASSWORD]
    assert leaks(caplog.records, secrets) == [f"convostore DEBUG probe {MARKERS['probe']}"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_ttl", float("inf")),
        ("session_ttl", 1e12),
        ("session_ttl", 1e-9),
        ("transcript_retention", float("inf")),
        ("cleanup_interval", float("nan")),
        ("sweep_batch_size", 0),
    ],
)
def test_a_config_that_skipped_validation_is_a_config_error(field: str, value: float) -> None:
    """A config changed with model_copy(update=...) (or made with model_construct) was never
    validated: the repository's constructor checks it, before any connection."""
    config = StoreConfig(database_url="sqlite+aiosqlite:///never.db").model_copy(
        update={field: value}
    )
    with pytest.raises(ConfigError, match=f"invalid StoreConfig settings: {field}: "):
        SessionRepository(config)
    assert not Path("never.db").exists()


async def test_durations_work_up_to_their_bounds_and_not_beyond(
    url: str, clock: Any, sql: Sql
) -> None:
    """The longest TTL and retention (100 years) and the shortest TTL (a millisecond): writes,
    reads and sweeps work; a step past either bound is a ConfigError where 1e12 s overflowed
    every call and 1e-9 s failed the first write with "No row was found"."""
    longest = 100 * 365.25 * 24 * 3600
    config = StoreConfig(
        database_url=url,
        cleanup_interval=longest,
        refresh_delay=longest,
        reconnect_timeout=longest,
        session_ttl=longest,
        transcript_retention=longest,
        sweep_batch_size=1_000_000,
    )
    async with SessionRepository(config, clock=clock) as repo:
        await repo.add_turn("long", "q", "a")
        assert await repo.get("long") is not None
        assert await repo.sweep_expired() == 0
        assert await repo.delete("long")
        assert await repo.sweep_expired() == 0
    assert await sql("SELECT count(*) FROM turns") == [(2,)]
    brief = config.model_copy(update={"session_ttl": 0.001})
    async with SessionRepository(brief, clock=clock) as repo:
        state = await repo.add_turn("brief", "q", "a")
        assert len(state.turns) == 2
        clock.advance(0.002)
        assert await repo.get("brief") is None
    beyond = {"session_ttl": longest * 1.01, "transcript_retention": longest * 1.01}
    for field, value in [*beyond.items(), ("session_ttl", 0.0009)]:
        with pytest.raises(ConfigError, match=f"{field}: Input should be"):
            SessionRepository(config.model_copy(update={field: value}))
