"""Input checks that run before any SQL: session ids, text fields, slots and results, and the
size limits of ``StoreConfig`` (``Limits``).

The checks also copy what they accept, so a caller who changes a dict or list after passing it
in changes nothing stored or cached. With a ``redact`` transform (``StoreConfig.redact``), the
text a turn says (content, resolved question, slot values, strings in results) is what the
transform returns, checked again: what is stored and cached is the redacted text.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, get_args

from pydantic import ValidationError

from convostore._core.schema import MAX_SESSION_ID_LENGTH, MAX_TOOL_FIELD_LENGTH
from convostore.errors import (
    InvalidPage,
    InvalidQuery,
    InvalidSessionId,
    InvalidTurn,
    RedactionFailed,
)
from convostore.models import (
    ConversationState,
    ConversationTurn,
    Role,
    SessionFields,
    make_turn,
    name_ordered,
)

__all__ = [
    "Limits",
    "Redact",
    "check_content",
    "check_idempotency_key",
    "check_language",
    "check_limit",
    "check_metadata_filter",
    "check_optional_content",
    "check_optional_text",
    "check_query",
    "check_score",
    "check_session_fields",
    "check_session_id",
    "check_span_id",
    "check_summary",
    "check_template_id",
    "check_text",
    "check_title",
    "check_tool_field",
    "check_trace_id",
    "check_turn",
    "check_user_id",
    "check_window",
    "copy_json",
    "copy_metadata",
    "copy_results",
    "copy_slots",
]

MAX_LANGUAGE_LENGTH = 32

Redact = Callable[[str], str]
"""``StoreConfig.redact``: text in, the text to store out (e-mail addresses masked, say)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits a repository checks, taken from its ``StoreConfig`` once."""

    text_chars: int
    """``StoreConfig.max_text_chars``: characters in each text field."""
    results_bytes: int
    """``StoreConfig.max_results_bytes``: bytes of one turn's results as JSON."""
    redact: Redact | None = None
    """``StoreConfig.redact``, applied to what a turn says and to slot values."""


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is 1-128 printable ASCII characters, else raise."""
    if (
        type(session_id) is str
        and 0 < len(session_id) <= MAX_SESSION_ID_LENGTH
        and session_id.isascii()
        and session_id.isprintable()
    ):
        return session_id
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"session id must be a string, not {type(session_id).__name__}")
    if not session_id:
        raise InvalidSessionId("session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(
            f"session id is {len(session_id)} characters long; at most "
            f"{MAX_SESSION_ID_LENGTH} are allowed"
        )
    raise InvalidSessionId(f"session id {session_id!r} has characters outside printable ASCII")


def check_text(field: str, value: object, limits: Limits) -> str:
    """Return ``value`` if it is a string of at most ``limits.text_chars`` characters that
    PostgreSQL and UTF-8 can hold (see ``_check_storable``)."""
    if isinstance(value, str) and len(value) > limits.text_chars:
        raise InvalidTurn(
            f"{field} is {len(value):,} characters long; at most {limits.text_chars:,} are "
            "allowed (StoreConfig.max_text_chars)"
        )
    return _check_storable(field, value)


def _check_storable(field: str, value: object) -> str:
    """Return ``value`` if it is a string without NUL characters or lone surrogates."""
    if not isinstance(value, str):
        raise InvalidTurn(f"{field} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidTurn(f"{field} contains a NUL character, which the database cannot store")
    if not value.isascii() and not _is_utf8(value):
        raise InvalidTurn(f"{field} contains a lone surrogate, which is not valid UTF-8")
    return value


def check_optional_text(field: str, value: object, limits: Limits) -> str | None:
    """Like ``check_text``, but None passes."""
    return None if value is None else check_text(field, value, limits)


def check_content(field: str, value: object, limits: Limits) -> str:
    """``check_text`` of what a turn says (a question, an answer, a resolved question, a slot
    value), redacted by ``limits.redact`` if set and checked again."""
    text = check_text(field, value, limits)
    redact = limits.redact
    return text if redact is None else check_text(field, _redacted(field, text, redact), limits)


def check_optional_content(field: str, value: object, limits: Limits) -> str | None:
    """Like ``check_content``, but None passes."""
    return None if value is None else check_content(field, value, limits)


def _redacted(field: str, text: str, redact: Redact) -> str:
    """``redact(text)``; ``RedactionFailed`` naming ``field`` (never the text) if it raises or
    returns something other than a string."""
    try:
        result = redact(text)
    except Exception as exc:
        raise RedactionFailed(
            f"StoreConfig.redact raised {type(exc).__name__} on {field}; nothing was stored"
        ) from exc
    if not isinstance(result, str):
        raise RedactionFailed(
            f"StoreConfig.redact returned {type(result).__name__}, not str, on {field}; "
            "nothing was stored"
        )
    return result


def check_language(value: object) -> str:
    """A language code: non-empty text of at most 32 characters."""
    language = _check_storable("language", value)
    if not 0 < len(language) <= MAX_LANGUAGE_LENGTH:
        raise InvalidTurn(f"language must be 1 to {MAX_LANGUAGE_LENGTH} characters long")
    return language


def check_template_id(value: object) -> str:
    """A template id to look for (an export's filter): text the database can hold. The size
    limit is a repository's setting, so none applies here."""
    return _check_storable("template_id", value)


def copy_slots(field: str, slots: object, limits: Limits) -> dict[str, str]:
    """A checked copy of a name -> value mapping of strings, in name order (as the store
    reads slots back: see ``models.name_ordered``); None gives an empty dict."""
    if slots is None:
        return {}
    if not isinstance(slots, (dict, Mapping)):
        raise InvalidTurn(f"{field} must be a dict of strings, not {type(slots).__name__}")
    copied: dict[str, str] = {}
    ordered = True
    last = ""
    for name, value in slots.items():
        check_text(f"{field} name", name, limits)
        value = check_content(f"{field}[{name!r}]", value, limits)
        name, value = str.__str__(name), str.__str__(value)
        if name < last:
            ordered = False
        last = name
        copied[name] = value
    return copied if ordered else name_ordered(copied)


def copy_results(field: str, results: object, limits: Limits) -> list[dict[str, Any]]:
    """A checked deep copy of a list of JSON objects; None gives an empty list.

    Refuses what JSON cannot represent faithfully (non-string keys, NaN and infinities, ints
    of more than ``MAX_INT_DIGITS`` digits, and objects of other types: sets, datetimes, ...)
    and results longer than
    ``limits.results_bytes`` as ``json.dumps`` writes them, as the store does. The copy adds
    up a bound of that length as it goes; only results the bound puts over the limit (the
    bound allows up to 6 bytes a character, 12 for non-ASCII text) are encoded to measure.
    """
    if results is None:
        return []
    if not isinstance(results, (list, tuple)):
        raise InvalidTurn(f"{field} must be a list of dicts, not {type(results).__name__}")
    if not results:
        return []

    def copy_items(bound: list[int]) -> list[dict[str, Any]]:
        copied: list[dict[str, Any]] = []
        for index, item in enumerate(results):
            if not isinstance(item, (dict, Mapping)):
                raise _Unstorable(f"must be a dict, not {type(item).__name__}", [index])
            try:
                copied.append(_copy_json(item, bound))
            except _Unstorable as exc:
                exc.path.insert(0, index)
                raise
        return copied

    checked: list[dict[str, Any]] = _checked_json(field, copy_items, limits, "take")
    return checked


def copy_metadata(field: str, metadata: object, limits: Limits) -> dict[str, Any]:
    """A checked deep copy of a JSON object (a session's ``metadata``), held to
    ``limits.results_bytes`` like a turn's results; None gives an empty dict. Never redacted:
    it is the application's own data (tags, ids), which ``list_sessions`` filters by exactly."""
    if metadata is None:
        return {}
    if not isinstance(metadata, (dict, Mapping)):
        raise InvalidTurn(f"{field} must be a dict, not {type(metadata).__name__}")
    if not metadata:
        return {}
    copied: dict[str, Any] = _checked_json(
        field, lambda bound: _copy_json(metadata, bound), replace(limits, redact=None), "takes"
    )
    return copied


def copy_json(field: str, value: object, limits: Limits) -> Any:
    """A checked deep copy of any JSON value (a message's ``tool_arguments`` or ``data``),
    held to ``limits.results_bytes`` like a turn's results; None stays None."""
    if value is None:
        return None
    return _checked_json(field, lambda bound: _copy_json(value, bound), limits, "takes")


def _checked_json(field: str, copy: Callable[[list[int]], Any], limits: Limits, verb: str) -> Any:
    """``copy(bound)``, a JSON copy that adds up a bound of its length (``_copy_json``), with
    what it refuses as ``InvalidTurn`` naming the place, and refused if it is longer than
    ``limits.results_bytes`` as ``json.dumps`` writes it (measured only when the bound is)."""
    bound = [2]
    try:
        copied = copy(bound)
    except _Unstorable as exc:
        where = "".join(f"[{part!r}]" for part in exc.path)
        raise InvalidTurn(f"{field}{where} {exc.reason}") from None
    except RecursionError:
        raise InvalidTurn(f"{field} is nested too deeply to store") from None
    if limits.redact is not None:
        # The redacted strings are checked (and measured) as the caller's were.
        redacted = _redacted_json(field, copied, limits.redact)
        return _checked_json(
            field, lambda bound: _copy_json(redacted, bound), replace(limits, redact=None), verb
        )
    if bound[0] > limits.results_bytes:
        size = len(json.dumps(copied))
        if size > limits.results_bytes:
            raise InvalidTurn(
                f"{field} {verb} {size:,} bytes as JSON; at most {limits.results_bytes:,} are "
                "allowed (StoreConfig.max_results_bytes)"
            )
    return copied


def _redacted_json(field: str, value: Any, redact: Redact) -> Any:
    """A copy of checked JSON with every string value (not key) passed through ``redact``."""
    if isinstance(value, str):
        return _redacted(field, value, redact)
    if isinstance(value, dict):
        return {key: _redacted_json(field, item, redact) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted_json(field, item, redact) for item in value]
    return value


class _Unstorable(Exception):
    """A JSON value that cannot be stored; ``path`` is filled in as the error unwinds, so the
    common case pays nothing for error messages."""

    def __init__(self, reason: str, path: list[object] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path or []


_NODE_BYTES = 30
"""A bound of what any JSON value adds besides its text: quotes, brackets, separators, and
the whole of a float (at most 24 characters), a small int, true, false or null."""

MAX_INT_DIGITS = 4300
"""The most digits an int in ``results`` may have: Python's default limit for converting
between int and text (``sys.get_int_max_str_digits``). ``json`` refuses to write or read a
longer one, so a process with the default limit could not read it back."""

_SHORT_INT_BITS = 2100
"""An int of at most this many bits has fewer than 640 digits, under any limit Python allows:
only longer ones are converted to count their digits."""


def _copy_json(value: Any, bound: list[int]) -> Any:
    """A checked copy of a JSON value as a cold read returns it (``json.loads`` of what
    ``json.dumps`` writes): tuples become lists, other mappings dicts, and subclasses of str,
    int and float their plain values. Adds a bound of its ``json.dumps`` length to
    ``bound[0]``: 6 bytes a character of ASCII text (``\\u00XX``), 12 of other text (an
    escaped surrogate pair), a digit per 3 bits of an int, ``_NODE_BYTES`` a value."""
    kind = type(value)
    if kind is str or isinstance(value, str):
        is_ascii = value.isascii()
        if "\x00" in value or (not is_ascii and not _is_utf8(value)):
            raise _Unstorable("contains a NUL character or a lone surrogate")
        bound[0] += _NODE_BYTES + (6 if is_ascii else 12) * len(value)
        return value if kind is str else str.__str__(value)
    if value is None or kind is bool:
        bound[0] += _NODE_BYTES
        return value
    if kind is int or isinstance(value, int):
        bits = value.bit_length()
        if bits > _SHORT_INT_BITS:
            _check_digits(value)
        bound[0] += _NODE_BYTES + bits // 3
        return value if kind is int else int.__int__(value)
    bound[0] += _NODE_BYTES
    if kind is float or isinstance(value, float):
        if not math.isfinite(value):
            raise _Unstorable(f"is {value}, which JSON cannot represent")
        return value if kind is float else float.__float__(value)
    if isinstance(value, (dict, Mapping)):  # dict first: it spares the ABC check
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unstorable(f"has a key {key!r} that is not a string")
            try:
                key = _copy_json(key, bound)
                copy[key] = _copy_json(item, bound)
            except _Unstorable as exc:
                exc.path.insert(0, key)
                raise
        return copy
    if isinstance(value, (list, tuple)):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_copy_json(item, bound))
            except _Unstorable as exc:
                exc.path.insert(0, index)
                raise
        return items
    raise _Unstorable(f"is a {kind.__name__}, which is not JSON-serializable")


def _check_digits(value: int) -> None:
    """Refuse an int of more than ``MAX_INT_DIGITS`` digits, or of more than this process
    converts to text."""
    size = abs(value)
    if size >= _TOO_LONG:
        raise _Unstorable(
            f"is an int of more than {MAX_INT_DIGITS:,} digits, which JSON readers refuse "
            "(Python's default sys.get_int_max_str_digits)"
        )
    limit = sys.get_int_max_str_digits()
    if limit and size >= 10**limit:
        raise _Unstorable(
            f"is an int of more than {limit:,} digits, which this process does not convert "
            "to text (sys.get_int_max_str_digits)"
        )


_TOO_LONG = 10**MAX_INT_DIGITS


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_trace_id(field: str, value: object) -> str | None:
    """An OpenTelemetry trace id as W3C Trace Context spells it: 32 lowercase hex digits, not
    all zero (the invalid id); None passes."""
    return _check_otel_id(field, value, TRACE_ID_DIGITS)


def check_span_id(field: str, value: object) -> str | None:
    """An OpenTelemetry span id: 16 lowercase hex digits, not all zero; None passes."""
    return _check_otel_id(field, value, SPAN_ID_DIGITS)


TRACE_ID_DIGITS = 32
SPAN_ID_DIGITS = 16
_LOWER_HEX = frozenset("0123456789abcdef")


def _check_otel_id(field: str, value: object, digits: int) -> str | None:
    if value is None:
        return None
    if (
        type(value) is not str
        or len(value) != digits
        or not _LOWER_HEX.issuperset(value)
        or value == "0" * digits
    ):
        raise InvalidTurn(
            f"{field} must be {digits} lowercase hex digits, not all zero (as OpenTelemetry "
            f"writes it), not {value!r}"
        )
    return value


MIN_SCORE, MAX_SCORE = -2, 2
"""The range of a feedback score: -1 and 1 for thumbs down and up, -2..2 for five stars
(stars - 3), 0 neutral."""


def check_score(score: object) -> int:
    """A feedback score: an int (not a bool) from ``MIN_SCORE`` to ``MAX_SCORE``."""
    if type(score) is not int or not MIN_SCORE <= score <= MAX_SCORE:
        raise InvalidTurn(
            f"score must be an int from {MIN_SCORE} to {MAX_SCORE} (thumbs: -1 or 1; "
            f"stars: stars - 3), not {score!r}"
        )
    return score


def check_turn(field: str, turn: object, limits: Limits) -> ConversationTurn:
    """A validated copy of a turn the caller added, so later changes to its dicts and lists
    reach neither the store nor the cache."""
    if isinstance(turn, Mapping):
        try:
            turn = ConversationTurn.model_validate(turn)
        except ValidationError as exc:
            raise InvalidTurn(f"{field} is not a message: {exc}") from None
    if not isinstance(turn, ConversationTurn):
        raise InvalidTurn(f"{field} must be a ConversationTurn, not {type(turn).__name__}")
    if turn.role not in ROLES:
        raise InvalidTurn(f"{field}.role must be one of {', '.join(ROLES)}, not {turn.role!r}")
    return make_turn(
        role=turn.role,
        content=check_content(f"{field}.content", turn.content, limits),
        resolved_question=check_optional_content(
            f"{field}.resolved_question", turn.resolved_question, limits
        ),
        template_id=check_optional_text(f"{field}.template_id", turn.template_id, limits),
        slots=copy_slots(f"{field}.slots", turn.slots, limits),
        results=copy_results(f"{field}.results", turn.results, limits),
        created_at=None,
        trace_id=check_trace_id(f"{field}.trace_id", turn.trace_id),
        span_id=check_span_id(f"{field}.span_id", turn.span_id),
        tool_name=check_tool_field(f"{field}.tool_name", turn.tool_name),
        tool_call_id=check_tool_field(f"{field}.tool_call_id", turn.tool_call_id),
        tool_arguments=copy_json(f"{field}.tool_arguments", turn.tool_arguments, limits),
        data=copy_json(f"{field}.data", turn.data, limits),
    )


ROLES: tuple[str, ...] = get_args(Role)
"""The roles a stored message may have."""


def check_tool_field(field: str, value: object) -> str | None:
    """A ``tool_name`` or ``tool_call_id``: None, or a storable string of 1 to
    ``MAX_TOOL_FIELD_LENGTH`` characters (it is a VARCHAR column)."""
    if value is None:
        return None
    text = _check_storable(field, value)
    if not 0 < len(text) <= MAX_TOOL_FIELD_LENGTH:
        raise InvalidTurn(
            f"{field} must be 1 to {MAX_TOOL_FIELD_LENGTH} characters long, not {len(text):,}"
        )
    return text


def check_session_fields(
    state: ConversationState, limits: Limits, default_language: str | None
) -> SessionFields:
    """Checked copies of the session fields of a state the caller changed, as ``update``
    writes them (a ``language`` of None: ``default_language``)."""
    summary, upto = check_summary(state.summary, state.summary_upto, limits)
    return SessionFields(
        current_slots=copy_slots("current_slots", state.current_slots, limits),
        current_template_id=check_optional_text(
            "current_template_id", state.current_template_id, limits
        ),
        language=default_language if state.language is None else check_language(state.language),
        title=check_title(state.title, limits),
        metadata=copy_metadata("metadata", state.metadata, limits),
        summary=summary,
        summary_upto=upto,
    )


MAX_TITLE_CHARS = 500
"""The longest title a session may have, in characters (what a catalog shows)."""


def check_title(title: object, limits: Limits) -> str | None:
    """A session's title: None, or text of 1 to ``MAX_TITLE_CHARS`` characters, redacted by
    ``limits.redact`` if set (a title is often a question)."""
    if title is None:
        return None
    checked = _check_storable("title", title)
    if limits.redact is not None:
        checked = _check_storable("title", _redacted("title", checked, limits.redact))
    if not 0 < len(checked) <= MAX_TITLE_CHARS:
        raise InvalidTurn(f"title must be 1 to {MAX_TITLE_CHARS} characters long")
    return checked


def check_summary(text: object, upto_seq: object, limits: Limits) -> tuple[str | None, int | None]:
    """A summary and the number of the last turn it covers: text within the limits (redacted
    like what a turn says) and a positive int, or both None (no summary)."""
    if text is None and upto_seq is None:
        return None, None
    summary = check_content("summary", text, limits)
    if not summary:
        raise InvalidTurn("summary must not be empty (None, with upto_seq None, removes it)")
    if type(upto_seq) is not int or upto_seq < 1:
        raise InvalidTurn(f"upto_seq must be a turn's number (an int from 1), not {upto_seq!r}")
    return summary, upto_seq


def check_metadata_filter(wanted: object) -> dict[str, str | int | bool]:
    """A ``list_sessions`` metadata filter: keys a listed session's metadata must hold with
    these values, each a string, an int or a bool (what every backend compares exactly)."""
    if not isinstance(wanted, (dict, Mapping)) or not wanted:
        raise InvalidPage("metadata must be a non-empty dict of keys and the values they hold")
    checked: dict[str, str | int | bool] = {}
    for key, value in wanted.items():
        if not isinstance(key, str) or "\x00" in key or not _is_utf8(key):
            raise InvalidPage(f"metadata filter key {key!r} must be text")
        if type(value) not in (str, int, bool) or (
            type(value) is str and ("\x00" in value or not _is_utf8(value))
        ):
            raise InvalidPage(
                f"metadata filter value of {key!r} must be a string, an int or a bool, "
                f"not {type(value).__name__}"
            )
        checked[key] = value
    return checked


def check_idempotency_key(key: object) -> str:
    """An idempotency key follows the session-id rules: 1-128 printable ASCII characters."""
    try:
        return check_session_id(key)
    except InvalidSessionId as exc:
        raise InvalidTurn(str(exc).replace("session id", "idempotency_key", 1)) from None


def check_user_id(user_id: object) -> str:
    """A user id follows the session-id rules: 1-128 printable ASCII characters."""
    try:
        return check_session_id(user_id)
    except InvalidSessionId as exc:
        raise InvalidSessionId(str(exc).replace("session id", "user_id", 1)) from None


def check_owner(user_id: object) -> str | None:
    """``check_user_id``, where None means "no owner given"."""
    return None if user_id is None else check_user_id(user_id)


def check_limit(limit: object) -> int:
    """A page's ``limit``: an int from 1 to 1000."""
    if type(limit) is not int or not 1 <= limit <= 1000:
        raise InvalidPage(f"limit must be an int from 1 to 1000, not {limit!r}")
    return limit


def check_query(query: object, limits: Limits) -> str:
    """A search query: text with a character other than white space, within the text limits
    a stored turn has (``check_text``)."""
    try:
        text = check_text("query", query, limits)
    except InvalidTurn as exc:
        raise InvalidQuery(str(exc)) from None
    if not text.strip():
        raise InvalidQuery("query must hold at least one word")
    return text


def check_window(last_turns: object) -> int | None:
    """``get``'s ``last_turns``: None (every turn) or a positive int."""
    if last_turns is None or (type(last_turns) is int and 0 < last_turns < 2**31):
        return last_turns
    raise InvalidPage(f"last_turns must be a positive int or None, not {last_turns!r}")
