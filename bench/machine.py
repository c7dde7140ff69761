"""Facts about the machine and software a run measured on, for the report."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine_facts"]

_PACKAGES = ("convostore", "sqlalchemy", "asyncpg", "aiosqlite", "asyncmy", "pydantic", "redis")


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _memory() -> str | None:
    total = _first("/proc/meminfo", "MemTotal")
    if total is None or not total.endswith(" kB"):
        return total
    return f"{int(total[:-3]) / 2**20:.1f} GiB"


def _git(root: Path) -> str | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine_facts(server_versions: dict[str, str]) -> dict[str, Any]:
    """Cores, CPU, memory, OS, Python, SQLite and server versions, packages, commit, date."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "memory": _memory(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "postgresql": server_versions.get("postgresql"),
        "mariadb": server_versions.get("mariadb"),
        "packages": versions,
        "commit": _git(Path(__file__).resolve().parent.parent),
    }
