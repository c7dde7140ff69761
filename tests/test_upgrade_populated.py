"""Migrating databases that hold data, as a deployment of an older release left them.

The rows of 0001 and 0002 are written with Core inserts of literal data into lightweight
``table()`` constructs (``convostore._core.schema`` describes head, not those revisions), exactly as
those releases' ``add_turn`` wrote them: per exchange, the session row's counters and context,
a user turn (seq 2k-1) with its slots, and an assistant turn (seq 2k). After the upgrade every
conversation must read back through the API as it was inserted, and go on working; a downgrade
must keep every live session and drop only what 0003's docstring says it drops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from _exact import assert_exact, tree
from _schema import drift, fingerprint
from conftest import FAST_PATH, FakeClock
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Integer,
    String,
    Text,
    column,
    insert,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.expression import TableClause, TextualSelect

from convostore import (
    ConfigError,
    ConversationState,
    ConversationTurn,
    SessionRepository,
    StoreConfig,
)
from convostore._core.schema import UTCDateTime
from convostore.migrate import current_revision_url, head_revision, migrate_url, upgrade_url

T = TypeVar("T")

TTL = timedelta(seconds=1800)
"""0001's default ``session_ttl``, which the seeded sessions' ``expires_at`` follow."""
_JSON = JSON().with_variant(JSONB(), "postgresql")
_TIME = DateTime(timezone=True)

FOLLOWUP, UNICODE, EMPTY, EXPIRED, LAPSED = "s-followup", "s-unicode", "s-empty", "s-exp", "s-lap"
LIVE = (FOLLOWUP, UNICODE, EMPTY)


def _sessions_table() -> TableClause:
    """``sessions`` as 0001 and 0002 created it."""
    return table(
        "sessions",
        column("session_id", String()),
        column("created_at", _TIME),
        column("last_accessed", _TIME),
        column("expires_at", _TIME),
        column("access_count", BigInteger()),
        column("language", String()),
        column("current_template_id", Text()),
        column("current_slots", _JSON),
        column("turn_count", Integer()),
        column("version", BigInteger()),
    )


def _turns_table(keys: bool) -> TableClause:
    """``turns`` as 0001 created it, with 0002's ``idempotency_key`` when ``keys``."""
    columns: list[ColumnClause[Any]] = [
        column("session_id", String()),
        column("seq", Integer()),
        column("role", String()),
        column("content", Text()),
        column("resolved_question", Text()),
        column("template_id", Text()),
        column("results", _JSON),
        column("created_at", _TIME),
    ]
    if keys:
        columns.append(column("idempotency_key", String()))
    return table("turns", *columns)


def _slots_table() -> TableClause:
    return table(
        "turn_slots",
        column("session_id", String()),
        column("seq", Integer()),
        column("name", Text()),
        column("value", Text()),
    )


@dataclass(frozen=True)
class Exchange:
    """One ``add_turn`` of an older release: the user turn's fields, and the answer."""

    question: str
    answer: str
    at: datetime
    resolved_question: str | None = None
    template_id: str | None = None
    slots: Mapping[str, str] = field(default_factory=dict)
    results: Sequence[Mapping[str, Any]] = ()
    key: str | None = None
    """0002 onwards: the idempotency key its first (user) turn carried."""


@dataclass(frozen=True)
class Seeded:
    """A session as an older release stored it; derives its rows and the state ``get`` must
    return for it at head."""

    session_id: str
    created_at: datetime
    exchanges: tuple[Exchange, ...] = ()
    language: str = "nl"
    updates: int = 0
    """``update`` calls that stored no turns (each bumped ``version``)."""

    @property
    def last_accessed(self) -> datetime:
        return self.exchanges[-1].at if self.exchanges else self.created_at

    def current(self) -> tuple[dict[str, str], str | None]:
        """``current_slots`` and ``current_template_id`` after every exchange, merged as
        0001's ``add_turn`` merged them."""
        slots: dict[str, str] = {}
        template: str | None = None
        for exchange in self.exchanges:
            slots.update(exchange.slots)
            template = exchange.template_id or template
        return slots, template

    def rows(self) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """Its ``sessions`` row, ``turns`` rows (with ``idempotency_key``) and slot rows."""
        slots, template = self.current()
        session = {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "last_accessed": self.last_accessed,
            "expires_at": self.last_accessed + TTL,
            "access_count": 1 + 2 * len(self.exchanges),
            "language": self.language,
            "current_template_id": template,
            "current_slots": slots,
            "turn_count": 2 * len(self.exchanges),
            "version": len(self.exchanges) + self.updates,
        }
        turns: list[dict[str, Any]] = []
        slot_rows: list[dict[str, Any]] = []
        for k, exchange in enumerate(self.exchanges, start=1):
            common = {"session_id": self.session_id, "created_at": exchange.at}
            turns.append(
                {
                    **common,
                    "seq": 2 * k - 1,
                    "role": "user",
                    "content": exchange.question,
                    "resolved_question": exchange.resolved_question,
                    "template_id": exchange.template_id,
                    "results": [dict(r) for r in exchange.results],
                    "idempotency_key": exchange.key,
                }
            )
            turns.append(
                {
                    **common,
                    "seq": 2 * k,
                    "role": "assistant",
                    "content": exchange.answer,
                    "resolved_question": None,
                    "template_id": None,
                    "results": [],
                    "idempotency_key": None,
                }
            )
            slot_rows += [
                {"session_id": self.session_id, "seq": 2 * k - 1, "name": name, "value": value}
                for name, value in exchange.slots.items()
            ]
        return session, turns, slot_rows

    def state(self) -> dict[str, Any]:
        """What ``get`` must return, as ``model_dump()``."""
        turns: list[ConversationTurn] = []
        for exchange in self.exchanges:
            turns.append(
                ConversationTurn(
                    role="user",
                    content=exchange.question,
                    resolved_question=exchange.resolved_question,
                    template_id=exchange.template_id,
                    slots=dict(exchange.slots),
                    results=[dict(r) for r in exchange.results],
                    created_at=exchange.at,
                )
            )
            turns.append(
                ConversationTurn(role="assistant", content=exchange.answer, created_at=exchange.at)
            )
        slots, template = self.current()
        state = ConversationState(
            turns=turns, current_slots=slots, current_template_id=template, language=self.language
        )
        return state.model_dump()


def _population(now: datetime, *, keys: bool) -> list[Seeded]:
    """Sessions of an older release at ``now``: a three-exchange conversation with follow-ups
    (resolved questions, slots, results), one in unicode Dutch, one without turns, and two
    that expired without being swept. ``keys``: 0002's turns carry idempotency keys."""

    def at(minutes: float) -> datetime:
        return now - timedelta(minutes=minutes, microseconds=123_457)

    def key(sid: str, k: int) -> str | None:
        return f"key-{sid}-{k}" if keys else None

    return [
        Seeded(
            FOLLOWUP,
            at(20),
            (
                Exchange(
                    "Hoeveel archieven zijn er in Utrecht?",
                    "Er zijn 12 archieven in Utrecht.",
                    at(19),
                    template_id="count_archives",
                    slots={"place": "Utrecht"},
                    results=[{"count": 12}],
                    key=key(FOLLOWUP, 1),
                ),
                Exchange(
                    "En in Amsterdam?",
                    "Er zijn 31 archieven in Amsterdam.",
                    at(15),
                    resolved_question="Hoeveel archieven zijn er in Amsterdam?",
                    template_id="count_archives",
                    slots={"place": "Amsterdam"},
                    results=[{"count": 31, "source": {"name": "Stadsarchief", "open": True}}],
                    key=key(FOLLOWUP, 2),
                ),
                Exchange(
                    "Welke zijn op zondag open?",
                    "Het Stadsarchief en het Noord-Hollands Archief.",
                    at(10),
                    resolved_question="Welke archieven in Amsterdam zijn op zondag open?",
                    template_id="list_archives",
                    slots={"place": "Amsterdam", "day": "zondag"},
                    results=[
                        {"name": "Stadsarchief", "hours": [10, 17], "rating": 4.5},
                        {"name": "Noord-Hollands Archief", "hours": None, "tags": []},
                    ],
                    key=key(FOLLOWUP, 3),
                ),
            ),
        ),
        Seeded(
            UNICODE,
            at(6),
            (
                Exchange(
                    "Wat weet je over ’s-Hertogenbosch en de IJssel? Één café, naïef 🚲",
                    "’s-Hertogenbosch ligt in Noord-Brabant; ‘Ĳssel’ — zie ‘Zwolle’ (中文 ok).",
                    at(5),
                    template_id="describe_place",
                    slots={"plaats": "’s-Hertogenbosch", "rivier": "IJssel 🌊"},
                    results=[{"naam": "Erfgoed ’s-Hertogenbosch", "beschrijving": "Ĳzer… ü ß"}],
                    key=key(UNICODE, 1),
                ),
                Exchange("Dank je wel!", "Graag gedaan 😊", at(4), key=key(UNICODE, 2)),
            ),
        ),
        Seeded(EMPTY, at(2), language="en", updates=1),
        Seeded(
            EXPIRED,
            at(180),
            (Exchange("Is het Zeeuws Archief open?", "Ja.", at(170), key=key(EXPIRED, 1)),),
        ),
        Seeded(
            LAPSED,
            at(120),
            (
                Exchange(
                    "Waar ligt Leeuwarden?",
                    "In Friesland.",
                    at(115),
                    slots={"place": "Leeuwarden"},
                    key=key(LAPSED, 1),
                ),
            ),
        ),
    ]


def _seed(conn: Connection, seeded: Sequence[Seeded], *, keys: bool) -> None:
    """Insert the sessions as an older release stored them (0002's when ``keys``)."""
    session_rows, turn_rows, slot_rows = [], [], []
    for session in seeded:
        row, turns, slots = session.rows()
        session_rows.append(row)
        turn_rows += turns if keys else [_without_key(t) for t in turns]
        slot_rows += slots
    conn.execute(insert(_sessions_table()), session_rows)
    conn.execute(insert(_turns_table(keys)), turn_rows)
    conn.execute(insert(_slots_table()), slot_rows)


def _without_key(turn: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in turn.items() if name != "idempotency_key"}


async def _on(url: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a sync connection to ``url`` in one committed transaction."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def _rows(url: str, statement: str | TextualSelect, **params: Any) -> list[tuple[Any, ...]]:
    query = text(statement) if isinstance(statement, str) else statement
    return await _on(url, lambda c: [tuple(r) for r in c.execute(query, params)])


def _repository(url: str, clock: FakeClock, **overrides: Any) -> SessionRepository:
    options: dict[str, Any] = {"database_url": url, "cleanup_interval": 0, "fast_path": FAST_PATH}
    return SessionRepository(StoreConfig(**{**options, **overrides}), clock=clock)


def _now(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.now, timezone.utc)


_TURNS = text(
    "SELECT t.session_id, t.seq, t.role, t.content, t.resolved_question, t.template_id, "
    "t.results, t.created_at FROM turns t ORDER BY t.session_id, t.seq"
).columns(results=_JSON, created_at=UTCDateTime())
_SLOTS = "SELECT session_id, seq, name, value FROM turn_slots ORDER BY session_id, seq, name"
_SESSIONS = text(
    "SELECT session_id, created_at, last_accessed, expires_at, access_count, language, "
    "current_template_id, current_slots, turn_count, version FROM sessions ORDER BY session_id"
).columns(
    created_at=UTCDateTime(),
    last_accessed=UTCDateTime(),
    expires_at=UTCDateTime(),
    current_slots=_JSON,
)


async def _upgraded(url: str, clock: FakeClock, revision: str, via: str) -> list[Seeded]:
    """Seed the data of ``revision`` (0001, or 0002 with idempotency keys) into the empty
    database at ``url`` and bring it to head ``via`` ``upgrade_url`` or a repository's
    ``auto_migrate`` (which on SQLite enforces foreign keys during the table copies); checks
    that no session, turn or slot row changed on the way."""
    keys = revision == "0002"
    seeded = _population(_now(clock), keys=keys)
    await upgrade_url(url, revision)
    await _on(url, lambda c: _seed(c, seeded, keys=keys))
    before = [await _rows(url, query) for query in (_SESSIONS, _TURNS, _SLOTS)]
    if via == "upgrade_url":
        await upgrade_url(url)
    else:
        async with _repository(url, clock, auto_migrate=True):
            pass
    assert [await _rows(url, query) for query in (_SESSIONS, _TURNS, _SLOTS)] == before
    return seeded


VIA = pytest.mark.parametrize("via", ["upgrade_url", "auto_migrate"])


@VIA
async def test_0001_database_reads_back_and_goes_on_at_head(
    empty_url: str, clock: FakeClock, via: str
) -> None:
    """A populated 0001 database at head: each session is one live conversation (started at
    its creation, no owner) that turns and slots point at; ``get`` returns every live session
    as inserted; appends continue the numbering; expired sessions end, keeping their turns."""
    seeded = await _upgraded(empty_url, clock, "0001", via)
    by_id = {s.session_id: s for s in seeded}

    conversations = await _rows(
        empty_url,
        text(
            "SELECT session_id, started_at, ended_at, user_id, language FROM conversations "
            "ORDER BY session_id"
        ).columns(started_at=UTCDateTime(), ended_at=UTCDateTime()),
    )
    assert conversations == [(s, by_id[s].created_at, None, None, None) for s in sorted(by_id)]
    pointed = (
        "JOIN conversations c ON c.conversation_id = x.conversation_id "
        "AND c.session_id = x.session_id"
    )
    assert await _rows(empty_url, f"SELECT x.session_id FROM sessions x {pointed} ORDER BY 1") == [
        (s,) for s in sorted(by_id)
    ]
    seeded_keys = {
        "turns": sorted((t["session_id"], t["seq"]) for s in seeded for t in s.rows()[1]),
        "turn_slots": sorted(
            (r["session_id"], r["seq"], r["name"]) for s in seeded for r in s.rows()[2]
        ),
    }
    for table_name, key in (("turns", "x.seq"), ("turn_slots", "x.seq, x.name")):
        order = f"ORDER BY x.session_id, {key}"
        pointing = await _rows(
            empty_url, f"SELECT x.session_id, {key} FROM {table_name} x {pointed} {order}"
        )
        assert pointing == seeded_keys[table_name], table_name

    exchanges = await _rows(
        empty_url,
        "SELECT session_id, seq, question, resolved_question, answer, template_id, language, "
        "live, user_id FROM exchanges ORDER BY session_id, seq",
    )
    real_now = datetime.now(timezone.utc)  # the views' clock: the database's, not the fake one
    assert [(*row[:7], bool(row[7]), row[8]) for row in exchanges] == sorted(
        (
            s.session_id,
            2 * k - 1,
            e.question,
            e.resolved_question,
            e.answer,
            e.template_id,
            s.language,
            s.last_accessed + TTL > real_now,
            None,
        )
        for s in seeded
        for k, e in enumerate(s.exchanges, start=1)
    )
    slot_values = await _rows(
        empty_url,
        "SELECT session_id, seq, name, value, template_id FROM slot_values "
        "ORDER BY session_id, seq, name",
    )
    assert slot_values == sorted(
        (s.session_id, 2 * k - 1, name, value, e.template_id)
        for s in seeded
        for k, e in enumerate(s.exchanges, start=1)
        for name, value in e.slots.items()
    )

    async with _repository(empty_url, clock) as repo:
        for sid in LIVE:
            state = await repo.get(sid)
            assert state is not None, sid
            assert state.model_dump() == by_id[sid].state(), sid

        state = await repo.add_turn(
            FOLLOWUP,
            "En op maandag?",
            "Alle drie.",
            resolved_question="Welke archieven in Amsterdam zijn op maandag open?",
            slots={"day": "maandag"},
        )
        assert state.model_dump()["turns"][:6] == by_id[FOLLOWUP].state()["turns"]
        assert [t.content for t in state.turns[6:]] == ["En op maandag?", "Alle drie."]
        assert state.current_slots == {"place": "Amsterdam", "day": "maandag"}
        assert state.current_template_id == "list_archives"
        numbered = await _rows(
            empty_url,
            "SELECT t.seq, t.conversation_id = s.conversation_id FROM turns t "
            "JOIN sessions s ON s.session_id = t.session_id WHERE t.session_id = :s ORDER BY 1",
            s=FOLLOWUP,
        )
        assert numbered == [(seq, True) for seq in range(1, 9)]

        state = await repo.add_turn(EMPTY, "Hello?", "Hi.", slots={"topic": "greeting"})
        assert [(t.role, t.content) for t in state.turns] == [
            ("user", "Hello?"),
            ("assistant", "Hi."),
        ]
        assert state.language == "en"
        fresh, _ = await repo.get_or_create()
        assert len((await repo.add_turn(fresh, "Nieuw?", "Ja.")).turns) == 2

        assert await repo.get(EXPIRED) is None
        assert await repo.sweep_expired() == 1
        assert await repo.get(LAPSED) is None

    ended = await _rows(
        empty_url,
        text(
            "SELECT c.session_id, c.ended_at, c.language, count(t.seq) FROM conversations c "
            "JOIN turns t ON t.conversation_id = c.conversation_id "
            "WHERE c.ended_at IS NOT NULL GROUP BY c.session_id, c.ended_at, c.language "
            "ORDER BY 1"
        ).columns(ended_at=UTCDateTime()),
    )
    assert ended == [(s, by_id[s].last_accessed, "nl", 2) for s in sorted((EXPIRED, LAPSED))]
    assert (
        await _rows(
            empty_url,
            "SELECT session_id FROM sessions WHERE session_id IN (:a, :b)",
            a=EXPIRED,
            b=LAPSED,
        )
        == []
    )


async def test_0002_database_keeps_idempotency_keys_and_the_change_feed(
    empty_url: str, backend: str, clock: FakeClock
) -> None:
    """A populated 0002 database at head keeps every turn's idempotency key, which still
    makes a repeated append a no-op, and its change feed still fires on a write and a delete
    (on SQLite 0003 copies ``sessions``, which drops its triggers, and must re-create them)."""
    seeded = await _upgraded(empty_url, clock, "0002", "upgrade_url")

    keys = await _rows(
        empty_url, "SELECT session_id, seq, idempotency_key FROM turns ORDER BY session_id, seq"
    )
    assert keys == sorted(
        (t["session_id"], t["seq"], t["idempotency_key"]) for s in seeded for t in s.rows()[1]
    )
    assert sum(key is not None for _, _, key in keys) == 7

    by_id = {s.session_id: s for s in seeded}
    async with _repository(empty_url, clock) as repo:
        again = await repo.add_turn(
            FOLLOWUP, "Nog eens?", "Nee.", idempotency_key=f"key-{FOLLOWUP}-2"
        )
        assert again.model_dump() == by_id[FOLLOWUP].state()
        assert await _rows(
            empty_url, "SELECT count(*) FROM turns WHERE session_id = :s", s=FOLLOWUP
        ) == [(6,)]

        if backend == "sqlite":
            triggers = await _rows(
                empty_url,
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'sessions' "
                "ORDER BY name",
            )
            assert triggers == [
                ("convostore_conversation_ended",),
                ("convostore_session_changed",),
                ("convostore_session_deleted",),
            ]
        else:
            triggers = await _rows(
                empty_url,
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'sessions'::regclass "
                "AND NOT tgisinternal ORDER BY tgname",
            )
            assert triggers == [("convostore_conversation_ended",), ("convostore_session_changed",)]
        (last,) = (await _rows(empty_url, "SELECT coalesce(max(id), 0) FROM convostore_changes"))[0]
        state = await repo.add_turn(FOLLOWUP, "Nog eens?", "Ja.", idempotency_key="new-key")
        assert len(state.turns) == 8
        assert await repo.delete(UNICODE)
        feed = await _rows(
            empty_url,
            "SELECT session_id, version FROM convostore_changes WHERE id > :last ORDER BY id",
            last=last,
        )
        assert feed == [(FOLLOWUP, 4), (UNICODE, -1)]


async def _state(repo: SessionRepository, sid: str) -> dict[str, Any]:
    """``get(sid)`` as ``model_dump()``; the session must be live."""
    state = await repo.get(sid)
    assert state is not None, sid
    return state.model_dump()


_LIVE_TURNS = text(
    "SELECT t.session_id, t.seq, t.role, t.content, t.resolved_question, t.template_id, "
    "t.results, t.created_at FROM turns t JOIN sessions s ON s.conversation_id = t.conversation_id "
    "ORDER BY t.session_id, t.seq"
).columns(results=_JSON, created_at=UTCDateTime())
_LIVE_SLOTS = (
    "SELECT t.session_id, t.seq, t.name, t.value FROM turn_slots t "
    "JOIN sessions s ON s.conversation_id = t.conversation_id "
    "ORDER BY t.session_id, t.seq, t.name"
)


@pytest.mark.parametrize("stops", [("0001",), ("0002", "0001")], ids=["direct", "via-0002"])
async def test_downgrade_to_0001_keeps_live_sessions_and_drops_ended_transcripts(
    url: str, empty_url: str, clock: FakeClock, stops: tuple[str, ...]
) -> None:
    """On a head database with owners, an ended-and-retained conversation and a live one that
    reuses an ended session id: the downgrade to 0001 is refused without ``allow_downgrade``
    (and changes nothing); with it (straight, or stopping at 0002), every live session keeps
    its row, turns and slots (a session without a language gets "nl", which older code gave
    every session), the ended transcripts go, and each revision's schema is that of a fresh
    database at it; upgrading again serves the same states."""
    fresh = {}
    for revision in ("0001", "0002"):
        await upgrade_url(empty_url, revision)
        fresh[revision] = await _on(empty_url, fingerprint)
    async with _repository(url, clock) as repo:
        await repo.get_or_create("s-alice", user_id="alice")
        await repo.add_turn(
            "s-alice",
            "Archieven in Utrecht?",
            "Twaalf.",
            template_id="count_archives",
            slots={"place": "Utrecht"},
            results=[{"count": 12}],
            user_id="alice",
        )
        clock.advance(10)
        await repo.add_turn(
            "s-alice",
            "En in Enschede?",
            "Drie.",
            resolved_question="Archieven in Enschede?",
            slots={"place": "Enschede"},
            results=[{"count": 3, "names": ["Historisch Centrum Overijssel"]}],
            user_id="alice",
        )
        tagged = await repo.get("s-alice")
        assert tagged is not None
        tagged.language = "en"
        await repo.update("s-alice", tagged)
        await repo.add_turn("s-anon", "Waar ligt Zwolle?", "Aan de IJssel.", slots={"p": "Zwolle"})
        for question in ("Eerste?", "Tweede?"):
            await repo.add_turn(
                "s-ended", question, "Antwoord.", slots={"q": question}, user_id="bob"
            )
        assert await repo.delete("s-ended")
        await repo.add_turn("s-reused", "Oude vraag?", "Oud.", slots={"old": "ja"}, user_id="carol")
        assert await repo.delete("s-reused")
        clock.advance(10)
        await repo.add_turn(
            "s-reused", "Nieuwe vraag?", "Nieuw.", slots={"new": "ja"}, user_id="carol"
        )
        await repo.add_turn("s-reused", "Nog een?", "Zeker.", template_id="t2", user_id="carol")
        live = ("s-alice", "s-anon", "s-reused")
        states = {sid: await _state(repo, sid) for sid in live}
        assert len(await repo.list_sessions("carol")) == 2

    sessions_before = await _rows(url, _SESSIONS)
    assert [row[5] for row in sessions_before] == ["en", None, None]
    downgraded = [(*row[:5], row[5] or "nl", *row[6:]) for row in sessions_before]
    turns_before = await _rows(url, _LIVE_TURNS)
    slots_before = await _rows(url, _LIVE_SLOTS)
    assert [s[0] for s in sessions_before] == list(live)
    assert len(turns_before) == 10
    assert await _rows(url, "SELECT count(*) FROM turns") == [(10 + 4 + 2,)]

    with pytest.raises(ConfigError, match="allow-downgrade"):
        await migrate_url(url, "0001")
    assert await current_revision_url(url) == f"{head_revision()} (head)"
    assert await _rows(url, "SELECT count(*) FROM conversations") == [(5,)]
    assert await _rows(url, "SELECT count(*) FROM turns") == [(16,)]

    for revision in stops:
        assert await migrate_url(url, revision, allow_downgrade=True) == revision
        assert await _rows(url, _SESSIONS) == downgraded, revision
        assert await _rows(url, _TURNS) == turns_before, revision
        assert await _rows(url, _SLOTS) == slots_before, revision
        assert await _on(url, fingerprint) == fresh[revision], revision

    await upgrade_url(url)
    async with _repository(url, clock) as repo:
        assert {sid: await _state(repo, sid) for sid in live} == {
            sid: {**state, "language": state["language"] or "nl"} for sid, state in states.items()
        }
        assert await repo.get("s-ended") is None
        assert await repo.list_sessions("carol") == []  # owners go with the downgrade


async def test_downgrade_to_0003_restores_its_schema_and_notify_feed(
    url: str, empty_url: str, clock: FakeClock
) -> None:
    """From head with data, a downgrade to 0003 leaves exactly a fresh 0003's schema (on
    PostgreSQL the NOTIFY trigger instead of the feed table), keeps the sessions, and an
    upgrade again serves them as before."""
    await upgrade_url(empty_url, "0003")
    fresh = await _on(empty_url, fingerprint)
    async with _repository(url, clock) as repo:
        await repo.add_turn("kept", "Vraag?", "Antwoord.", slots={"p": "Zwolle"})
        before = await _state(repo, "kept")

    assert await migrate_url(url, "0003", allow_downgrade=True) == "0003"
    assert await _on(url, fingerprint) == fresh

    await upgrade_url(url)
    async with _repository(url, clock) as repo:
        # 0003 requires a language: the downgrade gave the untagged session 0003's "nl".
        assert await _state(repo, "kept") == {**before, "language": "nl"}


@VIA
async def test_upgraded_populated_database_has_the_schema_of_a_fresh_one(
    empty_url: str, url: str, clock: FakeClock, via: str
) -> None:
    """After 0001 -> head with data, alembic finds no drift against ``schema.metadata``, and
    the whole schema (keys, indexes, views, triggers) equals a fresh head database's."""
    await _upgraded(empty_url, clock, "0001", via)
    assert await _on(empty_url, drift) == []
    assert await _on(empty_url, fingerprint) == await _on(url, fingerprint)


async def test_0003_database_reads_back_as_before_and_exactly_from_then_on(
    empty_url: str, backend: str, clock: FakeClock
) -> None:
    """A populated 0003 database, with results that PostgreSQL's JSONB normalized when they
    were written (a float beyond 2**64 turned int, -0.0 lost its sign, keys reordered), at
    head: ``results`` is json on PostgreSQL, every stored result reads back exactly as it did
    before (same values, types and key order), and what is written from then on reads back as
    written; the downgrade to 0003 gives JSONB back and keeps every turn."""
    floats = Seeded(
        "s-floats",
        _now(clock) - timedelta(minutes=3),
        (
            Exchange(
                "Hoeveel?",
                "Veel.",
                _now(clock) - timedelta(minutes=2),
                slots={"b": "2", "a": "1"},
                results=[{"v": 1e20, "zero": -0.0, "b": 1, "a": 1.5}],
                key="key-floats-1",
            ),
        ),
    )
    seeded = [*_population(_now(clock), keys=True), floats]
    await upgrade_url(empty_url, "0002")
    await _on(empty_url, lambda c: _seed(c, seeded, keys=True))
    await upgrade_url(empty_url, "0003")
    before = await _rows(empty_url, _TURNS)
    async with _repository(empty_url, clock, auto_migrate=True) as repo:
        states = {s.session_id: await _state(repo, s.session_id) for s in seeded[:3]}
        assert states == {s.session_id: s.state() for s in seeded[:3]}
        stored = await repo.get("s-floats")
        assert stored is not None
        after = await _rows(empty_url, _TURNS)
        assert_exact([list(row) for row in after], [list(row) for row in before])
        if backend == "postgresql":
            assert stored.turns[0].results == [{"a": 1.5, "b": 1, "v": 10**20, "zero": 0.0}]
        written = [{"v": 1e20, "zero": -0.0, "b": 1, "a": 1.5}]
        returned = await repo.add_turn(
            "s-floats", "En nu?", "Exact.", slots={"y": "1", "x": "2"}, results=written
        )
        assert_exact(returned.turns[-2].results, written)
    async with _repository(empty_url, clock) as cold:
        read = await cold.get("s-floats")
        assert read is not None
        assert_exact(tree(read), tree(returned))

    type_of_results = (
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'turns' AND column_name = 'results'"
    )
    if backend == "postgresql":
        assert await _rows(empty_url, type_of_results) == [("json",)]
    turns = await _rows(empty_url, "SELECT count(*) FROM turns")
    assert await migrate_url(empty_url, "0003", allow_downgrade=True) == "0003"
    assert await _rows(empty_url, "SELECT count(*) FROM turns") == turns
    if backend == "postgresql":
        assert await _rows(empty_url, type_of_results) == [("jsonb",)]


def _orphan(conn: Connection, session_id: str) -> None:
    """Delete a session row without its turns and slots, as a delete with foreign keys off
    leaves them (SQLite's default outside convostore, the sqlite3 shell's included;
    PostgreSQL's replica mode)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
    conn.execute(text("DELETE FROM sessions WHERE session_id = :sid"), {"sid": session_id})


@VIA
async def test_turns_left_by_a_session_deleted_with_foreign_keys_off_do_not_stop_the_upgrade(
    empty_url: str, clock: FakeClock, via: str
) -> None:
    """No release can read turns whose session row is gone; the upgrade drops them (they would
    belong to no conversation) and keeps every other row."""
    seeded = _population(_now(clock), keys=True)
    await upgrade_url(empty_url, "0002")
    await _on(empty_url, lambda c: _seed(c, seeded, keys=True))
    await _on(empty_url, lambda c: _orphan(c, UNICODE))
    orphans = "SELECT count(*) FROM {} WHERE session_id = :sid"
    assert (await _rows(empty_url, orphans.format("turns"), sid=UNICODE))[0][0] > 0
    kept = [
        [row for row in await _rows(empty_url, query) if row[0] != UNICODE]
        for query in (_TURNS, _SLOTS)
    ]
    if via == "upgrade_url":
        await upgrade_url(empty_url)
    else:
        async with _repository(empty_url, clock, auto_migrate=True):
            pass
    for table_name in ("turns", "turn_slots"):
        assert await _rows(empty_url, orphans.format(table_name), sid=UNICODE) == [(0,)]
    assert [await _rows(empty_url, query) for query in (_TURNS, _SLOTS)] == kept
    async with _repository(empty_url, clock) as repo:
        assert await repo.get(UNICODE) is None
        state = await repo.get(FOLLOWUP)
        assert state is not None
        followup = next(s for s in seeded if s.session_id == FOLLOWUP)
        assert len(state.turns) == 2 * len(followup.exchanges)


_LIVE_EXCHANGES = "SELECT DISTINCT session_id, live FROM exchanges ORDER BY session_id"


async def test_0003_database_at_head_tells_live_by_expiry_and_downgrades_to_0003s_views(
    empty_url: str, url: str
) -> None:
    """A populated database at 0003, whose ``exchanges`` call the two expired, unswept sessions
    live, upgraded to head: only the sessions whose expiry is in the future are live in
    ``exchanges`` and ``conversation_status``, every session keeps its language, the triggers
    on ``sessions`` still end conversations, and the schema is a fresh head database's. The
    downgrade gives back exactly 0003's schema, views included."""
    seeded = _population(datetime.now(timezone.utc), keys=True)
    await upgrade_url(empty_url, "0002")
    await _on(empty_url, lambda c: _seed(c, seeded, keys=True))
    await upgrade_url(empty_url, "0003")
    at_0003 = await _on(empty_url, fingerprint)
    said = await _rows(empty_url, _LIVE_EXCHANGES)
    assert [(sid, bool(live)) for sid, live in said] == [
        (s, True) for s in sorted((EXPIRED, FOLLOWUP, LAPSED, UNICODE))
    ]
    languages = await _rows(empty_url, "SELECT session_id, language FROM sessions ORDER BY 1")
    assert languages == sorted((s.session_id, s.language) for s in seeded)

    await upgrade_url(empty_url)
    assert await _on(empty_url, fingerprint) == await _on(url, fingerprint)
    assert await _on(empty_url, drift) == []
    said = await _rows(empty_url, _LIVE_EXCHANGES)
    assert [(sid, bool(live)) for sid, live in said] == [
        (EXPIRED, False),
        (FOLLOWUP, True),
        (LAPSED, False),
        (UNICODE, True),
    ]
    status = await _rows(
        empty_url, "SELECT session_id, live, ended_at FROM conversation_status ORDER BY 1"
    )
    assert [(sid, bool(live), ended) for sid, live, ended in status] == [
        (EMPTY, True, None),
        (EXPIRED, False, None),
        (FOLLOWUP, True, None),
        (LAPSED, False, None),
        (UNICODE, True, None),
    ]
    assert await _rows(empty_url, "SELECT session_id, language FROM sessions ORDER BY 1") == (
        languages
    )
    gone = text("DELETE FROM sessions WHERE session_id = :sid")
    await _on(empty_url, lambda c: c.execute(gone, {"sid": EXPIRED}))
    ended = "SELECT language FROM conversations WHERE session_id = :sid AND ended_at IS NOT NULL"
    assert await _rows(empty_url, ended, sid=EXPIRED) == [("nl",)]

    assert await migrate_url(empty_url, "0003", allow_downgrade=True) == "0003"
    assert await _on(empty_url, fingerprint) == at_0003
