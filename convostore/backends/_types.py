"""Column types whose storage differs per backend: timestamps (``timestamptz`` on
PostgreSQL, UTC text on SQLite), JSON documents and conversation keys. The tables
(``_core/schema.py``) use these; a new backend adds its variant here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer, String, Text, TypeDecorator
from sqlalchemy.dialects.mysql import LONGTEXT
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "ConversationKey",
    "JSONDocument",
    "JSONText",
    "LongText",
    "OptionalJSONText",
    "SlotName",
    "UTCDateTime",
]

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
MARIADB = ("mariadb", "mysql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as UTC
    text (SQLAlchemy's DATETIME format) and marked UTC again when read. Naive values are refused
    rather than guessed at. A cold load reads a timestamp per exchange, so reading is one cheap
    call: SQLite text goes through the C parser ``datetime.fromisoformat``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("convostore stores timezone-aware datetimes only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        if value.tzinfo is timezone.utc:
            return value  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, the UTC text in one call."""
        if dialect.name != SQLITE:
            return super().bind_processor(dialect)
        utc = timezone.utc

        def to_text(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("convostore stores timezone-aware datetimes only")
            # The aware text without its "+00:00" (SQLAlchemy's text for the naive UTC time).
            return value.astimezone(utc).isoformat(" ", "microseconds")[:-6]

        return to_text

    def result_processor(
        self, dialect: Dialect, coltype: object
    ) -> Callable[[Any], datetime | None]:
        utc = timezone.utc
        if dialect.name == SQLITE:
            parse = datetime.fromisoformat

            def from_text(value: str | None) -> datetime | None:
                # The stored text is UTC without an offset: saying so in the text lets the C
                # parser make the aware datetime, instead of ``replace(tzinfo=)`` after it.
                # Text written with an offset (not by convostore) takes the long way.
                if value is None:
                    return None
                try:
                    return parse(value + "+00:00")
                except ValueError:
                    return self.process_result_value(value, dialect)

            return from_text

        def from_timestamptz(value: datetime | None) -> datetime | None:
            if value is None or value.tzinfo is utc:
                return value
            return self.process_result_value(value, dialect)

        return from_timestamptz


JSONDocument = JSON().with_variant(JSONB(), POSTGRESQL)
"""JSON on SQLite, JSONB on PostgreSQL: for ``current_slots``, which PostgreSQL merges with
``||`` (its values are strings, which JSONB keeps as they are; key order, which it does not
keep, is name order on every read)."""


JSONText = JSON()
"""JSON kept as the text written, on SQLite and PostgreSQL (``json``, not ``jsonb``): for
``results``, which must read back exactly as written. JSONB would turn ``1e20`` into an int,
``-0.0`` into ``0.0`` and reorder keys, so a cold read would differ from what the writer
cached."""

OptionalJSONText = JSON(none_as_null=True)
"""``JSONText`` where None is SQL NULL (not the JSON ``null``): a message's optional
``tool_arguments`` and ``data``."""


ConversationKey = BigInteger().with_variant(Integer(), SQLITE)
"""A 64-bit conversation id: from the sequence ``conversation_ids`` on PostgreSQL, the next
after the largest on SQLite (whose writers take turns)."""

LongText = Text().with_variant(LONGTEXT(), *MARIADB)
"""Text of any length: LONGTEXT on MariaDB, whose TEXT holds 65,535 bytes."""

SlotName = Text().with_variant(String(512), *MARIADB)
"""A slot's name, part of ``turn_slots``' key: VARCHAR(512) on MariaDB, which keys no TEXT."""
