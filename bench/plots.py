"""The two plots, drawn with matplotlib when it is installed (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_plots"]


def write_plots(series: dict[str, Any], out: Path) -> tuple[list[str], str | None]:
    """Draw the plots the run has data for into ``out``. Returns the file names written and
    a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots (pip install -e '.[bench]')"
    written = []
    if "append_vs_history" in series:
        panels = series["append_vs_history"]
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for ax, (backend, data) in zip(axes[0], panels.items(), strict=True):
            for label, values in data["series"].items():
                ax.plot(data["x"], [v * 1e3 for v in values], marker="o", label=label)
            ax.set(xscale="log", yscale="log", title=f"append one exchange ({backend})")
            ax.set(xlabel="stored turns in the session", ylabel="median latency (ms)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "append_vs_history.png", dpi=110)
        plt.close(fig)
        written.append("append_vs_history.png")
    if "hit_vs_cached" in series:
        data = series["hit_vs_cached"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, values in data["series"].items():
            ax.plot(data["x"], [v * 1e6 for v in values], marker="o", label=label)
        ax.set(xscale="log", yscale="log", title="cache-hit get")
        ax.set(xlabel="cached sessions", ylabel="median latency (µs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "hit_vs_cached.png", dpi=110)
        plt.close(fig)
        written.append("hit_vs_cached.png")
    return written, None
