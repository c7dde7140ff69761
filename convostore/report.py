"""An HTML usage report of a convostore database: one self-contained page.

``collect`` reads the figures from the analytics views ``exchanges`` and ``slot_values`` (the
queries of docs/analytics.md, in SQLAlchemy Core) and ``render`` lays them out as HTML with
inline SVG charts drawn here: no scripts, no stylesheets or fonts from elsewhere, so the file
can be mailed or archived and opens the same anywhere. Text from the database (templates,
slot values) is escaped. The charts scale with the page through their ``viewBox``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from html import escape
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    bindparam,
    case,
    cast,
    column,
    distinct,
    extract,
    func,
    select,
)
from sqlalchemy import table as view
from sqlalchemy.ext.asyncio import AsyncEngine

from .admin import snapshot
from .errors import translate_errors
from .schema import UTCDateTime, conversations, live_session, sessions

__all__ = ["ReportData", "collect", "render"]

_exchanges = view(
    "exchanges",
    column("conversation_id"),
    column("question"),
    column("resolved_question"),
    column("template_id"),
    column("created_at"),
)
_slot_values = view("slot_values", column("conversation_id"), column("name"), column("value"))
_e, _v = _exchanges.c, _slot_values.c

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


def _day(dialect: str, moment: Any) -> ColumnElement[Any]:
    """The UTC day of a timestamp as YYYY-MM-DD text."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", moment), "YYYY-MM-DD")
    return func.date(moment)


def _hour(dialect: str, moment: Any) -> ColumnElement[Any]:
    """The UTC hour of a timestamp, 0 to 23."""
    if dialect == "postgresql":
        return cast(extract("hour", func.timezone("UTC", moment)), Integer)
    return cast(func.strftime("%H", moment), Integer)


def _queries(dialect: str) -> dict[str, Any]:
    """The report's statements for a dialect; each groups in an outer query over a subquery,
    so PostgreSQL never compares a grouped expression with bound parameters."""
    days = select(_day(dialect, _e.created_at).label("day"), _e.conversation_id).subquery()
    hours = select(_hour(dialect, _e.created_at).label("hour")).subquery()
    lengths = (
        select(func.count().label("exchanges"))
        .select_from(_exchanges)
        .group_by(_e.conversation_id)
        .subquery()
    )
    mentions = func.count()
    return {
        "conversations": select(
            select(func.count()).select_from(conversations).scalar_subquery(),
            select(func.count())
            .where(live_session(sessions.c.expires_at, bindparam("now", type_=UTCDateTime())))
            .scalar_subquery(),
        ),
        "per_day": select(days.c.day, func.count(), func.count(distinct(days.c.conversation_id)))
        .group_by(days.c.day)
        .order_by(days.c.day),
        "per_hour": select(hours.c.hour, func.count()).group_by(hours.c.hour),
        "templates": select(
            _e.template_id, func.count(), func.count(distinct(_e.conversation_id))
        ).group_by(_e.template_id),
        "follow_ups": select(
            func.count(),
            func.coalesce(func.sum(case((_e.resolved_question != _e.question, 1), else_=0)), 0),
        ).select_from(_exchanges),
        "lengths": select(lengths.c.exchanges, func.count()).group_by(lengths.c.exchanges),
        "slot_values": select(_v.name, _v.value, mentions, func.count(distinct(_v.conversation_id)))
        .group_by(_v.name, _v.value)
        .order_by(mentions.desc(), _v.name, _v.value)
        .limit(TOP),
    }


async def collect(engine: AsyncEngine, now: datetime | None = None) -> ReportData:
    """Read the report's figures from the database, in one snapshot; ``now`` (default: the
    current time) tells which sessions are live."""
    queries = _queries(engine.dialect.name)
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


BLUE, AMBER, GRID, INK, MUTED = "#2563eb", "#d97706", "#e5e7eb", "#1f2937", "#6b7280"


def _num(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _nice_ticks(top: int, most: int = 5) -> list[int]:
    """Axis ticks from 0 to at least ``top`` in steps of 1, 2 or 5 times a power of ten."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            size = step * factor
            if -(-max(top, 1) // size) <= most:
                return list(range(0, -(-max(top, 1) // size) * size + 1, size))
        step *= 10


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" style="max-width: {width}px" role="img" '
        f'aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return f'<text x="{_num(x)}" y="{_num(y)}"{extra}>{escape(content)}</text>'


def _empty(width: int, label: str, message: str) -> str:
    return _svg(
        width, 120, label, [_text(width / 2, 64, message, text_anchor="middle", fill=MUTED)]
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _y_axis(
    body: list[str], ticks: list[int], left: float, right: float, y_of: Callable[[float], float]
) -> None:
    """Horizontal grid lines with their values on the left."""
    for tick in ticks:
        y = y_of(tick)
        body.append(
            f'<line x1="{_num(left)}" x2="{_num(right)}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="{GRID}" />'
        )
        body.append(_text(left - 8, y + 4, f"{tick:,}", text_anchor="end", fill=MUTED))


def _column_chart(
    labels: Sequence[str], values: Sequence[int], label: str, width: int = 520
) -> str:
    """Vertical bars, one per label, with the value above each when there is room."""
    if not any(values):
        return _empty(width, label, "No exchanges yet")
    height, left, right, top, bottom = 260, 48, 12, 16, 40
    ticks = _nice_ticks(max(values))
    plot_h = height - top - bottom
    slot = (width - left - right) / len(values)

    def y_of(value: float) -> float:
        return top + plot_h * (1 - value / ticks[-1])

    body: list[str] = []
    _y_axis(body, ticks, left, width - right, y_of)
    every = 1 if len(values) <= 12 else 3
    for index, (name, value) in enumerate(zip(labels, values, strict=True)):
        x = left + index * slot + slot * 0.15
        y = y_of(value)
        body.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(slot * 0.7)}" '
            f'height="{_num(top + plot_h - y)}" rx="2" fill="{BLUE}">'
            f"<title>{escape(f'{name}: {value:,}')}</title></rect>"
        )
        center = x + slot * 0.35
        if len(values) <= 12 and value:
            body.append(_text(center, y - 5, f"{value:,}", text_anchor="middle", fill=INK))
        if index % every == 0:
            body.append(_text(center, height - bottom + 18, name, text_anchor="middle", fill=MUTED))
    return _svg(width, height, label, body)


def _bar_chart(rows: Sequence[tuple[str, int, str]], label: str, width: int = 520) -> str:
    """Horizontal bars: (name, value, note) per row, the name on the left, value and note at
    the bar's end."""
    if not rows:
        return _empty(width, label, "Nothing to show yet")
    row_h, name_w, note_w, top = 30, 200, 180, 8
    height = top * 2 + row_h * len(rows)
    longest = max(value for _, value, _ in rows) or 1
    room = width - name_w - note_w - 8
    body: list[str] = []
    for index, (name, value, note) in enumerate(rows):
        y = top + index * row_h
        bar = max(room * value / longest, 2)
        body.append(_text(name_w - 10, y + 19, _short(name, 26), text_anchor="end", fill=INK))
        body.append(
            f'<rect x="{name_w}" y="{y + 5}" width="{_num(bar)}" height="{row_h - 10}" rx="2" '
            f'fill="{BLUE}"><title>{escape(f"{name}: {note}")}</title></rect>'
        )
        body.append(_text(name_w + bar + 8, y + 19, note, fill=MUTED))
    return _svg(width, height, label, body)


def _line_chart(
    days: Sequence[date],
    series: Sequence[tuple[str, Sequence[int], str]],
    label: str,
    width: int = 1000,
) -> str:
    """Lines over days, one per (name, values, colour), with a legend; dots where the days
    are few enough to tell apart."""
    if not days:
        return _empty(width, label, "No exchanges yet")
    height, left, right, top, bottom = 300, 56, 28, 34, 40
    ticks = _nice_ticks(max(max(values) for _, values, _ in series))
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(index: int) -> float:
        return left + (plot_w / 2 if len(days) == 1 else plot_w * index / (len(days) - 1))

    def y_of(value: float) -> float:
        return top + plot_h * (1 - value / ticks[-1])

    body: list[str] = []
    _y_axis(body, ticks, left, width - right, y_of)
    every = max(1, -(-len(days) // 8))
    for index, day in enumerate(days):
        if index % every == 0:
            body.append(
                _text(
                    x_of(index),
                    height - bottom + 20,
                    day.strftime("%d %b"),
                    text_anchor="middle",
                    fill=MUTED,
                )
            )
    x = left
    for name, values, colour in series:
        points = " ".join(f"{_num(x_of(i))},{_num(y_of(v))}" for i, v in enumerate(values))
        body.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5" '
            'stroke-linejoin="round" />'
        )
        if len(days) <= 62:
            for index, value in enumerate(values):
                tip = escape(f"{days[index]:%Y-%m-%d}: {value:,} {name}")
                body.append(
                    f'<circle cx="{_num(x_of(index))}" cy="{_num(y_of(value))}" r="3.5" '
                    f'fill="{colour}"><title>{tip}</title></circle>'
                )
        body.append(f'<rect x="{x}" y="8" width="14" height="14" rx="2" fill="{colour}" />')
        body.append(_text(x + 20, 20, name, fill=INK))
        x += 30 + 8 * len(name)
    return _svg(width, height, label, body)


def _share_chart(part: int, whole: int, label: str, width: int = 520) -> str:
    """One bar split into ``part`` and the rest of ``whole``, with the percentage."""
    if not whole:
        return _empty(width, label, "No questions yet")
    height, left, right = 120, 12, 12
    share = part / whole
    split = (width - left - right) * share
    rest = whole - part
    body = [
        _text(left, 34, f"{share:.1%}", font_size="28", font_weight="600", fill=INK),
        _text(left + 120, 34, f"{part:,} of {whole:,} questions were follow-ups", fill=MUTED),
        f'<rect x="{left}" y="52" width="{_num(width - left - right)}" height="28" rx="3" '
        f'fill="{GRID}"><title>{escape(f"{rest:,} questions on their own")}</title></rect>',
        f'<rect x="{left}" y="52" width="{_num(split)}" height="28" rx="3" fill="{AMBER}">'
        f"<title>{escape(f'{part:,} follow-ups')}</title></rect>",
        f'<rect x="{left}" y="94" width="12" height="12" rx="2" fill="{AMBER}" />',
        _text(left + 18, 104, "follow-up (resolved from earlier turns)", fill=MUTED),
        f'<rect x="{left + 290}" y="94" width="12" height="12" rx="2" fill="{GRID}" />',
        _text(left + 308, 104, "on its own", fill=MUTED),
    ]
    return _svg(width, height, label, body)


_STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #1f2937;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 20px 40px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.1rem; margin: 0 0 2px; }
p.lead, p.note, footer { color: #4b5563; margin: 0 0 12px; }
p.note { font-size: 0.9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr));
  gap: 12px; margin: 20px 0; }
.card { background: #fff; border-radius: 10px; padding: 14px 16px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, 0.06); }
.card b { display: block; font-size: 1.6rem; line-height: 1.2; }
.card span { color: #4b5563; font-size: 0.9rem; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(400px, 1fr)); gap: 16px; }
section { background: #fff; border-radius: 10px; padding: 16px 20px; margin: 0 0 16px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, 0.06); min-width: 0; }
svg { display: block; width: 100%; height: auto; margin: 0 auto;
  font-size: 13px; font-family: inherit; }
footer { font-size: 0.85rem; margin-top: 24px; }
"""


def _section(title: str, note: str, chart: str) -> str:
    return f'<section><h2>{escape(title)}</h2><p class="note">{escape(note)}</p>{chart}</section>'


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
    period = f"{days[0]:%d %b %Y} – {days[-1]:%d %b %Y}" if days else "no exchanges yet"
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
            _line_chart(
                days,
                [
                    ("exchanges", [asked for _, asked, _ in data.per_day], BLUE),
                    ("conversations", [among for _, _, among in data.per_day], AMBER),
                ],
                "Conversations and exchanges per day",
            ),
        ),
        '<div class="pair">',
        _section(
            "Top templates",
            f"Questions per template, the {TOP} most asked.",
            _bar_chart(templates, "Questions per template"),
        ),
        _section(
            "Top slot values",
            f"What people asked about: slot values by mentions, the {TOP} most mentioned.",
            _bar_chart(slots, "Most mentioned slot values"),
        ),
        _section(
            "Follow-up rate",
            "Questions stored with a resolved question that differs from what was typed.",
            _share_chart(data.follow_ups, data.questions, "Follow-up rate"),
        ),
        _section(
            "Conversation length",
            "Conversations by their number of exchanges.",
            _column_chart(length_labels, length_counts, "Conversations by number of exchanges"),
        ),
        "</div>",
        _section(
            "Load per hour of the day",
            "Exchanges per hour (UTC), over the whole period.",
            _column_chart(
                [f"{hour:02d}" for hour in range(24)],
                data.per_hour,
                "Exchanges per hour of the day",
                width=1000,
            ),
        ),
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
        f"<footer>Made by convostore at {now:%Y-%m-%d %H:%M} UTC from the views exchanges and "
        "slot_values, over live conversations and the transcripts kept after their session "
        "ended.</footer></main></body></html>\n"
    )


def _of(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"
