"""One run: open the backends, run every scenario, and collect rows, notes and plot data."""

from __future__ import annotations

import time
import traceback
from typing import Any

from .backends import MARIADB_URL_ENV, POSTGRES_URL_ENV, BackendName, Server, open_server
from .baselines import load_seed, seed_path
from .context import Context
from .machine import machine_facts
from .options import Options, Sizes
from .scenarios import SCENARIOS

__all__ = ["run"]


async def _servers(
    ctx_notes: list[str], names: tuple[BackendName, ...]
) -> dict[BackendName, Server]:
    servers: dict[BackendName, Server] = {}
    for name in names:
        try:
            servers[name] = await open_server(name)
        except (OSError, ImportError, Exception) as exc:  # any failure to reach it: skip it
            message = f"{name} is not available ({exc!r}); its rows are skipped"
            if name != "sqlite":
                env = POSTGRES_URL_ENV if name == "postgresql" else MARIADB_URL_ENV
                message += f" (set {env})"
            print(f"  note: {message}", flush=True)
            ctx_notes.append(message)
    return servers


async def run(options: Options) -> dict[str, Any]:
    """Run the benchmark and return its record (what ``latest.json`` holds)."""
    notes: list[str] = []
    servers = await _servers(notes, options.backends)
    seed = load_seed()
    if seed is None:
        message = f"original SessionManager not found at {seed_path()}: its baselines are skipped"
        print(f"  note: {message}", flush=True)
        notes.append(message)
    ctx = Context(options, Sizes.for_run(options.quick, options.scale), servers, seed, notes)
    rows = []
    failures = []
    started = time.perf_counter()
    try:
        for name, (title, scenario) in SCENARIOS.items():
            if options.only and name not in options.only:
                continue
            print(f"== {title}", flush=True)
            start = time.perf_counter()
            try:
                rows += await scenario(ctx)
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{title}: {exc!r}")
                ctx.note(f"scenario {title!r} failed: {exc!r}")
            print(f"   {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        for server in servers.values():
            await server.close()
    return {
        "command": options.command,
        "quick": options.quick,
        "scale": options.scale,
        "backends": list(servers),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_facts({name: s.version for name, s in servers.items()}),
        "rows": [row.as_dict() for row in rows],
        "series": ctx.series,
        "notes": ctx.notes,
        "failures": failures,
    }
