"""``python -m bench``: parse the command line, run, print the table and write the results."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import cast

from .backends import BACKENDS, BackendName
from .options import Options
from .plots import write_plots
from .report import render_text, write_outputs
from .runner import run
from .scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _backends(text: str) -> tuple[BackendName, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if name not in BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {name!r}: {', '.join(BACKENDS)}")
    return cast(tuple[BackendName, ...], names)


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if name not in SCENARIOS:
            raise argparse.ArgumentTypeError(f"unknown scenario {name!r}: {', '.join(SCENARIOS)}")
    return names


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="convostore's benchmark: every hot path beside the raw driver and the "
        "original SessionManager, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds (CI): proves it runs")
    parser.add_argument("--peers", action="store_true", help="also run the peer stores")
    parser.add_argument(
        "--scale",
        type=int,
        default=20_000,
        metavar="N",
        help="sessions in the large-store test (10 turns each; the full run's: 1000000)",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=BACKENDS,
        help=f"comma-separated: {','.join(BACKENDS)} (default all three)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench/results, or bench/results/quick with --quick)",
    )
    parser.add_argument(
        "--only",
        type=_scenarios,
        default=(),
        help=f"comma-separated scenarios to run ({','.join(SCENARIOS)}); BENCHMARKS.md untouched",
    )
    parser.add_argument(
        "--no-benchmarks-md",
        action="store_true",
        help="do not rewrite BENCHMARKS.md (never rewritten by --quick)",
    )
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    write_md = not (args.quick or args.no_benchmarks_md or args.only)
    return Options(
        quick=args.quick,
        peers=args.peers or "peers" in args.only,
        scale=args.scale,
        backends=args.backends,
        out=out,
        benchmarks_md=ROOT / "BENCHMARKS.md" if write_md else None,
        command=shlex.join(["python", "-m", "bench", *argv]),
        only=args.only,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        from .soak import main as soak

        return soak(argv[1:])
    if argv[:1] == ["sizes"]:
        from .sizes import main as sizes

        return sizes(argv[1:])
    options = parse(argv)
    record = asyncio.run(run(options))
    options.out.mkdir(parents=True, exist_ok=True)
    plots, note = write_plots(record["series"], options.out)
    if note:
        record["notes"].append(note)
        print(f"  note: {note}")
    record["plots"] = plots
    write_outputs(record, options.out, options.benchmarks_md)
    print()
    print(render_text(record))
    written = [options.out / "latest.json", options.out / "latest.md"]
    written += [options.out / name for name in plots]
    if options.benchmarks_md is not None:
        written.append(options.benchmarks_md)
    print("wrote " + ", ".join(str(path) for path in written))
    if record["failures"]:
        print("FAILED: " + "; ".join(record["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
