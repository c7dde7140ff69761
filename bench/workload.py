"""What the benchmark stores: the exchange every append writes, and stored histories as rows
of convostore's tables (for bulk loading before a scenario)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from convostore._core.schema import conversations, sessions, turn_slots, turns

__all__ = [
    "CONVERSATION_COLUMNS",
    "EXCHANGE",
    "SESSION_COLUMNS",
    "SLOT_COLUMNS",
    "TURN_COLUMNS",
    "Exchange",
    "HistoryRows",
    "history_rows",
    "session_ids",
    "sqlite_timestamp",
]

CONVERSATION_COLUMNS = tuple(column.name for column in conversations.columns)
SESSION_COLUMNS = tuple(column.name for column in sessions.columns)
TURN_COLUMNS = tuple(column.name for column in turns.columns)
SLOT_COLUMNS = tuple(column.name for column in turn_slots.columns)
TEMPLATE_ID = "archives_in_place"
_UNTRACED = (None, None)
"""A loaded turn's ``trace_id`` and ``span_id``: none, as for an application without tracing."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One question and its answer, with one slot and a small results list."""

    question: str
    answer: str
    template_id: str
    slots: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slots_json(self) -> str:
        return json.dumps(self.slots)

    @property
    def results_json(self) -> str:
        return json.dumps(self.results)


QUESTION_CHARS = 120
ANSWER_CHARS = 600


def _text(opening: str, filler: str, length: int) -> str:
    """``opening`` continued with ``filler`` sentences, cut to exactly ``length`` characters."""
    text = opening
    while len(text) < length:
        text += " " + filler
    return text[:length]


EXCHANGE = Exchange(
    question=_text(
        "Welke archieven zijn er in Utrecht?",
        "En welke daarvan hebben bouwtekeningen van voor 1900?",
        QUESTION_CHARS,
    ),
    answer=_text(
        "Er zijn 12 archieven in Utrecht, waaronder Het Utrechts Archief.",
        "Het Utrechts Archief bewaart bouwdossiers, kadasterkaarten en notariële akten van de "
        "stad en de provincie, en de meeste zijn in de studiezaal in te zien.",
        ANSWER_CHARS,
    ),
    template_id=TEMPLATE_ID,
    slots={"place": "Utrecht"},
    results=[
        {"name": "Het Utrechts Archief", "city": "Utrecht"},
        {"name": "Universiteitsbibliotheek Utrecht", "city": "Utrecht"},
        {"name": "Archief Eemland", "city": "Amersfoort"},
    ],
)
"""The exchange every timed append stores: a 120-character question, a 600-character
answer, one slot and a three-item results list (about 180 bytes of JSON)."""


def session_ids(tag: str, count: int, start: int = 0) -> list[str]:
    """Distinct, readable session ids for one purpose of one scenario."""
    return [f"bench-{tag}-{index:08d}" for index in range(start, start + count)]


def sqlite_timestamp(value: datetime) -> str:
    """A UTC timestamp as SQLAlchemy stores it in SQLite (text, no offset)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(slots=True)
class HistoryRows:
    """Rows of the four tables, as tuples in ``*_COLUMNS`` order."""

    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    turns: list[tuple[Any, ...]] = field(default_factory=list)
    slots: list[tuple[Any, ...]] = field(default_factory=list)


def _turn_texts(seq: int) -> tuple[str, str, str]:
    """Question, answer and place of the exchange that ``seq`` belongs to."""
    place = f"Plaats {(seq + 1) // 2}"
    return (
        f"Welke archieven zijn er in {place}?",
        f"Er zijn {seq % 17 + 1} archieven in {place}, waaronder het Regionaal Archief.",
        place,
    )


EXCHANGE_SPACING = 30
"""Seconds between the exchanges of a stored history."""


def history_results(place: str) -> list[dict[str, Any]]:
    """The results a stored history's user turn about ``place`` carries."""
    return [{"name": f"Archief van {place}", "city": place}]


def history_exchanges(n_turns: int) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The exchanges of a stored history of ``n_turns`` turns (``history_rows``): question,
    answer and the user turn's results, for the stores that take whole exchanges (the peers),
    so that they store and load the same texts and payload as convostore's rows hold."""
    exchanges = []
    for seq in range(1, n_turns, 2):
        question, _, place = _turn_texts(seq)
        exchanges.append((question, _turn_texts(seq + 1)[1], history_results(place)))
    return exchanges


def history_rows(
    sids: Sequence[str],
    n_turns: int,
    *,
    now: datetime,
    ttl: float,
    stamp: Callable[[datetime], Any],
    first_conversation: int,
    expired: bool = False,
    user: str | None = None,
) -> Iterator[HistoryRows]:
    """Rows for sessions of ``n_turns`` turns each (alternating user and assistant; each user
    turn has one slot and a one-item results list), one ``HistoryRows`` per 10,000 sessions.
    Each session has its live conversation (not ended), numbered from ``first_conversation``
    in the order of ``sids``.

    Live sessions were last used ``now`` and expire ``ttl`` seconds later; ``expired`` ones
    expired an hour before ``now``. Each exchange was stored ``EXCHANGE_SPACING`` seconds
    after the one before, the last one when the session was last used (a load parses each
    exchange's timestamp: one shared by every turn would flatter a reader that remembers the
    last one it parsed). ``stamp`` encodes timestamps for the driver. Every session is
    ``user``'s (None: no owner), untitled, without metadata.
    """
    if expired:
        last, expires = now - timedelta(seconds=ttl + 3600), now - timedelta(seconds=3600)
    else:
        last, expires = now, now + timedelta(seconds=ttl)
    exchanges = (n_turns + 1) // 2
    created_s = stamp(last - timedelta(seconds=EXCHANGE_SPACING * exchanges))
    last_s, expires_s = stamp(last), stamp(expires)
    turn_template: list[tuple[Any, ...]] = []
    for seq in range(1, n_turns + 1):
        question, answer, place = _turn_texts(seq)
        at = stamp(last - timedelta(seconds=EXCHANGE_SPACING * (exchanges - (seq + 1) // 2)))
        if seq % 2:
            results = json.dumps(history_results(place))
            turn_template.append((seq, "user", question, None, TEMPLATE_ID, results, place, at))
        else:
            turn_template.append((seq, "assistant", answer, None, None, "[]", None, at))
    last_place = next((t[6] for t in reversed(turn_template) if t[6] is not None), None)
    current_slots = json.dumps({"place": last_place} if last_place else {})
    template = TEMPLATE_ID if n_turns else None
    for start in range(0, len(sids), 10_000):
        chunk = HistoryRows()
        for cid, sid in enumerate(sids[start : start + 10_000], first_conversation + start):
            chunk.conversations.append((sid, cid, user, created_s, None, None, None, None, None))
            chunk.sessions.append(
                (
                    sid,
                    cid,
                    user,
                    created_s,
                    last_s,
                    expires_s,
                    0,
                    "nl",
                    template,
                    current_slots,
                    n_turns,
                    n_turns // 2,
                    None,
                    None,
                    last_s,
                )
            )
            for seq, role, content, resolved, template_id, results, place, at in turn_template:
                key = f"k{seq}" if role == "user" else None  # as every append stores one
                chunk.turns.append(
                    (
                        sid,
                        cid,
                        seq,
                        role,
                        content,
                        resolved,
                        template_id,
                        results,
                        at,
                        key,
                        *_UNTRACED,
                    )
                )
                if place is not None:
                    chunk.slots.append((sid, cid, seq, "place", place))
        yield chunk
