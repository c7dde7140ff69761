"""Full-text search over the stored turns: one page of hits at a time, and its cursor.

The statement (``backends._search``) orders hits by rank, best first, then by
(``conversation_id``, ``session_id``, ``seq``); a cursor holds the last hit's rank and key, so
the next page starts right after it (keyset paging: no page reads the ones before it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncEngine

from convostore._core.validation import check_session_id
from convostore.backends import backend_for
from convostore.backends._search import MARK, OMITTED, SNIPPET_WORDS, search_statement
from convostore.errors import InvalidPage, InvalidSessionId
from convostore.models import SearchHit, SearchPage

__all__ = ["After", "Searches", "cut_snippet", "read_cursor"]

After = dict[str, Any]
"""The last hit of the page before, as the statement's parameters ``rank``, ``cid``, ``sid``,
``seq``."""

_MAX_CURSOR = 1024
"""Characters of the longest cursor accepted (one holds a rank, two ids and a number)."""


def _tag(query: str, uid: str | None) -> str:
    """What ties a cursor to its search: a short digest of the query and the user."""
    digest = hashlib.sha256(f"{uid or ''}\x00{query}".encode())
    return digest.hexdigest()[:16]


def _cursor(hit: SearchHit, tag: str) -> str:
    data = [hit.rank, hit.conversation_id, hit.session_id, hit.seq, tag]
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def read_cursor(cursor: object, query: str, uid: str | None) -> After:
    """The last hit a ``cursor`` of this search (same query, same user) names.

    Raises:
        InvalidPage: the cursor is not one such a search hands out.
    """
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR:
        raise InvalidPage(f"cursor must be a next_cursor of a search, not {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rank, cid, sid, seq, tag = json.loads(raw)
        check_session_id(sid)
    except (ValueError, TypeError, binascii.Error, InvalidSessionId):
        raise InvalidPage(f"cursor {cursor!r} is not a next_cursor of a search") from None
    well_formed = (
        type(rank) is float
        and math.isfinite(rank)
        and type(cid) is int
        and type(seq) is int
        and 0 < seq < 2**31
    )
    if not well_formed:
        raise InvalidPage(f"cursor {cursor!r} is not a next_cursor of a search")
    if tag != _tag(query, uid):
        raise InvalidPage("cursor belongs to a search of another query or user")
    return {"rank": rank, "cid": cid, "sid": sid, "seq": seq}


_WORD_IN_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
"""A token as its leading punctuation, its word and its trailing punctuation."""


def _folded(text: str) -> str:
    """``text`` without case and accents, as the databases' search compares words."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def cut_snippet(text: str, words: Sequence[str]) -> str:
    """About ``SNIPPET_WORDS`` words of ``text`` from a little before the first that is one of
    ``words`` (case and accents ignored), each such word between ``MARK``s: the snippet of a
    backend whose database cannot cut one (``Backend.snippet_in_python``)."""
    wanted = {_folded(word) for word in words}
    tokens = text.split()
    found = [bool(wanted.intersection(re.findall(r"\w+", _folded(token)))) for token in tokens]
    first = found.index(True) if True in found else 0
    start = max(0, first - SNIPPET_WORDS // 4)
    end = start + SNIPPET_WORDS
    shown = " ".join(
        _WORD_IN_TOKEN.sub(lambda part: f"{part[1]}{MARK}{part[2]}{MARK}{part[3]}", token)
        if hit
        else token
        for token, hit in zip(tokens[start:end], found[start:end], strict=True)
    )
    return f"{OMITTED if start else ''}{shown}{OMITTED if end < len(tokens) else ''}"


class Searches:
    """``SessionRepository.search`` on one engine; its four statements (with or without a
    user, first page or later) are built once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.backend = backend_for(engine)
        self._statements: dict[tuple[bool, bool], Select[Any]] = {}

    def _statement(self, owned: bool, after: bool) -> Select[Any]:
        statement = self._statements.get((owned, after))
        if statement is None:
            statement = search_statement(self.backend, owned=owned, after=after)
            self._statements[(owned, after)] = statement
        return statement

    async def page(
        self, query: str, uid: str | None, limit: int, after: After | None
    ) -> SearchPage:
        """The ``limit`` best hits after ``after`` (None: from the best)."""
        terms = self.backend.search_terms(query)
        if terms is None:
            return SearchPage(hits=[], next_cursor=None)
        params: dict[str, Any] = {"terms": terms, "uid": uid, "limit": limit + 1, **(after or {})}
        statement = self._statement(uid is not None, after is not None)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement, params)).all()
        words = re.findall(r"\w+", query) if self.backend.snippet_in_python else ()
        hits = [
            SearchHit(
                session_id=sid,
                conversation_id=cid,
                seq=seq,
                role=role,
                rank=rank,
                snippet=cut_snippet(snippet, words) if words else snippet,
            )
            for sid, cid, seq, role, rank, snippet in rows[:limit]
        ]
        more = len(rows) > limit
        next_cursor = _cursor(hits[-1], _tag(query, uid)) if more else None
        return SearchPage(hits=hits, next_cursor=next_cursor)
