"""Every query in docs/analytics.md, run on a known dataset on both backends.

The dataset is built through the API with the fake clock, so its timestamps, owners and
endings are known; the expected rows below were worked out by hand from it (see ``_seed``),
not by running the queries. The views tell live conversations by the database's clock, so the
dataset's first day is today (UTC) and its second tomorrow: the sessions left live at the end
are live for the database too. A query added to the doc without an expected result fails
``test_doc_queries_are_all_tested``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, MakeRepo
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from convostore import ConversationTurn, SessionRepository

DOC = Path(__file__).resolve().parent.parent / "docs" / "analytics.md"
MARKED = re.compile(
    r"<!-- query: (?P<name>\w+)(?: dialect=(?P<dialect>\w+))? -->\n```sql\n(?P<sql>.*?)```",
    flags=re.DOTALL,
)
DIALECTS = ("sqlite", "postgresql", "mariadb")
SESSION_TIME_ZONE = "Asia/Kolkata"
"""The PostgreSQL session's time zone while the queries run: UTC+05:30 moves the 21:00 UTC
exchange to the next day and every exchange to another hour, unless a query converts to UTC."""

DAY_ONE = time.time() // 86_400 * 86_400
"""Today 00:00 UTC."""
DAYS = [
    (datetime.fromtimestamp(DAY_ONE, timezone.utc) + timedelta(days=n)).strftime("%Y-%m-%d")
    for n in range(2)
]
"""The dataset's two days as the queries spell them."""


@dataclass(frozen=True)
class Query:
    """One marked ```sql block of the doc."""

    name: str
    dialect: str | None
    """None: the one text for both backends."""
    sql: str


def _doc_queries() -> list[Query]:
    """The doc's queries, each from its ``<!-- query: name [dialect=...] -->`` marker."""
    doc = DOC.read_text(encoding="utf-8")
    return [Query(m["name"], m["dialect"], m["sql"]) for m in MARKED.finditer(doc)]


def _at(clock: FakeClock, day: int, hour: int, minute: int = 0) -> None:
    """Move the clock forward to ``hour:minute`` UTC on day ``day`` (1 or 2) of the dataset."""
    target = DAY_ONE + (day - 1) * 86_400 + hour * 3600 + minute * 60
    assert target >= clock.now, "the dataset's steps must go forward in time"
    clock.advance(target - clock.now)


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
"""C6's exchange's OpenTelemetry ids."""


def _found(count: int) -> list[dict[str, Any]]:
    """A search result of ``count`` archives (only empty or not matters to the queries)."""
    return [{"name": f"archive {n}"} for n in range(count)]


async def _seed(repo: SessionRepository, clock: FakeClock) -> None:
    """Seven conversations over two days (times UTC; "follow-up": resolved_question set and
    different from the question; "empty": results == []):

    day 1 (today), ended by the sweep at 08:00 on day 2:
      C1 alice, session S1: 09:00 archives_in_place place=Utrecht, 2 results;
         09:05 follow-up, archives_in_place place=Enschede, 1 result;
         09:10 follow-up, archives_in_place place=Zwolle, empty.
      C2 bob: 14:00 opening_hours place=Utrecht, 1 result.
      C3 anonymous: 21:00 "Hallo", no template, no slots, empty.
    day 2 (tomorrow):
      C4 carol: 10:30 archives_in_place place=Deventer, empty;
         10:31 resolved_question equal to the question (no follow-up), archives_in_place
         place=Deventer, 1 result; 10:45 follow-up, archives_in_place place=Zwolle, 1 result;
         ended by ``delete`` at 11:00.
      C5 alice, session S1 again: 16:00 archives_in_place place=Utrecht, 2 results;
         16:02 follow-up, opening_hours place=Utrecht day=zaterdag, 1 result. Live.
      C6 bob: 16:30 opening_hours place=Zwolle, empty. Live.
      C7 dave: opened at 17:00, no questions; at 17:01 an agent's messages: a system prompt,
         tool calls of lookup_hours (twice, each with its output) and lookup_address. Live.
    Ended: C1 (10 minutes), C2, C3 (0 minutes), C4 (15 minutes), all retained.
    Metadata (``set_metadata`` as each opens): C1 and C5 project archives, C2 project hours,
    C6 a team and no project.
    Feedback (``add_feedback``, score, on the answer to): C1 +2 Utrecht (09:01), -1 Zwolle
    with a comment (09:11); C2 +1 (given -1 at 14:01, replaced at 14:02); C5 -2 zaterdag
    (16:03); C6 -1 (16:31), whose exchange carries trace and span ids.
    """
    archives, opening = "archives_in_place", "opening_hours"
    _at(clock, 1, 9)
    s1, _ = await repo.get_or_create(None, user_id="alice")
    await repo.set_metadata(s1, {"project": "archives"}, user_id="alice")
    await repo.add_turn(
        s1,
        "Welke archieven zijn er in Utrecht?",
        "Er zijn er twee.",
        template_id=archives,
        slots={"place": "Utrecht"},
        results=_found(2),
        user_id="alice",
    )
    _at(clock, 1, 9, 1)
    assert await repo.add_feedback(s1, 2, 2, user_id="alice")
    _at(clock, 1, 9, 5)
    await repo.add_turn(
        s1,
        "En in Enschede?",
        "Eén.",
        resolved_question="Welke archieven zijn er in Enschede?",
        template_id=archives,
        slots={"place": "Enschede"},
        results=_found(1),
        user_id="alice",
    )
    _at(clock, 1, 9, 10)
    await repo.add_turn(
        s1,
        "En in Zwolle?",
        "Geen gevonden.",
        resolved_question="Welke archieven zijn er in Zwolle?",
        template_id=archives,
        slots={"place": "Zwolle"},
        results=[],
        user_id="alice",
    )
    _at(clock, 1, 9, 11)
    assert await repo.add_feedback(s1, 6, -1, comment="Zwolle heeft er een.", user_id="alice")
    _at(clock, 1, 14)
    s2, _ = await repo.get_or_create(None, user_id="bob")
    await repo.set_metadata(s2, {"project": "hours", "stars": 4}, user_id="bob")
    await repo.add_turn(
        s2,
        "Wanneer is het archief in Utrecht open?",
        "Van 9 tot 17 uur.",
        template_id=opening,
        slots={"place": "Utrecht"},
        results=_found(1),
        user_id="bob",
    )
    _at(clock, 1, 14, 1)
    assert await repo.add_feedback(s2, 2, -1, user_id="bob")
    _at(clock, 1, 14, 2)
    assert await repo.add_feedback(s2, 2, 1, user_id="bob")
    _at(clock, 1, 21)
    s3, _ = await repo.get_or_create(None)
    await repo.add_turn(s3, "Hallo", "Hoi!")

    _at(clock, 2, 8)
    assert await repo.sweep_expired() == 3

    _at(clock, 2, 10, 30)
    s4, _ = await repo.get_or_create(None, user_id="carol")
    await repo.add_turn(
        s4,
        "Archieven in Deventer?",
        "Geen gevonden.",
        template_id=archives,
        slots={"place": "Deventer"},
        results=[],
        user_id="carol",
    )
    _at(clock, 2, 10, 31)
    await repo.add_turn(
        s4,
        "Welke archieven zijn er in Deventer?",
        "Eén.",
        resolved_question="Welke archieven zijn er in Deventer?",
        template_id=archives,
        slots={"place": "Deventer"},
        results=_found(1),
        user_id="carol",
    )
    _at(clock, 2, 10, 45)
    await repo.add_turn(
        s4,
        "En in Zwolle?",
        "Eén.",
        resolved_question="Welke archieven zijn er in Zwolle?",
        template_id=archives,
        slots={"place": "Zwolle"},
        results=_found(1),
        user_id="carol",
    )
    _at(clock, 2, 11)
    assert await repo.delete(s4)

    _at(clock, 2, 16)
    await repo.add_turn(
        s1,
        "Welke archieven zijn er in Utrecht?",
        "Er zijn er twee.",
        template_id=archives,
        slots={"place": "Utrecht"},
        results=_found(2),
        user_id="alice",
    )
    await repo.set_metadata(s1, {"project": "archives"}, user_id="alice")
    _at(clock, 2, 16, 2)
    await repo.add_turn(
        s1,
        "En op zaterdag?",
        "Van 10 tot 14 uur.",
        resolved_question="Wanneer is het archief in Utrecht op zaterdag open?",
        template_id=opening,
        slots={"place": "Utrecht", "day": "zaterdag"},
        results=_found(1),
        user_id="alice",
    )
    _at(clock, 2, 16, 3)
    assert await repo.add_feedback(s1, 4, -2, comment="Dicht op zaterdag.")
    _at(clock, 2, 16, 30)
    s6, _ = await repo.get_or_create(None, user_id="bob")
    await repo.set_metadata(s6, {"team": "north"}, user_id="bob")
    await repo.add_turn(
        s6,
        "Wanneer is het archief in Zwolle open?",
        "Dat weet ik niet.",
        template_id=opening,
        slots={"place": "Zwolle"},
        results=[],
        user_id="bob",
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
    )
    _at(clock, 2, 16, 31)
    assert await repo.add_feedback(s6, 2, -1, user_id="bob")
    _at(clock, 2, 17)
    s7, _ = await repo.get_or_create(None, user_id="dave")
    _at(clock, 2, 17, 1)
    await repo.add_messages(
        s7,
        [
            ConversationTurn(role="system", content="Zoek openingstijden op."),
            ConversationTurn(role="assistant", tool_name="lookup_hours", tool_call_id="c1"),
            ConversationTurn(role="tool", content="9-17", tool_call_id="c1"),
            ConversationTurn(role="assistant", tool_name="lookup_hours", tool_call_id="c2"),
            ConversationTurn(role="tool", content="10-14", tool_call_id="c2"),
            ConversationTurn(role="assistant", tool_name="lookup_address", tool_call_id="c3"),
        ],
        user_id="dave",
    )


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    # (day, exchanges, conversations): C1 3 + C2 1 + C3 1; C4 3 + C5 2 + C6 1.
    "exchanges_per_day": [(DAYS[0], 5, 3), (DAYS[1], 6, 3)],
    # (hour, exchanges): C1's three at 9, C4's three at 10, C2 at 14, C5 and C6 at 16, C3 at 21.
    "hourly_load": [(9, 3), (10, 3), (14, 1), (16, 3), (21, 1)],
    # (template, questions, conversations): archives C1 3 + C4 3 + C5 1; opening C2, C5, C6.
    "top_templates": [("archives_in_place", 7, 3), ("opening_hours", 3, 3), ("(none)", 1, 1)],
    # (questions, follow_ups, pct): C1's 2nd and 3rd, C4's 3rd, C5's 2nd of 11; 400/11 = 36.36.
    "follow_up_rate": [(11, 4, 36.4)],
    # (name, value, mentions, conversations).
    "top_slot_values": [
        ("place", "Utrecht", 4, 3),  # C1, C2, C5 twice
        ("place", "Zwolle", 3, 3),  # C1, C4, C6
        ("place", "Deventer", 2, 1),  # C4 twice
        ("day", "zaterdag", 1, 1),  # C5
        ("place", "Enschede", 1, 1),  # C1
    ],
    # (template_id, questions, empty): C1's Zwolle and C4's first; C6. C3 has no template.
    "empty_results": [("archives_in_place", 7, 2), ("opening_hours", 3, 1)],
    # (ended, after_one): C1, C2, C3, C4 ended; C2 and C3 had one exchange (C6 is live).
    "abandoned_after_one": [(4, 2)],
    # (conversations, median): lengths 1, 1, 1, 2, 3, 3 (C7 asked nothing): (1 + 2) / 2.
    "median_length": [(6, 1.5)],
    # (ended, avg_minutes, max_minutes): C1 10, C2 0, C3 0, C4 15.
    "conversation_minutes": [(4, 6.25, 15.0)],
    # (owner, conversations, questions): alice C1 + C5, carol C4, bob C2 + C6, C3, dave C7.
    "per_user_activity": [
        ("alice", 2, 5),
        ("carol", 1, 3),
        ("bob", 2, 2),
        ("(anonymous)", 1, 1),
        ("dave", 1, 0),
    ],
    # (state, conversations, exchanges): C1-C4 with 3 + 1 + 1 + 3; C5-C7 with 2 + 1 + 0.
    "live_vs_ended": [("ended", 4, 8), ("live", 3, 3)],
    # (project, conversations): C1 and C5 (alice) archives, C2 (bob) hours; C6 has no project.
    "per_project": [("archives", 2), ("hours", 1)],
    # (template, rated, positive, negative, avg_score): archives C1 +2 and -1; opening C2 +1
    # (its -1 replaced), C5 -2, C6 -1: -2/3.
    "feedback_per_template": [
        ("opening_hours", 3, 1, 2, -0.67),
        ("archives_in_place", 2, 1, 1, 0.5),
    ],
    # (score, question, answer, comment, trace_id): worst first, then oldest first.
    # (tool, calls, outputs): C7's messages.
    "tool_calls": [("lookup_hours", 2, 2), ("lookup_address", 1, 0)],
    "negative_feedback": [
        (-2, "En op zaterdag?", "Van 10 tot 14 uur.", "Dicht op zaterdag.", None),
        (-1, "En in Zwolle?", "Geen gevonden.", "Zwolle heeft er een.", None),
        (-1, "Wanneer is het archief in Zwolle open?", "Dat weet ik niet.", None, TRACE_ID),
    ],
}


def _plain(value: Any) -> Any:
    """PostgreSQL's numeric as the float SQLite returns, so one expected row fits both."""
    return float(value) if isinstance(value, Decimal) else value


def test_doc_queries_are_all_tested() -> None:
    """The doc asks at least eight questions; every ```sql block in it is marked, and each
    question has exactly one text per backend (one portable text, or one per dialect) and an
    expected result here, so no query in the doc goes untested."""
    queries = _doc_queries()
    doc = DOC.read_text(encoding="utf-8")
    assert len(queries) == doc.count("```sql")
    names = {query.name for query in queries}
    assert len(names) >= 8
    assert names == set(EXPECTED)
    for name in names:
        dialects = sorted(str(q.dialect) for q in queries if q.name == name)
        assert dialects in (["None"], sorted(DIALECTS)), name


@pytest.fixture
async def analyst(url: str, backend: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database whose PostgreSQL sessions are in a time zone other
    than UTC, as an analyst's might be."""
    options: dict[str, Any] = {}
    if backend == "postgresql":
        options["connect_args"] = {"server_settings": {"timezone": SESSION_TIME_ZONE}}
    elif backend == "mariadb":
        options["connect_args"] = {"init_command": "SET time_zone = '+05:30'"}
    engine = create_async_engine(url, **options)
    yield engine
    await engine.dispose()


async def test_doc_queries(
    make_repo: MakeRepo, clock: FakeClock, analyst: AsyncEngine, backend: str
) -> None:
    """Each of the doc's queries for this backend returns exactly the rows worked out from the
    dataset, on retained and live conversations alike."""
    await _seed(await make_repo(), clock)
    queries = [query for query in _doc_queries() if query.dialect in (None, backend)]
    got: dict[str, list[tuple[Any, ...]]] = {}
    async with analyst.connect() as conn:
        if backend == "postgresql":
            assert await conn.scalar(text("SHOW timezone")) == SESSION_TIME_ZONE
        for query in queries:
            rows = (await conn.execute(text(query.sql))).all()
            got[query.name] = [tuple(_plain(value) for value in row) for row in rows]
    assert len(got) == len(queries)
    assert got == EXPECTED
