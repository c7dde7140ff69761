"""``StoreConfig.redact``: e-mail addresses masked by a regex before anything is stored, on
``add_turn`` and ``update``, on the fast path and SQLAlchemy's; the rows themselves hold no
address, the caller and the cache get what was stored, and a transform that fails stores
nothing. Every backend."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from conftest import MakeRepo, Sql

from convostore import ConversationTurn, InvalidTurn, RedactionFailed, SessionRepository
from convostore._ops.transfer import export_conversations, import_conversations

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def mask_emails(text: str) -> str:
    """The redaction under test: every e-mail address becomes ``[email]``."""
    return _EMAIL.sub("[email]", text)


PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "sqlalchemy"])


async def _stored_text(sql: Sql) -> list[str]:
    """Every text the turn, slot and session rows hold, as the database returns it."""
    rows = [
        *await sql("SELECT content, resolved_question, results FROM turns"),
        *await sql("SELECT name, value FROM turn_slots"),
        *await sql("SELECT current_slots FROM sessions"),
    ]
    return [str(value) for row in rows for value in row if value is not None]


async def _add(repo: SessionRepository, sid: str) -> Any:
    return await repo.add_turn(
        sid,
        "Mail jan.jansen@example.nl over Utrecht",
        "Ik mail jan.jansen@example.nl en kopie aan info@archief.example.org.",
        resolved_question="Mail jan.jansen@example.nl over archieven in Utrecht",
        template_id="mail_about",
        slots={"contact": "jan.jansen@example.nl", "place": "Utrecht"},
        results=[{"name": "Archief", "contact": {"mail": ["info@archief.example.org", 3]}}],
    )


@PATHS
async def test_add_turn_stores_and_returns_redacted_text(
    make_repo: MakeRepo, sql: Sql, fast_path: bool
) -> None:
    """Every text field, slot value and string in results is masked in the rows, in the state
    add_turn returns, in the cache and in a cold load; names, keys and numbers stay."""
    repo = await make_repo(redact=mask_emails, fast_path=fast_path)
    await repo.get_or_create("s1")
    state = await _add(repo, "s1")  # the session is live: the append's own path
    await _add(repo, "s2")  # a new session: the append that creates it
    stored = await _stored_text(sql)
    assert stored
    assert not any("@" in text for text in stored)
    user, assistant = state.turns
    assert user.content == "Mail [email] over Utrecht"
    assert assistant.content == "Ik mail [email] en kopie aan [email]."
    assert user.resolved_question == "Mail [email] over archieven in Utrecht"
    assert user.slots == {"contact": "[email]", "place": "Utrecht"}
    assert user.results == [{"name": "Archief", "contact": {"mail": ["[email]", 3]}}]
    assert state.current_slots == {"contact": "[email]", "place": "Utrecht"}
    cached = await repo.get("s1")
    assert cached is not None
    assert cached.turns == state.turns
    cold = await make_repo(redact=mask_emails, fast_path=fast_path)
    loaded = await cold.get("s1")
    assert loaded is not None
    assert loaded.turns == state.turns
    assert loaded.current_slots == state.current_slots


@PATHS
async def test_update_redacts_new_turns_and_current_slots(
    make_repo: MakeRepo, sql: Sql, fast_path: bool
) -> None:
    """Turns appended to state.turns and the current slots an update writes are masked in the
    rows; the state after update and the cache hold the masked text."""
    repo = await make_repo(redact=mask_emails, fast_path=fast_path)
    _, state = await repo.get_or_create("s1")
    state.turns.append(
        ConversationTurn(role="user", content="Ik ben a@b.example", slots={"who": "a@b.example"})
    )
    state.current_slots = {"who": "a@b.example"}
    await repo.update("s1", state)
    assert not any("@" in text for text in await _stored_text(sql))
    assert state.turns[0].content == "Ik ben [email]"
    assert state.current_slots == {"who": "[email]"}
    cached = await repo.get("s1")
    assert cached is not None
    assert cached.turns == state.turns
    assert cached.current_slots == {"who": "[email]"}


def _fails(text: str) -> str:
    raise RuntimeError(f"cannot redact {text}")


@pytest.mark.parametrize("redact", [_fails, lambda text: None], ids=["raises", "no-string"])
async def test_failing_redaction_stores_nothing(make_repo: MakeRepo, sql: Sql, redact: Any) -> None:
    """A transform that raises or returns no string fails the call with RedactionFailed (an
    InvalidTurn) naming the field but not its text, before any SQL: no session, no turn."""
    repo = await make_repo(redact=redact)
    with pytest.raises(RedactionFailed, match="question") as raised:
        await repo.add_turn("s1", "secret@example.org", "answer")
    assert isinstance(raised.value, InvalidTurn)
    assert "secret@example.org" not in str(raised.value)
    assert await sql("SELECT count(*) FROM sessions") == [(0,)]
    assert await sql("SELECT count(*) FROM turns") == [(0,)]
    assert await repo.get("s1") is None


async def test_redaction_is_checked_like_input(make_repo: MakeRepo) -> None:
    """What the transform returns is checked as input is: a NUL it adds is refused."""
    repo = await make_repo(redact=lambda text: text + "\x00")
    with pytest.raises(InvalidTurn, match="NUL"):
        await repo.add_turn("s1", "question", "answer")


async def _empty(sql: Sql) -> None:
    for table in ("turn_slots", "turns", "sessions", "conversations"):
        await sql(f"DELETE FROM {table}")


async def test_import_redacts_what_it_writes(make_repo: MakeRepo, url: str, sql: Sql) -> None:
    """import_conversations with ``redact`` stores the exported conversation masked (turns,
    slots, results and current slots); a line the transform fails on is reported, not
    imported."""
    plain = await make_repo()
    await _add(plain, "s1")
    await _add(plain, "s2")
    out = io.StringIO()
    await export_conversations(url, out)
    await _empty(sql)
    lines = out.getvalue().splitlines()
    counts = await import_conversations(url, lines, redact=mask_emails)
    assert counts.conversations == 2
    assert not counts.problems
    stored = await _stored_text(sql)
    assert stored
    assert not any("@" in text for text in stored)
    await _empty(sql)
    failed = await import_conversations(url, lines[:1], redact=_fails)
    assert [problem.line for problem in failed.problems] == [1]
    assert "RuntimeError" in failed.problems[0].reason
    assert await sql("SELECT count(*) FROM turns") == [(0,)]


async def test_metadata_is_stored_as_given(make_repo: MakeRepo) -> None:
    """The application's metadata is not redacted (``list_sessions`` filters by it exactly):
    it is stored as given, and found by its values."""
    repo = await make_repo(redact=mask_emails)
    await _add(repo, "s")
    wanted = {"owner": "jan.jansen@example.nl", "tags": ["mail"]}
    assert await repo.set_metadata("s", wanted)
    state = await repo.get("s")
    assert state is not None
    assert state.metadata == wanted
    assert state.turns[0].content == "Mail [email] over Utrecht"
