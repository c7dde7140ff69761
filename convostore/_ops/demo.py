"""``convostore demo``: a short Dutch archive-search conversation that survives a restart.

It stores a question about Utrecht, closes the repository, opens a fresh one on the same
database (as a restarted web worker would), resolves the elliptical follow-up "En in Enschede?"
from the stored turns, then prints the transcript and an analytics query over the turns table.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from convostore._ops.report_queries import QUESTIONS_PER_TEMPLATE
from convostore.backends._urls import hide_password
from convostore.config import StoreConfig
from convostore.models import ConversationState
from convostore.repository import SessionRepository

__all__ = ["run_demo"]

_TEMPLATES = {"archives_in_place": "Welke archieven zijn er in {place}?"}
_ANSWERS = {
    "Utrecht": ("Er zijn 12 archieven in Utrecht, waaronder Het Utrechts Archief.", 12),
    "Enschede": (
        "Er zijn 3 archieven in Enschede, waaronder het Historisch Centrum Overijssel.",
        3,
    ),
}


def _resolve_follow_up(state: ConversationState, place: str) -> tuple[str, str, dict[str, str]]:
    """Turn "En in <place>?" into a full question: reuse the previous question's template
    and slots, replacing the place. This is what the stored context is for."""
    template_id = state.current_template_id
    if template_id is None:
        raise LookupError("no earlier question to resolve the follow-up against")
    slots = {**state.current_slots, "place": place}
    return _TEMPLATES[template_id].format(**slots), template_id, slots


async def run_demo(url: str | None = None, echo: Callable[[str], None] = print) -> None:
    """Run the scripted conversation against ``url``; by default on a new SQLite file in a
    temporary folder, removed afterwards (whether the demo ends or fails).

    Raises:
        ConfigError: a URL convostore cannot use, before anything is printed.
    """
    if url is not None:
        await _converse(url, echo)
        return
    with tempfile.TemporaryDirectory(prefix="convostore-demo-") as folder:
        await _converse(f"sqlite+aiosqlite:///{Path(folder) / 'convostore.db'}", echo)


async def _converse(url: str, echo: Callable[[str], None]) -> None:
    """The conversation, in two repositories one after the other on the database at ``url``."""
    config = StoreConfig(database_url=url, auto_migrate=True, cleanup_interval=0)
    async with SessionRepository(config) as repo:
        echo(f"database: {hide_password(url)} (schema migrated to the newest revision)\n")
        session_id, _ = await repo.get_or_create()
        question = "Welke archieven zijn er in Utrecht?"
        answer, count = _ANSWERS["Utrecht"]
        await repo.add_turn(
            session_id,
            question,
            answer,
            template_id="archives_in_place",
            slots={"place": "Utrecht"},
            results=[{"name": "Het Utrechts Archief", "count": count}],
        )
        echo(f"worker 1, session {session_id}")
        echo(f"  user:      {question}")
        echo(f"  assistant: {answer}")
    echo("\nworker 1 stopped; worker 2 opens a fresh repository on the same database\n")

    async with SessionRepository(config) as repo:
        state = await repo.get(session_id)
        if state is None:
            raise LookupError(f"session {session_id} was not found after the restart")
        follow_up = "En in Enschede?"
        resolved, template_id, slots = _resolve_follow_up(state, "Enschede")
        echo(f"  user:      {follow_up}")
        echo(f"  resolved from the stored turns: {resolved}")
        answer, count = _ANSWERS["Enschede"]
        state = await repo.add_turn(
            session_id,
            follow_up,
            answer,
            resolved_question=resolved,
            template_id=template_id,
            slots=slots,
            results=[{"name": "Historisch Centrum Overijssel", "count": count}],
        )
        echo(f"  assistant: {answer}")

        echo("\nstored transcript:")
        for number, turn in enumerate(state.turns, start=1):
            when = turn.created_at.strftime("%H:%M:%S") if turn.created_at else "--:--:--"
            extra = f"  [{turn.template_id} {turn.slots}]" if turn.template_id else ""
            echo(f"  {number}. {when} {turn.role:<9} {turn.content}{extra}")
        echo(f"  current slots: {state.current_slots}")

        echo("\nanalytics (SQL on the turns table): questions per template")
        async with repo.engine.connect() as conn:
            for template, questions in await conn.execute(QUESTIONS_PER_TEMPLATE):
                echo(f"  {template}: {questions}")
