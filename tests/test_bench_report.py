"""The benchmark report's figures: each in the unit its rounded value reads best in."""

from __future__ import annotations

import pytest

from bench.report import format_value


@pytest.mark.parametrize(
    ("value", "kind", "shown"),
    [
        (2e-6, "time", "2 µs"),
        (0.000999, "time", "999 µs"),
        (0.0009996, "time", "1 ms"),  # was "1e+03 µs"
        (0.5, "time", "500 ms"),
        (0.9996, "time", "1 s"),
        (1.5, "time", "1.5 s"),
        (12_395.4, "rate", "12,395/s"),
        (20_959, "bytes", "20,959 B"),
        (None, "time", "—"),
    ],
)
def test_format_value(value: float | None, kind: str, shown: str) -> None:
    assert format_value(value, kind) == shown
