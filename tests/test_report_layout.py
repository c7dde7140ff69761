"""The HTML report as a browser lays it out, measured in headless Chromium at a phone's width
(390 px), a tablet's and a desktop's (1280 px): the page never scrolls sideways, every chart
text is at least ``SMALLEST_TEXT_PX`` on screen and inside its chart, exactly one drawing of each
chart shows, and no series of the per-day chart hides under the other, with one day of data
(both series equal), two weeks (the most drawn as columns) and sixty days (lines).

The page is shown in an iframe of the width under test (headless Chromium makes no window
narrower than 500 px, and an iframe's width is the viewport its page lays out and answers
media queries for). A script added to the page measures after layout and writes the figures
into the outer page's DOM, which ``--dump-dom`` prints. CI installs Chromium (.ci/run);
elsewhere the test is skipped when it is missing, and in CI (``CI=true``) it fails instead.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from convostore._ops.report import ReportData, render

SMALLEST_TEXT_PX = 11.0
WIDTHS = (390, 768, 1280)
CHARTS = 6

MEASURE = """
<script>
(() => {
  const root = document.documentElement;
  const shown = [...document.querySelectorAll("svg")].filter(
    (svg) => getComputedStyle(svg).display !== "none");
  let smallest = Infinity;
  const outside = [];
  for (const svg of shown) {
    const frame = svg.getBoundingClientRect();
    for (const text of svg.querySelectorAll("text")) {
      const size = parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a;
      smallest = Math.min(smallest, size);
      const box = text.getBoundingClientRect();
      if (box.left < frame.left - 1 || box.right > frame.right + 1) {
        outside.push(text.textContent);
      }
    }
  }
  const marks = (colour) => [...shown[0].querySelectorAll(`[fill="${colour}"]`)]
    .filter((mark) => mark.querySelector("title"))
    .map((mark) => mark.getBoundingClientRect());
  const covered = (box, by) => {
    const w = Math.min(box.right, by.right) - Math.max(box.left, by.left);
    const h = Math.min(box.bottom, by.bottom) - Math.max(box.top, by.top);
    return w > 0 && h > 0 && w * h >= 0.5 * box.width * box.height;
  };
  const first = marks("#2563eb"), second = marks("#d97706");
  const hidden = first.filter((box) => second.some((by) => covered(box, by))).length
    + second.filter((box) => first.some((by) => covered(box, by))).length;
  const figures = {
    inner: window.innerWidth, client: root.clientWidth, scroll: root.scrollWidth,
    charts: shown.length, smallest: smallest, outside: outside, hidden: hidden,
    series: [first.length, second.length],
  };
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(figures);
  window.parent.document.body.append(out);
})();
</script>
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


def _data(days: int) -> ReportData:
    """Figures of ``days`` days; with one day, each conversation asked one question, so both
    series of the per-day chart have the same value. Long names and big numbers, to fit."""
    first = date(2026, 11, 1)
    per_day = [
        (first + timedelta(days=n), 1_000 + 37 * (n % 9), 400 + 11 * (n % 5)) for n in range(days)
    ]
    if days == 1:
        per_day = [(first, 4, 4)]
    questions = sum(asked for _, asked, _ in per_day)
    return ReportData(
        conversations=12_345,
        live=67,
        per_day=per_day,
        per_hour=[(hour * 7919) % 5_000 for hour in range(24)],
        templates=[
            (f"archives_in_place_with_a_rather_long_template_name_{n}", 9_000 - n, 4_000)
            for n in range(10)
        ],
        questions=questions,
        follow_ups=questions // 3,
        lengths={1: 5_000, 2: 3_000, 3: 1_000, 7: 800, 15: 300, 40: 90, 120: 12},
        slot_values=[
            ("place", f"’s-Hertogenbosch aan de Dommel, Noord-Brabant {n}", 8_000 - n, 7_000)
            for n in range(10)
        ],
        feedback_templates=[
            (
                f"archives_in_place_with_a_rather_long_template_name_{n}",
                90_000 - n,
                60_000,
                30_000,
                -1.5,
            )
            for n in range(10)
        ],
        feedback_days=[(day, 1_000_000, 600_000, 400_000) for day, _, _ in per_day],
        roles=[
            (role, 12_345_678, 1_234_567, 123_456)
            for role in ("assistant", "system", "tool", "user")
        ],
    )


def _measure(chromium: str, page: Path, width: int, profile: Path) -> dict[str, Any]:
    """The figures of ``MEASURE`` for ``page`` laid out ``width`` px wide."""
    report = page.read_text(encoding="utf-8").replace("</body>", f"{MEASURE}</body>")
    measured = page.with_suffix(f".{width}.html")
    measured.write_text(
        '<!DOCTYPE html><html><body style="margin: 0">'
        f'<iframe style="border: 0; width: {width}px; height: 900px" '
        f'srcdoc="{html.escape(report, quote=True)}"></iframe></body></html>',
        encoding="utf-8",
    )
    run = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width + 100},1000",
            "--dump-dom",
            measured.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="measured">(.*?)</pre>', run.stdout, flags=re.DOTALL)
    assert found is not None, (run.returncode, run.stderr[-2000:])
    figures: dict[str, Any] = json.loads(html.unescape(found[1]))
    return figures


@pytest.mark.parametrize("days", [1, 14, 60])
@pytest.mark.parametrize("width", WIDTHS)
def test_report_fits_the_screen(tmp_path: Path, width: int, days: int) -> None:
    """At each width: no sideways scrolling, one drawing per chart, readable text inside its
    chart, and both series of the per-day chart visible."""
    chromium = _chromium()
    page = tmp_path / "report.html"
    generated = datetime(2026, 12, 1, tzinfo=timezone.utc)
    page.write_text(render(_data(days), "sqlite+aiosqlite:///chat.db", generated), "utf-8")
    figures = _measure(chromium, page, width, tmp_path / "profile")
    assert figures["inner"] == width, figures
    assert figures["scroll"] <= figures["client"], figures
    assert figures["charts"] == CHARTS, figures
    assert figures["smallest"] >= SMALLEST_TEXT_PX, figures
    assert figures["outside"] == [], figures
    assert figures["series"][0] == figures["series"][1] >= days, figures
    assert figures["hidden"] == 0, figures
