"""Database URLs: which ones convostore can use, what to write instead, how to show one
without its password, and how a PostgreSQL URL's libpq options reach asyncpg.

People paste PostgreSQL URLs written for libpq (``?sslmode=require&connect_timeout=10``).
SQLAlchemy hands a URL's query to ``asyncpg.connect`` as keywords, and asyncpg takes none of
those names as keywords: it reads libpq's SSL options, ``application_name`` and ``options``
only from a DSN. ``asyncpg_arguments`` moves them there (and ``connect_timeout`` to asyncpg's
``timeout``); every connection convostore opens goes through it. libpq options asyncpg has no
equivalent for are a ``ConfigError`` saying what to write instead."""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from convostore.errors import ConfigError

__all__ = [
    "DRIVERS",
    "SSL_MODES",
    "asyncpg_arguments",
    "check_asyncpg_url",
    "check_database_url",
    "hide_password",
]

DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mariadb": "asyncmy"}
"""The async driver convostore runs each backend on (each backend's ``Backend.driver``; here
so that a URL is checked without importing any backend)."""

_BACKEND_ALIASES = {"postgres": "postgresql"}
_EXAMPLES = (
    "sqlite+aiosqlite:///file.db, postgresql+asyncpg://user:password@host/database or "
    "mariadb+asyncmy://user:password@host/database"
)
_CREDENTIALS = re.compile(r"^([A-Za-z][\w+.-]*://)?.*@", re.DOTALL)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""libpq's ``sslmode`` values, which asyncpg takes too."""
_IN_DSN = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "application_name",
        "options",
        "dbname",
    }
)
"""libpq options asyncpg reads from a DSN only (``application_name`` and ``options`` as
server settings, as libpq sends them)."""
_INSTEAD = {
    "requiressl": "sslmode=require",
    "fallback_application_name": "application_name=...",
    "hostaddr": "the address as the URL's host",
    "client_encoding": "nothing: asyncpg always talks UTF-8",
}
"""libpq options asyncpg has no equivalent for, with what to write instead; any other libpq
option that is not a keyword of ``asyncpg.connect`` is refused too."""
_ADAPTER_OPTIONS = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})
"""Keywords SQLAlchemy's asyncpg adapter takes for itself."""
_FILES = frozenset({"sslrootcert", "sslcert", "sslkey", "sslcrl"})
"""libpq options that name a file, which asyncpg reads when it connects."""
_TIMEOUTS = frozenset({"connect_timeout", "timeout"})
"""libpq's and asyncpg's name of the connect timeout, in seconds."""
_NOT_IN_URLS = frozenset({"dsn", "loop", "connection_class", "record_class", "server_settings"})
"""Keywords of ``asyncpg.connect`` that text in a URL cannot give."""
_DRIVER = "asyncpg, convostore's PostgreSQL driver,"


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
            f"{what} {shown!r} is a {named} database; convostore supports SQLite, "
            f"PostgreSQL and MariaDB: write {_EXAMPLES}"
        )
    if driver != wanted:
        fixed = hide_password(parsed.set(drivername=f"{backend}+{wanted}"))
        has = f"the {driver} driver" if driver else "no driver"
        raise ConfigError(
            f"{what} {shown!r} names {has}; convostore runs {backend} on the async driver "
            f"{wanted}: write {fixed!r}"
        )
    from convostore.backends import backend_for

    backend_for(backend).check_url(parsed, what)
    return parsed


def check_asyncpg_url(parsed: URL, what: str) -> None:
    """``ConfigError`` if asyncpg is not installed or the URL has options it cannot take."""
    shown = hide_password(parsed)
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            f"{what} {shown!r} needs the asyncpg driver, which is not installed: "
            'pip install "convostore[postgres]"'
        )
    if parsed.query:
        problem = _query_problem(parsed.query)
        if problem is not None:
            raise ConfigError(f"{what} {shown!r}: {problem}")


def _query_problem(query: Mapping[str, str | tuple[str, ...]]) -> str | None:
    """What is wrong with the options of a PostgreSQL URL, if anything."""
    for name, value in query.items():
        if not isinstance(value, str):
            return f"{name} is given {len(value)} times; give it once"
        problem = _option_problem(name, value)
        if problem is not None:
            return problem
    for pair in (("sslmode", "ssl"), ("connect_timeout", "timeout")):
        if query.keys() >= set(pair):
            return f"give {pair[0]} or {pair[1]}, not both"
    return None


def _option_problem(name: str, value: str) -> str | None:
    """What is wrong with option ``name`` of a PostgreSQL URL, if anything: a libpq option
    asyncpg cannot follow, a value it would refuse, or a name it does not know."""
    if name in _INSTEAD:
        return f"{_DRIVER} has no option {name}: write {_INSTEAD[name]} instead"
    if name in ("sslmode", "ssl") and value not in SSL_MODES:
        return f"{name} must be one of {', '.join(SSL_MODES)}, not {value!r}"
    if name in _TIMEOUTS:
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0
        if not 0 < seconds < float("inf"):
            return f"{name} must be a positive number of seconds, not {value!r}"
    if name in _FILES and not Path(value).is_file():
        return f"{name} {value!r} is not a file"
    if name in _IN_DSN or name in _ADAPTER_OPTIONS or name in _TIMEOUTS:
        return None
    import asyncpg  # installed: check_database_url made sure

    if name not in inspect.signature(asyncpg.connect).parameters or name in _NOT_IN_URLS:
        return (
            f"{_DRIVER} takes no option {name}: remove it (it takes libpq's "
            f"{', '.join(sorted(_IN_DSN))} and connect_timeout, and the keywords of "
            "asyncpg.connect)"
        )
    return None


def asyncpg_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords for ``asyncpg.connect`` that say what ``arguments`` (SQLAlchemy's, from a
    URL checked by ``check_database_url``) say: libpq's options in a DSN of their own (the
    other keywords, host and database among them, take precedence over a DSN),
    ``connect_timeout`` as ``timeout``, in seconds (a number, as asyncpg needs it)."""
    translated = {name: value for name, value in arguments.items() if name not in _IN_DSN}
    in_dsn = {name: value for name, value in arguments.items() if name in _IN_DSN}
    if in_dsn:
        translated["dsn"] = "postgresql://?" + urlencode(in_dsn)
    for name in _TIMEOUTS & translated.keys():
        translated["timeout"] = float(translated.pop(name))
    return translated
