"""The exceptions convostore raises on purpose, and the one place driver errors are translated.

Every exception raised on purpose derives from ``ConvostoreError``::

    ConvostoreError
    ├── ConfigError        (also ValueError)   a URL, engine or migration target it cannot use,
    │                                          or a setting from the environment that is invalid
    ├── InvalidSessionId   (also ValueError)   bad session or user id, raised before any SQL
    ├── InvalidTurn        (also ValueError)   text or results the store cannot hold or that
    │   │                                      exceed the size limits, before any SQL
    │   └── RedactionFailed                    StoreConfig.redact raised or returned no string
    ├── InvalidPage        (also ValueError)   list_sessions, search: a bad limit or cursor
    ├── InvalidQuery       (also ValueError)   search: an empty query, or one beyond the
    │                                          size limits, before any SQL
    ├── SchemaNotReady                         the database lacks the newest migration
    ├── NotRunning         (also RuntimeError) the repository is not started, or already stopped
    ├── StaleStateError                        update(if_unchanged=True): the session moved on
    ├── ForeignStateError  (also ValueError)   update: the state was read from another session
    ├── NotSessionOwner    (also PermissionError) the live session belongs to another user
    ├── DecryptionFailed                       a stored turn cannot be decrypted with the
    │                                          keys given (missing or wrong key, altered data)
    └── StoreError                             the database or driver failed; cause chained
        └── StoreUnavailable                   the database stayed unreachable (or silent) for
            │                                  reconnect_timeout
            └── StatementTimeout               the database stopped a statement that ran
                                               past its time bound

No message convostore builds shows a database password: the passwords of the URLs and engines
repositories were built with are masked in ``StoreError`` messages (see ``hide_in_messages``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "ConfigError",
    "ConvostoreError",
    "DecryptionFailed",
    "DriverErrors",
    "ForeignStateError",
    "InvalidPage",
    "InvalidQuery",
    "InvalidSessionId",
    "InvalidTurn",
    "NotRunning",
    "NotSessionOwner",
    "RedactionFailed",
    "SchemaNotReady",
    "StaleStateError",
    "StatementTimeout",
    "StoreError",
    "StoreUnavailable",
    "causes",
    "hide_in_messages",
    "is_disconnect",
    "is_transient",
    "register_driver_errors",
    "translate_errors",
]


class ConvostoreError(Exception):
    """Base of every error convostore raises on purpose."""


class ConfigError(ConvostoreError, ValueError):
    """The database URL or engine is one convostore cannot use (raised when a
    ``SessionRepository`` is built, before any connection is made), or a migration target it
    refuses (an unknown revision, a downgrade without ``allow_downgrade``); the message says
    what to do instead. Also a ``StoreConfig`` setting from a ``CONVOSTORE_*`` environment
    variable or a ``.env`` file that is not valid; the message names the variable."""


class InvalidSessionId(ConvostoreError, ValueError):
    """A session id is empty, longer than 128 characters, or not printable ASCII."""


class InvalidTurn(ConvostoreError, ValueError):
    """A field holds text or data that the store cannot keep, or more than the size limits of
    ``StoreConfig`` allow; the message names the field (and the limit)."""


class RedactionFailed(InvalidTurn):
    """``StoreConfig.redact`` raised, or returned something other than text, on a field about
    to be stored; the message names the field (never its text) and the callable's exception is
    chained. Nothing was stored."""


class InvalidPage(ConvostoreError, ValueError):
    """``list_sessions``: ``limit`` is not 1-1000, or ``before`` is not a conversation id;
    ``search``: ``limit`` is not 1-1000, or ``cursor`` is not one a search of the same query
    and user handed out."""


class InvalidQuery(ConvostoreError, ValueError):
    """``search``: the query is not text, holds no word, or is longer than
    ``StoreConfig.max_text_chars`` (or holds characters the database cannot take)."""


class SchemaNotReady(ConvostoreError):
    """The database has no convostore schema, or an older one; the message says how to migrate."""


class NotRunning(ConvostoreError, RuntimeError):
    """The repository was used before ``start()`` or after ``stop()``."""


class StaleStateError(ConvostoreError):
    """``update(..., if_unchanged=True)``: the stored session was written (or deleted) after
    the state was read, so the update was refused and nothing was stored."""


class ForeignStateError(ConvostoreError, ValueError):
    """``update(session_id, state)`` with a state the store handed out for another session:
    its turns belong to that conversation, and copying them is refused before any SQL. To copy
    a conversation on purpose, build a new state (``ConversationState(**state.model_dump())``),
    which belongs to no session yet."""


class NotSessionOwner(ConvostoreError, PermissionError):
    """A call with a ``user_id`` (``get_or_create``, ``add_turn``, ``update``, ``delete``): the
    live session under that id was created for another user, or for none. Nothing was read or
    written; use another session id (``get`` answers None in this case instead)."""


class DecryptionFailed(ConvostoreError):
    """A stored turn is encrypted and cannot be read with ``StoreConfig.encryption_keys``:
    the key that encrypted it is not among them (or no keys are set), or the stored value was
    altered. The message names the key id the value carries, never key material or text."""


class StoreError(ConvostoreError):
    """The database or its driver failed; the original exception is chained as ``__cause__``."""


class StoreUnavailable(StoreError):
    """The database could not be reached, or did not answer, for
    ``StoreConfig.reconnect_timeout`` seconds; the call stored nothing, or (a write whose
    outcome is unknown) stored it exactly once and whole."""


class StatementTimeout(StoreUnavailable):
    """The database itself stopped a statement that ran past its time bound (on MariaDB,
    convostore's own engine bounds each statement a little under ``reconnect_timeout / 2``;
    on PostgreSQL, a ``statement_timeout`` of your own). The server answers, so the call is
    not sent again: it would take as long. The transaction was undone; nothing was stored."""


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    OSError,
    asyncio.TimeoutError,
)
"""SQLAlchemy's errors, and each backend's driver's own (``register_driver_errors``): the
hot paths call the drivers directly."""
_DISCONNECTS: tuple[Callable[[BaseException], bool], ...] = ()
_TRANSIENTS: tuple[Callable[[BaseException], bool], ...] = ()
_TIMED_OUT: tuple[Callable[[BaseException], bool], ...] = ()


class DriverErrors(Protocol):
    """A backend's error classifier (``Backend``), as ``register_driver_errors`` reads it."""

    def driver_errors(self) -> tuple[type[BaseException], ...]: ...

    def is_disconnect(self, error: BaseException) -> bool: ...

    def is_transient(self, error: BaseException) -> bool: ...

    def is_statement_timeout(self, error: BaseException) -> bool: ...


def register_driver_errors(backend: DriverErrors) -> None:
    """Translate a backend's driver errors too, and know its words for a lost connection, for
    a transaction worth running again and for a statement the server stopped at its time
    bound; each backend registers once."""
    global _DRIVER_ERRORS, _DISCONNECTS, _TRANSIENTS, _TIMED_OUT
    if backend.is_disconnect in _DISCONNECTS:
        return
    errors = backend.driver_errors()
    _DRIVER_ERRORS = (*_DRIVER_ERRORS, *(e for e in errors if e not in _DRIVER_ERRORS))
    _DISCONNECTS = (*_DISCONNECTS, backend.is_disconnect)
    _TRANSIENTS = (*_TRANSIENTS, backend.is_transient)
    _TIMED_OUT = (*_TIMED_OUT, backend.is_statement_timeout)


_hidden: frozenset[str] = frozenset()


def hide_in_messages(secret: str | None) -> None:
    """Mask ``secret`` (a database password) as ``***`` in every ``StoreError`` message from
    now on. Drivers are not known to put passwords in their errors; this makes sure."""
    global _hidden
    if secret:
        _hidden = _hidden | {secret}


def _masked(text: str) -> str:
    for secret in sorted(_hidden, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class translate_errors:
    """Re-raise SQLAlchemy and driver errors as ``StoreError``, naming what was being done.

    The message keeps the first line of the driver's: the lines after it (PostgreSQL's
    ``DETAIL: Failing row contains (...)``, SQLAlchemy's ``[SQL: ...]``) can hold turn
    content, which stays in the chained exception only."""

    __slots__ = ("_action",)

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any
    ) -> None:
        if exc is None or isinstance(exc, ConvostoreError):
            return
        if isinstance(exc, _DRIVER_ERRORS):
            reason = str(exc).partition("\n")[0]
            if any(stopped(current) for current in causes(exc) for stopped in _TIMED_OUT):
                raise StatementTimeout(
                    _masked(
                        f"{self._action} failed: the database stopped a statement that ran "
                        f"past its time bound ({reason})"
                    )
                ) from exc
            raise StoreError(_masked(f"{self._action} failed: {reason}")) from exc
        if any(closed(exc) for closed in _DISCONNECTS):
            raise StoreError(f"{self._action} failed: the connection was closed") from exc


def is_disconnect(exc: BaseException) -> bool:
    """Whether an error means the connection (and likely its pool siblings) is dead or the
    server cannot be reached, so the same call may succeed on a fresh connection."""
    for current in causes(exc):
        if getattr(current, "connection_invalidated", False):
            return True
        if isinstance(current, (OSError, asyncio.TimeoutError)):
            return True
        if any(closed(current) for closed in _DISCONNECTS):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether the database undid the transaction of an error (a deadlock victim), so the
    same operation may succeed if run again."""
    return any(transient(current) for current in causes(exc) for transient in _TRANSIENTS)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, else ``__context__``), and so on; each
    once, should the chain loop."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
