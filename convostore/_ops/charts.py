"""The report's charts as inline SVG, drawn for the width they are shown at.

A chart scales with its ``viewBox``, and its text with it: one drawn 1,000 units wide and shown
on a 390 px phone has 4 px text. So each chart is drawn once per width it may be shown at
(``responsive``) and ``VARIANT_CSS`` shows the one for the viewport: the text stays within a
few pixels of 13 px at every width, and each layout (labels, legends, bars) is made to fit the
width it is drawn for. No scripts: the page stays one self-contained file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

__all__ = [
    "AMBER",
    "BLUE",
    "HALF",
    "VARIANT_CSS",
    "WIDE",
    "Chart",
    "bar_chart",
    "column_chart",
    "per_day_chart",
    "responsive",
    "share_chart",
]

BLUE, AMBER, GRID, INK, MUTED = "#2563eb", "#d97706", "#e5e7eb", "#1f2937", "#6b7280"

WIDE: Mapping[str, int] = {"s": 340, "m": 640, "l": 1000}
"""A chart across the page: its width per viewport class (``VARIANT_CSS``)."""
HALF: Mapping[str, int] = {"s": 340, "m": 520, "l": 520}
"""A chart that shares a row with another on a wide screen."""
VARIANT_CSS = """
svg.m, svg.l { display: none; }
@media (min-width: 600px) { svg.s { display: none; } svg.m { display: block; } }
@media (min-width: 960px) { svg.m { display: none; } svg.l { display: block; } }
"""
"""Shows the variant of each chart drawn for the viewport: ``s`` below 600 px (a phone: room
for about 340 units), ``m`` up to 960 px, ``l`` above."""

_CHAR = 7.5
"""Width of an average character of the 13 px text, a little generous, for fitting labels."""
_WIDEST_COLUMN = 64
"""A column is at most this wide, so that a few look like columns, not like blocks."""
_DAYS_AS_COLUMNS = 14
"""Up to this many days, exchanges and conversations per day are columns side by side, which
never hide each other; beyond, lines."""


@dataclass(frozen=True)
class Chart:
    """An SVG drawing: its size in user units, what it shows (for screen readers), its parts."""

    width: int
    height: float
    label: str
    body: list[str]

    def svg(self, classes: str) -> str:
        return (
            f'<svg class="{classes}" viewBox="0 0 {self.width} {_num(self.height)}" '
            f'style="max-width: {self.width}px" role="img" aria-label="{escape(self.label)}">'
            f"<title>{escape(self.label)}</title>{''.join(self.body)}</svg>"
        )


def responsive(draw: Callable[[int], Chart], widths: Mapping[str, int]) -> str:
    """The chart drawn at each width of ``widths`` (viewport class -> width), once per distinct
    width, each SVG carrying the classes of the viewports it is for."""
    classes: dict[int, list[str]] = {}
    for variant, width in widths.items():
        classes.setdefault(width, []).append(variant)
    return "".join(draw(width).svg(" ".join(names)) for width, names in classes.items())


def _num(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text_width(text: str) -> float:
    return len(text) * _CHAR


def _nice_ticks(top: int, most: int = 5) -> list[int]:
    """Axis ticks from 0 to at least ``top`` in steps of 1, 2 or 5 times a power of ten."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            size = step * factor
            if -(-max(top, 1) // size) <= most:
                return list(range(0, -(-max(top, 1) // size) * size + 1, size))
        step *= 10


def _text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return f'<text x="{_num(x)}" y="{_num(y)}"{extra}>{escape(content)}</text>'


def _rect(x: float, y: float, width: float, height: float, colour: str, tip: str = "") -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    return (
        f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(width)}" height="{_num(height)}" '
        f'rx="2" fill="{colour}">{title}</rect>'
    )


def _empty(width: int, label: str, message: str) -> Chart:
    return Chart(
        width, 120, label, [_text(width / 2, 64, message, text_anchor="middle", fill=MUTED)]
    )


def _short(text: str, room: float) -> str:
    """``text`` cut with an ellipsis to fit ``room`` units."""
    limit = max(4, int(room / _CHAR))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _every(count: int, label_width: float, room: float) -> int:
    """Label every n-th of ``count`` places spread over ``room`` so that labels of
    ``label_width`` keep apart."""
    return max(1, -(-int((label_width + 8) * count) // max(int(room), 1)))


def _legend(body: list[str], series: Sequence[tuple[str, str]], x: float, y: float) -> None:
    """A swatch and a name per (name, colour), in a row from (``x``, ``y``)."""
    for name, colour in series:
        body.append(_rect(x, y, 14, 14, colour))
        body.append(_text(x + 20, y + 12, name, fill=INK))
        x += 34 + _text_width(name)


class _Plot:
    """The frame of a chart with a value axis: margins, ticks, and where a value goes."""

    def __init__(self, width: int, height: int, top: float, bottom: float, peak: int) -> None:
        self.ticks = _nice_ticks(peak)
        self.left = 16 + _text_width(f"{self.ticks[-1]:,}")
        self.right = width - 12
        self.top, self.bottom = top, height - bottom

    @property
    def width(self) -> float:
        return self.right - self.left

    def y(self, value: float) -> float:
        return self.bottom - (self.bottom - self.top) * value / self.ticks[-1]

    def axis(self, body: list[str]) -> None:
        """Horizontal grid lines with their values on the left."""
        for tick in self.ticks:
            y = _num(self.y(tick))
            body.append(
                f'<line x1="{_num(self.left)}" x2="{_num(self.right)}" y1="{y}" y2="{y}" '
                f'stroke="{GRID}" />'
            )
            body.append(
                _text(self.left - 8, self.y(tick) + 4, f"{tick:,}", text_anchor="end", fill=MUTED)
            )

    def labels(self, body: list[str], names: Sequence[str], center: Callable[[int], float]) -> None:
        """The names under the plot, as many as fit."""
        every = _every(len(names), max(map(_text_width, names)), self.width)
        for index, name in enumerate(names):
            if index % every == 0:
                body.append(
                    _text(center(index), self.bottom + 18, name, text_anchor="middle", fill=MUTED)
                )


def _columns(
    plot: _Plot,
    body: list[str],
    series: Sequence[tuple[str, Sequence[int], str]],
    names: Sequence[str],
) -> Callable[[int], float]:
    """Columns, one group per name with a column per series side by side, each with its value
    above it where it fits. Returns the centre of a group."""
    slot = plot.width / len(names)
    column = min(slot * 0.7 / len(series), _WIDEST_COLUMN)
    margin = (slot - column * len(series)) / 2
    peak = max(_text_width(f"{max(values):,}") for _, values, _ in series)
    for offset, (what, values, colour) in enumerate(series):
        for index, (name, value) in enumerate(zip(names, values, strict=True)):
            x = plot.left + index * slot + margin + offset * column
            y = plot.y(value)
            body.append(_rect(x, y, column, plot.bottom - y, colour, f"{name}: {value:,} {what}"))
            if value and peak <= column + 6:
                body.append(
                    _text(x + column / 2, y - 5, f"{value:,}", text_anchor="middle", fill=INK)
                )
    return lambda index: plot.left + (index + 0.5) * slot


def column_chart(labels: Sequence[str], values: Sequence[int], label: str, width: int) -> Chart:
    """Vertical bars, one per label, with the value above each where there is room."""
    if not any(values):
        return _empty(width, label, "No exchanges yet")
    plot = _Plot(width, 260, 20, 40, max(values))
    body: list[str] = []
    plot.axis(body)
    center = _columns(plot, body, [("", values, BLUE)], labels)
    plot.labels(body, labels, center)
    return Chart(width, 260, label, body)


def bar_chart(rows: Sequence[tuple[str, int, str]], label: str, width: int) -> Chart:
    """Horizontal bars: (name, value, note) per row. Wide: the name on the left, the note at
    the bar's end; narrow: the name above its bar."""
    if not rows:
        return _empty(width, label, "Nothing to show yet")
    longest = max(value for _, value, _ in rows) or 1
    note_w = max(_text_width(note) for _, _, note in rows) + 8
    stacked = width < 480
    name_w = 0.0 if stacked else min(200.0, width * 0.38)
    row_h = 46 if stacked else 30
    room = width - name_w - note_w
    body: list[str] = []
    for index, (name, value, note) in enumerate(rows):
        y = 8 + index * row_h
        bar = max(room * value / longest, 2)
        if stacked:
            body.append(_text(0, y + 14, _short(name, width), fill=INK))
            y += 18
        else:
            body.append(
                _text(name_w - 10, y + 19, _short(name, name_w - 14), text_anchor="end", fill=INK)
            )
        body.append(
            _rect(name_w, y + 5, bar, row_h - 10 if not stacked else 18, BLUE, f"{name}: {note}")
        )
        body.append(_text(name_w + bar + 8, y + 19, note, fill=MUTED))
    return Chart(width, 16 + row_h * len(rows), label, body)


def per_day_chart(
    days: Sequence[date], series: Sequence[tuple[str, Sequence[int], str]], label: str, width: int
) -> Chart:
    """Values per day, one series per (name, values, colour), with a legend: columns side by
    side for up to two weeks, else lines (the second dashed, so that where they meet the first
    still shows), with dots while the days are few enough to tell apart."""
    if not days:
        return _empty(width, label, "No exchanges yet")
    height = 300
    plot = _Plot(width, height, 40, 40, max(max(values) for _, values, _ in series))
    body: list[str] = []
    plot.axis(body)
    _legend(body, [(name, colour) for name, _, colour in series], plot.left, 8)
    names = [day.strftime("%d %b") for day in days]
    if len(days) <= _DAYS_AS_COLUMNS:
        center = _columns(plot, body, series, names)
    else:

        def center(index: int) -> float:
            return plot.left + plot.width * index / (len(days) - 1)

        for line, (name, values, colour) in enumerate(series):
            points = " ".join(f"{_num(center(i))},{_num(plot.y(v))}" for i, v in enumerate(values))
            dashes = ' stroke-dasharray="7 5"' if line else ""
            body.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5" '
                f'stroke-linejoin="round"{dashes} />'
            )
            if len(days) <= 62:
                for index, value in enumerate(values):
                    tip = escape(f"{days[index]:%Y-%m-%d}: {value:,} {name}")
                    body.append(
                        f'<circle cx="{_num(center(index))}" cy="{_num(plot.y(value))}" '
                        f'r="{3.5 - line}" fill="{colour}"><title>{tip}</title></circle>'
                    )
    plot.labels(body, names, center)
    return Chart(width, height, label, body)


def share_chart(part: int, whole: int, label: str, width: int) -> Chart:
    """One bar split into ``part`` and the rest of ``whole``, with the percentage; what does
    not fit beside it goes on the next line."""
    if not whole:
        return _empty(width, label, "No questions yet")
    share = part / whole
    rest = whole - part
    sentence = f"{part:,} of {whole:,} questions were follow-ups"
    body = [_text(0, 30, f"{share:.1%}", font_size="28", font_weight="600", fill=INK)]
    y = 30.0
    if 120 + _text_width(sentence) <= width:
        body.append(_text(120, y, sentence, fill=MUTED))
    else:
        y += 24
        body.append(_text(0, y, sentence, fill=MUTED))
    y += 16
    body.append(_rect(0, y, width, 28, GRID, f"{rest:,} questions on their own"))
    body.append(_rect(0, y, width * share, 28, AMBER, f"{part:,} follow-ups"))
    y += 42
    x = 0.0
    for name, colour in (("follow-up (resolved from earlier turns)", AMBER), ("on its own", GRID)):
        if x and x + 18 + _text_width(name) > width:
            x, y = 0.0, y + 22
        body.append(_rect(x, y, 12, 12, colour))
        body.append(_text(x + 18, y + 11, name, fill=MUTED))
        x += 36 + _text_width(name)
    return Chart(width, y + 20, label, body)
