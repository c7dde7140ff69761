"""Database URLs: which ones convostore can use, what to write instead, and how to show one
without its password."""

from __future__ import annotations

import importlib.util
import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

__all__ = ["DRIVERS", "check_database_url", "hide_password"]

DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
"""The async driver convostore runs each backend on (the hot paths call these drivers)."""

_BACKEND_ALIASES = {"postgres": "postgresql"}
_EXAMPLES = "sqlite+aiosqlite:///file.db or postgresql+asyncpg://user:password@host/database"
_CREDENTIALS = re.compile(r"^([A-Za-z][\w+.-]*://)?.*@", re.DOTALL)


def hide_password(url: str | URL) -> str:
    """``url`` as text with its password shown as ``***``; text that is not a URL loses
    everything before its last ``@``, where a password would be."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _CREDENTIALS.sub(r"\1***@", str(url))


def check_database_url(url: str | URL, what: str = "database_url") -> URL:
    """The parsed ``url`` if convostore can use it, else ``ConfigError`` saying what to write
    instead; ``what`` names the URL's origin in the message. Imports no driver."""
    shown = hide_password(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{what} {shown!r} is not a database URL SQLAlchemy can parse; write {_EXAMPLES}"
        ) from None
    named, _, driver = parsed.drivername.partition("+")
    backend = _BACKEND_ALIASES.get(named, named)
    wanted = DRIVERS.get(backend)
    if wanted is None:
        raise ConfigError(
            f"{what} {shown!r} is a {named} database; convostore supports SQLite and "
            f"PostgreSQL: write {_EXAMPLES}"
        )
    if driver != wanted:
        fixed = hide_password(parsed.set(drivername=f"{backend}+{wanted}"))
        has = f"the {driver} driver" if driver else "no driver"
        raise ConfigError(
            f"{what} {shown!r} names {has}; convostore runs {backend} on the async driver "
            f"{wanted}: write {fixed!r}"
        )
    if wanted == "asyncpg" and importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            f"{what} {shown!r} needs the asyncpg driver, which is not installed: "
            'pip install "convostore[postgres]"'
        )
    return parsed
