"""An HTML usage report of a convostore database: one self-contained page.

``collect`` reads the figures from the analytics views ``exchanges``, ``slot_values`` and
``feedback`` (the queries of docs/analytics.md, in SQLAlchemy Core) and ``render`` lays them
out as HTML with inline SVG charts (``charts``) and small tables: no scripts, no stylesheets
or fonts from elsewhere, so the file can be mailed or archived and opens the same anywhere.
Text from the database (templates, slot values) is escaped. The page fits a phone (390 px)
without scrolling sideways, and each chart is drawn for the width it is shown at, so its
text stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import partial
from html import escape
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._ops.admin import snapshot
from convostore._ops.charts import (
    AMBER,
    BLUE,
    HALF,
    VARIANT_CSS,
    WIDE,
    bar_chart,
    column_chart,
    per_day_chart,
    responsive,
    share_chart,
)
from convostore._ops.report_queries import report_queries
from convostore.backends import backend_for
from convostore.errors import translate_errors

__all__ = ["ReportData", "collect", "render"]

TOP = 10
"""Templates and slot values shown."""
LENGTH_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, 50), (51, None))
"""Conversation lengths (exchanges), grouped for the distribution chart."""


@dataclass(frozen=True)
class ReportData:
    """The figures of a report, over live and retained conversations; days and hours UTC."""

    conversations: int
    """Conversations stored, with or without a question."""
    live: int
    """Of those, conversations whose session is live (not expired)."""
    per_day: list[tuple[date, int, int]]
    """(day, exchanges, conversations with an exchange that day), every day from the first
    exchange to the last."""
    per_hour: list[int]
    """Exchanges per hour of the day, 0 to 23."""
    templates: list[tuple[str | None, int, int]]
    """(template, questions, conversations), most asked first, at most ``TOP``."""
    questions: int
    follow_ups: int
    """Questions whose stored resolved question differs from what was typed."""
    lengths: dict[int, int]
    """Exchanges in a conversation -> how many conversations had that many (at least 1)."""
    slot_values: list[tuple[str, str, int, int]]
    """(slot, value, mentions, conversations), most mentioned first, at most ``TOP``."""
    feedback_templates: list[tuple[str | None, int, int, int, float]] = field(default_factory=list)
    """(template, answers rated, positive, negative, average score), most rated first, at
    most ``TOP``."""
    feedback_days: list[tuple[date, int, int, int]] = field(default_factory=list)
    """(day, answers rated, positive, negative), for each day feedback was last given on."""
    roles: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(role, messages, of them naming a tool, conversations with such messages), by role."""


async def collect(engine: AsyncEngine, now: datetime | None = None) -> ReportData:
    """Read the report's figures from the database, in one snapshot; ``now`` (default: the
    current time) tells which sessions are live."""
    queries = report_queries(backend_for(engine), TOP)
    params = {"now": now or datetime.now(timezone.utc)}
    with translate_errors("reading the report's figures"):
        async with snapshot(engine) as conn:
            rows = {
                name: (await conn.execute(query, params)).all() for name, query in queries.items()
            }
    ((total, live),) = rows["conversations"]
    ((questions, follow_ups),) = rows["follow_ups"]
    per_hour = [0] * 24
    for hour, count in rows["per_hour"]:
        per_hour[int(hour)] = int(count)
    templates = sorted(
        ((name, int(asked), int(among)) for name, asked, among in rows["templates"]),
        key=lambda row: (-row[1], row[0] is None, row[0] or ""),
    )
    rated = sorted(
        (
            (name, int(count), int(up), int(down), float(mean))
            for name, count, up, down, mean in rows["feedback_templates"]
        ),
        key=lambda row: (-row[1], row[0] is None, row[0] or ""),
    )
    return ReportData(
        conversations=int(total),
        live=int(live),
        per_day=_every_day(rows["per_day"]),
        per_hour=per_hour,
        templates=templates[:TOP],
        questions=int(questions),
        follow_ups=int(follow_ups),
        lengths={int(length): int(count) for length, count in rows["lengths"]},
        slot_values=[
            (name, value, int(count), int(among))
            for name, value, count, among in rows["slot_values"]
        ],
        feedback_templates=rated[:TOP],
        feedback_days=[
            (date.fromisoformat(str(day)), int(count), int(up), int(down))
            for day, count, up, down in rows["feedback_days"]
        ],
        roles=[
            (str(role), int(count), int(tools), int(among))
            for role, count, tools, among in rows["roles"]
        ],
    )


def _every_day(rows: Sequence[Any]) -> list[tuple[date, int, int]]:
    """The per-day rows with the days without exchanges filled in as zeros."""
    found = {date.fromisoformat(str(day)): (int(asked), int(among)) for day, asked, among in rows}
    if not found:
        return []
    first, last = min(found), max(found)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [(day, *found.get(day, (0, 0))) for day in days]


def _median_length(lengths: dict[int, int]) -> float | None:
    """The median number of exchanges per conversation, or None without conversations."""
    total = sum(lengths.values())
    if not total:
        return None
    middle = {(total - 1) // 2, total // 2}
    picked: list[int] = []
    seen = 0
    for length in sorted(lengths):
        for position in middle:
            if seen <= position < seen + lengths[length]:
                picked.append(length)
        seen += lengths[length]
    return sum(picked) / len(picked)


_STYLE = (
    """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #1f2937; overflow-wrap: anywhere;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 20px 40px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.1rem; margin: 0 0 2px; }
p.lead, p.note, footer { color: #4b5563; margin: 0 0 12px; }
p.note { font-size: 0.9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(170px, 100%), 1fr));
  gap: 12px; margin: 20px 0; }
.card { background: #fff; border-radius: 10px; padding: 14px 16px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, 0.06); }
.card b { display: block; font-size: 1.6rem; line-height: 1.2; }
.card span { color: #4b5563; font-size: 0.9rem; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(480px, 100%), 1fr));
  gap: 16px; }
section { background: #fff; border-radius: 10px; padding: 16px 20px; margin: 0 0 16px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, 0.06); min-width: 0; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; font-size: 0.9rem;
  margin: 0 0 12px; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e5e7eb; }
th.n, td.n { text-align: right; width: 16%; }
svg { display: block; width: 100%; height: auto; margin: 0 auto;
  font-size: 13px; font-family: inherit; }
footer { font-size: 0.85rem; margin-top: 24px; }
@media (max-width: 599.98px) {
  main { padding: 20px 12px 32px; }
  section { padding: 14px; }
}
"""
    + VARIANT_CSS
)


def _section(title: str, note: str, chart: str) -> str:
    return f'<section><h2>{escape(title)}</h2><p class="note">{escape(note)}</p>{chart}</section>'


_NUMBER = ' class="n"'


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A small table: the first column text, the others numbers (right-aligned)."""

    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{_NUMBER if n else ''}>{escape(cell)}</{tag}>" for n, cell in enumerate(row)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr>{cells('th', header)}</tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )


def _feedback(data: ReportData) -> str:
    """The feedback section: per template and per day, or a line saying there is none."""
    note = "Scores of -2 to 2 given on answers (thumbs: -1 and 1; stars: stars − 3)."
    if not data.feedback_days:
        return (
            f'<section><h2>Feedback</h2><p class="note">{escape(note)} No feedback yet.</p>'
            "</section>"
        )
    header = ("rated", "up", "down", "mean")
    per_template = _table(
        f"Per template, the {TOP} most rated",
        ("template", *header),
        [
            (name or "(no template)", f"{count:,}", f"{up:,}", f"{down:,}", f"{mean:+.2f}")
            for name, count, up, down, mean in data.feedback_templates
        ],
    )
    per_day = _table(
        "Per day (UTC)",
        ("day", *header[:3]),
        [
            (f"{day:%d %b %Y}", f"{count:,}", f"{up:,}", f"{down:,}")
            for day, count, up, down in data.feedback_days
        ],
    )
    return (
        f'<section><h2>Feedback</h2><p class="note">{escape(note)}</p>{per_template}{per_day}'
        "</section>"
    )


def _roles(data: ReportData) -> str:
    """The messages by role: what agent frameworks store (system prompts, tool calls and
    their outputs) beside the questions and answers."""
    note = "Every stored message, by who it is from; tool: calls and outputs naming a tool."
    table = _table(
        "Messages by role",
        ("role", "messages", "tool", "conversations"),
        [
            (role, f"{count:,}", f"{tools:,}", f"{among:,}")
            for role, count, tools, among in data.roles
        ],
    )
    return f'<section><h2>Messages</h2><p class="note">{escape(note)}</p>{table}</section>'


def _card(value: str, what: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(what)}</span></div>'


def _length_buckets(lengths: dict[int, int]) -> tuple[list[str], list[int]]:
    """The length distribution in ``LENGTH_BUCKETS``, up to the bucket of the longest."""
    longest = max(lengths, default=0)
    labels: list[str] = []
    counts: list[int] = []
    for low, high in LENGTH_BUCKETS:
        if low > max(longest, 5):
            break
        labels.append(str(low) if low == high else f"{low}+" if high is None else f"{low}–{high}")
        counts.append(
            sum(
                n
                for length, n in lengths.items()
                if low <= length and (high is None or length <= high)
            )
        )
    return labels, counts


def render(data: ReportData, database: str, generated_at: datetime | None = None) -> str:
    """The report as one HTML page; ``database`` names the database (without a password)."""
    now = generated_at or datetime.now(timezone.utc)
    days = [day for day, _, _ in data.per_day]
    median = _median_length(data.lengths)
    period = (
        "no exchanges yet"
        if not days
        else f"{days[0]:%d %b %Y}"
        if len(days) == 1
        else f"{days[0]:%d %b %Y} – {days[-1]:%d %b %Y}"
    )
    rate = f"{data.follow_ups / data.questions:.0%}" if data.questions else "–"
    cards = "".join(
        (
            _card(f"{data.conversations:,}", f"conversations ({data.live:,} live)"),
            _card(f"{data.questions:,}", "exchanges (questions with their answer)"),
            _card(rate, "of questions were follow-ups"),
            _card("–" if median is None else f"{median:g}", "exchanges per conversation (median)"),
        )
    )
    length_labels, length_counts = _length_buckets(data.lengths)
    templates = [
        (template or "(no template)", asked, f"{asked:,} in {_of(among, 'conversation')}")
        for template, asked, among in data.templates
    ]
    slots = [
        (f"{name} = {value}", mentions, f"{mentions:,} in {_of(among, 'conversation')}")
        for name, value, mentions, among in data.slot_values
    ]
    sections = [
        _section(
            "Conversations and exchanges per day",
            "Exchanges asked each day, and the conversations they were asked in (UTC days).",
            responsive(
                partial(
                    per_day_chart,
                    days,
                    [
                        ("exchanges", [asked for _, asked, _ in data.per_day], BLUE),
                        ("conversations", [among for _, _, among in data.per_day], AMBER),
                    ],
                    "Conversations and exchanges per day",
                ),
                WIDE,
            ),
        ),
        '<div class="pair">',
        _section(
            "Top templates",
            f"Questions per template, the {TOP} most asked.",
            responsive(partial(bar_chart, templates, "Questions per template"), HALF),
        ),
        _section(
            "Top slot values",
            f"What people asked about: slot values by mentions, the {TOP} most mentioned.",
            responsive(partial(bar_chart, slots, "Most mentioned slot values"), HALF),
        ),
        _section(
            "Follow-up rate",
            "Questions stored with a resolved question that differs from what was typed.",
            responsive(
                partial(share_chart, data.follow_ups, data.questions, "Follow-up rate"), HALF
            ),
        ),
        _section(
            "Conversation length",
            "Conversations by their number of exchanges.",
            responsive(
                partial(
                    column_chart,
                    length_labels,
                    length_counts,
                    "Conversations by number of exchanges",
                ),
                HALF,
            ),
        ),
        "</div>",
        _section(
            "Load per hour of the day",
            "Exchanges per hour (UTC), over the whole period.",
            responsive(
                partial(
                    column_chart,
                    [f"{hour:02d}" for hour in range(24)],
                    data.per_hour,
                    "Exchanges per hour of the day",
                ),
                WIDE,
            ),
        ),
        _feedback(data),
        _roles(data),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8" />'
        '<meta name="viewport" content="width=device-width, initial-scale=1" />'
        f"<title>convostore report: {escape(database)}</title>"
        f"<style>{_STYLE}</style></head><body><main>"
        "<h1>Conversations report</h1>"
        f'<p class="lead">{escape(database)} · {escape(period)}</p>'
        f'<div class="cards">{cards}</div>'
        f"{''.join(sections)}"
        f"<footer>Made by convostore at {now:%Y-%m-%d %H:%M} UTC from the views exchanges, "
        "slot_values, feedback and message_roles, over live conversations and the transcripts "
        "kept after their session ended.</footer></main></body></html>\n"
    )


def _of(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"
