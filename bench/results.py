"""The result model: a ``Row`` per line of the table, each with its figures, ratio and target."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .timing import Stats

__all__ = ["Figure", "Kind", "Row", "figure"]

Kind = Literal["latency", "rate", "bytes"]
"""What a figure's numbers are: seconds per operation, operations per second, or bytes."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured series: who ran it, and its median and p95 (p95 is None where a single
    number is all there is, e.g. bytes per session)."""

    label: str
    median: float
    p95: float | None = None
    n: int = 1
    kind: Kind = "latency"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def figure(label: str, stats: Stats, kind: Kind = "latency") -> Figure:
    """A ``Figure`` from timing statistics."""
    return Figure(label, stats.median, stats.p95, stats.n, kind)


@dataclass(slots=True)
class Row:
    """One line of the results table.

    ``ratio`` is the number the target is judged on, described by ``ratio_of`` (e.g.
    "convostore / raw"); ``met`` is None where the row has no target.
    """

    key: str
    path: str
    backend: str
    convostore: Figure | None
    raw: Figure | None = None
    others: list[Figure] = field(default_factory=list)
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.path,
            "backend": self.backend,
            "convostore": self.convostore.as_dict() if self.convostore else None,
            "raw": self.raw.as_dict() if self.raw else None,
            "others": [other.as_dict() for other in self.others],
            "ratio": self.ratio,
            "ratio_of": self.ratio_of,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }
