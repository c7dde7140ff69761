"""Feedback on answers (``add_feedback``, the table ``turn_feedback`` and the view
``feedback``) and the OpenTelemetry trace and span ids of turns (``add_turn(trace_id=,
span_id=)``). Every backend."""

from __future__ import annotations

from typing import Any

import pytest
from _statements import count_statements
from alembic.script import ScriptDirectory
from conftest import FakeClock, MakeRepo, Sql

from convostore import (
    ConversationState,
    ConversationTurn,
    InvalidSessionId,
    InvalidTurn,
    NotSessionOwner,
    SessionRepository,
)
from convostore.migrate import alembic_config, migrate_url

TTL = 100
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

UNTRACED = (None, None, None)
"""A view row's template, trace and span for an exchange without them."""

_VIEW = (
    "SELECT session_id, seq, user_id, score, comment, question, resolved_question, answer, "
    "template_id, trace_id, span_id FROM feedback ORDER BY session_id, seq"
)


async def _exchanges(repo: SessionRepository, sid: str, n: int, **options: Any) -> None:
    for number in range(1, n + 1):
        await repo.add_turn(
            sid,
            f"Vraag {number}?",
            f"Antwoord {number}.",
            template_id="archives_in_place",
            **options,
        )


async def test_feedback_is_stored_replaced_and_shown_with_its_exchange(
    repo: SessionRepository, sql: Sql
) -> None:
    """Feedback on an answer appears in the view beside its question, answer, template,
    trace and owner; a second call for the same answer replaces the first (one row)."""
    await repo.add_turn(
        "s",
        "Archieven in Utrecht?",
        "Twee.",
        resolved_question="Welke archieven zijn er in Utrecht?",
        template_id="archives_in_place",
        user_id="alice",
        trace_id=TRACE,
        span_id=SPAN,
    )
    await repo.add_turn("s", "En in Zwolle?", "Geen.", user_id="alice")
    assert await repo.add_feedback("s", 2, 1, user_id="alice")
    assert await repo.add_feedback("s", 4, -2, comment="Er is er wel een.")
    assert await sql(_VIEW) == [
        (
            "s",
            2,
            "alice",
            1,
            None,
            "Archieven in Utrecht?",
            "Welke archieven zijn er in Utrecht?",
            "Twee.",
            "archives_in_place",
            TRACE,
            SPAN,
        ),
        ("s", 4, "alice", -2, "Er is er wel een.", "En in Zwolle?", None, "Geen.", *UNTRACED),
    ]

    assert await repo.add_feedback("s", 2, -1, comment="Toch niet.")
    rows = await sql("SELECT seq, score, comment FROM turn_feedback ORDER BY seq")
    assert rows == [(2, -1, "Toch niet."), (4, -2, "Er is er wel een.")]


async def test_feedback_on_what_is_not_a_live_answer_stores_nothing(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """A question, a turn beyond the last, an unknown session and an expired one: False, and
    no row."""
    repo = await make_repo(session_ttl=TTL)
    await _exchanges(repo, "s", 2)
    assert not await repo.add_feedback("s", 1, 1)  # a question
    assert not await repo.add_feedback("s", 3, 1)
    assert not await repo.add_feedback("s", 6, 1)  # no such turn
    assert not await repo.add_feedback("unknown", 2, 1)
    clock.advance(TTL + 1)
    assert not await repo.add_feedback("s", 2, 1)  # expired, not swept yet
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(0,)]


async def test_feedback_goes_to_the_live_conversation_only(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """After a session id is used again, feedback reaches the new conversation's answers,
    never the ended one's."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    await _exchanges(repo, "s", 2)
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    await _exchanges(repo, "s", 1)
    assert not await repo.add_feedback("s", 4, 2)  # the ended conversation's answer
    assert await repo.add_feedback("s", 2, 2)
    rows = await sql(
        "SELECT f.conversation_id, s.conversation_id FROM turn_feedback f "
        "JOIN sessions s ON s.session_id = f.session_id"
    )
    ((given_to, live),) = rows
    assert given_to == live


async def test_bad_feedback_is_refused_before_any_sql(repo: SessionRepository, sql: Sql) -> None:
    """Bad ids, a seq or score out of range (a bool is no score), a comment the store cannot
    hold: errors of convostore's own, with no statement run."""
    await _exchanges(repo, "s", 1)
    too_long = "x" * (repo.config.max_text_chars + 1)
    cases: list[tuple[Any, type[Exception]]] = [
        (repo.add_feedback("", 2, 1), InvalidSessionId),
        (repo.add_feedback("s", 2, 1, user_id=""), InvalidSessionId),
        (repo.add_feedback("s", 0, 1), InvalidTurn),
        (repo.add_feedback("s", "2", 1), InvalidTurn),  # type: ignore[arg-type]
        (repo.add_feedback("s", 2**31, 1), InvalidTurn),
        (repo.add_feedback("s", 2, 3), InvalidTurn),
        (repo.add_feedback("s", 2, -3), InvalidTurn),
        (repo.add_feedback("s", 2, True), InvalidTurn),
        (repo.add_feedback("s", 2, 1.0), InvalidTurn),  # type: ignore[arg-type]
        (repo.add_feedback("s", 2, 1, comment=too_long), InvalidTurn),
        (repo.add_feedback("s", 2, 1, comment="nul\x00"), InvalidTurn),
        (repo.add_feedback("s", 2, 1, comment=5), InvalidTurn),  # type: ignore[arg-type]
    ]
    with count_statements(repo.engine) as statements:
        for call, error in cases:
            with pytest.raises(error):
                await call
    assert statements == []
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(0,)]


async def test_only_the_owner_gives_feedback_on_an_owned_session(
    repo: SessionRepository, sql: Sql
) -> None:
    """Another user's feedback is refused (``NotSessionOwner``) and stores nothing; the
    owner's, and one without a user id, are stored."""
    await _exchanges(repo, "s", 1, user_id="alice")
    with pytest.raises(NotSessionOwner):
        await repo.add_feedback("s", 2, 1, user_id="bob")
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(0,)]
    assert await repo.add_feedback("s", 2, 1, user_id="alice")
    assert await repo.add_feedback("s", 2, 2)
    assert await sql("SELECT score FROM turn_feedback") == [(2,)]


async def test_export_and_erase_of_a_user_cover_feedback(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """``export_user`` lists the feedback of each conversation, live and retained;
    ``erase_user`` deletes it and counts it, and leaves other users' feedback alone."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=10 * TTL)
    await _exchanges(repo, "a1", 2, user_id="alice")
    assert await repo.add_feedback("a1", 4, -1, comment="Onvolledig.", user_id="alice")
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    await _exchanges(repo, "a2", 1, user_id="alice")
    assert await repo.add_feedback("a2", 2, 2, user_id="alice")
    await _exchanges(repo, "b", 1, user_id="bob")
    assert await repo.add_feedback("b", 2, 1, user_id="bob")

    export = await repo.export_user("alice")
    given = {
        c["session_id"]: [(f["seq"], f["score"], f["comment"]) for f in c["feedback"]]
        for c in export["conversations"]
    }
    assert given == {"a1": [(4, -1, "Onvolledig.")], "a2": [(2, 2, None)]}

    counts = await repo.erase_user("alice")
    assert counts["turn_feedback"] == 2
    assert await sql("SELECT session_id FROM turn_feedback") == [("b",)]
    assert (await repo.export_user("alice"))["conversations"] == []


async def test_the_retention_sweep_deletes_feedback_with_its_transcript(
    make_repo: MakeRepo, clock: FakeClock, sql: Sql
) -> None:
    """Feedback stays while its transcript is retained and goes with it."""
    repo = await make_repo(session_ttl=TTL, transcript_retention=2 * TTL)
    await _exchanges(repo, "s", 1)
    assert await repo.add_feedback("s", 2, 1)
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(1,)]
    clock.advance(2 * TTL + 1)
    await repo.sweep_expired()
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(0,)]


async def test_trace_ids_round_trip_cached_and_cold(make_repo: MakeRepo) -> None:
    """Both turns of an exchange carry its trace and span, in the state add_turn returns,
    from the cache, from a cold read (whole and windowed), and as ``update`` stores them.
    exports."""
    repo = await make_repo()
    state = await repo.add_turn("s", "Vraag?", "Antwoord.", trace_id=TRACE, span_id=SPAN)
    await repo.add_turn("s", "Zonder?", "Zonder.")
    traced = [(TRACE, SPAN), (TRACE, SPAN)]
    assert [(t.trace_id, t.span_id) for t in state.turns] == traced

    def ids(state: ConversationState | None) -> list[tuple[str | None, str | None]]:
        assert state is not None
        return [(turn.trace_id, turn.span_id) for turn in state.turns]

    expected = [*traced, (None, None), (None, None)]
    assert ids(await repo.get("s")) == expected
    cold = await make_repo()
    assert ids(await cold.get("s")) == expected
    windowed = await make_repo()
    assert ids(await windowed.get("s", last_turns=3)) == expected[1:]

    read = await cold.get("s")
    assert read is not None
    other = "0af7651916cd43dd8448eb211c80319c"
    read.add_turn(ConversationTurn(role="user", content="Bijgevoegd.", trace_id=other))
    await cold.update("s", read)
    again = await make_repo()
    assert ids(await again.get("s"))[-1] == (other, None)


async def test_trace_ids_reach_the_user_export(repo: SessionRepository) -> None:
    """``export_user`` writes each turn's trace and span."""
    await repo.add_turn("s", "Vraag?", "Antwoord.", user_id="u", trace_id=TRACE, span_id=SPAN)
    (conversation,) = (await repo.export_user("u"))["conversations"]
    assert [(t["trace_id"], t["span_id"]) for t in conversation["turns"]] == [(TRACE, SPAN)] * 2


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        (TRACE.upper(), None),
        (TRACE[:-1], None),
        ("0" * 32, None),
        (TRACE + "0", None),
        ("g" * 32, None),
        (int(TRACE, 16), None),
        (None, SPAN.upper()),
        (None, "0" * 16),
        (None, TRACE),
        (None, b"00f067aa0ba902b7"),
    ],
)
async def test_invalid_trace_ids_are_refused_before_any_sql(
    repo: SessionRepository, trace_id: Any, span_id: Any
) -> None:
    """Ids that are not OpenTelemetry's lowercase hex of the right length, or are all zero
    (the invalid id), are refused before any SQL, in add_turn and in update."""
    with count_statements(repo.engine) as statements:
        with pytest.raises(InvalidTurn, match="trace_id" if trace_id else "span_id"):
            await repo.add_turn("s", "Vraag?", "Antwoord.", trace_id=trace_id, span_id=span_id)
        state = ConversationState()
        state.add_turn(  # as a caller could build it, past the model's validation
            ConversationTurn.model_construct(
                role="user", content="Vraag?", trace_id=trace_id, span_id=span_id
            )
        )
        with pytest.raises(InvalidTurn, match="trace_id" if trace_id else "span_id"):
            await repo.update("s", state)
    assert statements == []
    assert await repo.get("s") is None


async def test_the_migration_keeps_every_turn_down_and_up(
    make_repo: MakeRepo, url: str, sql: Sql
) -> None:
    """Downgrading below the feedback migration keeps every turn and drops only the feedback
    and the trace ids; upgrading again, the conversation reads back as it was (without ids)
    and its answers take feedback again."""
    repo = await make_repo()
    await repo.add_turn("s", "Vraag?", "Antwoord.", trace_id=TRACE, span_id=SPAN)
    await repo.add_turn("s", "Nog een?", "Ja.")
    assert await repo.add_feedback("s", 2, 1)
    before = await repo.get("s")
    assert before is not None
    await repo.stop()

    scripts = ScriptDirectory.from_config(alembic_config())
    feedback = next(s for s in scripts.walk_revisions() if s.doc.startswith("feedback on answers"))
    await migrate_url(url, str(feedback.down_revision), allow_downgrade=True)
    rows = await sql("SELECT seq, content FROM turns ORDER BY seq")
    assert [tuple(row) for row in rows] == [
        (1, "Vraag?"),
        (2, "Antwoord."),
        (3, "Nog een?"),
        (4, "Ja."),
    ]
    await migrate_url(url)

    again = await make_repo()
    state = await again.get("s")
    assert state is not None
    untraced = {"trace_id", "span_id"}
    assert [t.model_dump(exclude=untraced) for t in state.turns] == [
        t.model_dump(exclude=untraced) for t in before.turns
    ]
    assert {(t.trace_id, t.span_id) for t in state.turns} == {(None, None)}
    assert await sql("SELECT COUNT(*) FROM turn_feedback") == [(0,)]
    assert await again.add_feedback("s", 4, -1)
    assert await sql("SELECT seq, score FROM feedback") == [(4, -1)]
