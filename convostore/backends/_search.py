"""The statement of a full-text search over the stored turns (``SessionRepository.search``),
built from the parts its backend gives (``Backend.search_match``, ``search_snippet``).

Hits come best first: by rank, highest first, then by (``conversation_id``, ``session_id``,
``seq``), so that the order is total and a page can start after the last hit of the one
before (keyset paging, ``after=True``).

Parameter names: ``terms`` the backend's query (``Backend.search_terms``); ``uid`` the owner
the search is limited to (``owned=True``); ``rank``, ``cid``, ``sid``, ``seq`` the last hit
of the page before (``after=True``); ``limit`` hits to read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    or_,
    select,
)

from convostore._core.schema import conversations, of_conversation, turns
from convostore.backends import Backend

__all__ = ["MARK", "OMITTED", "SNIPPET_WORDS", "search_statement"]

MARK = "**"
"""What stands before and after each matched word in a snippet."""
OMITTED = "…"
"""What stands where a snippet leaves out the start or the end of the text."""
SNIPPET_WORDS = 16
"""About how many words a snippet shows."""


def search_statement(backend: Backend, *, owned: bool, after: bool) -> Select[Any]:
    """The page of hits: (``session_id``, ``conversation_id``, ``seq``, ``role``, ``rank``,
    ``snippet``), at most ``limit`` rows, best first. The snippets are made for the page's
    rows only, after the page is chosen."""
    t = turns.c
    terms = bindparam("terms", type_=Text())
    match = backend.search_match(terms)
    source = match.source
    conditions = [match.condition]
    if owned:
        source = source.join(conversations, of_conversation(t))
        conditions.append(conversations.c.user_id == bindparam("uid", type_=String()))
    if after:
        cid = bindparam("cid", type_=BigInteger())
        sid = bindparam("sid", type_=String())
        seq = bindparam("seq", type_=Integer())
        rank = bindparam("rank", type_=Float())
        later_key = or_(
            t.conversation_id > cid,
            and_(
                t.conversation_id == cid,
                or_(t.session_id > sid, and_(t.session_id == sid, t.seq > seq)),
            ),
        )
        conditions.append(or_(match.rank < rank, and_(match.rank == rank, later_key)))
    ranked = match.rank.label("rank")
    key = (t.conversation_id, t.session_id, t.seq)
    page = (
        select(t.session_id, t.conversation_id, t.seq, t.role, ranked, *match.carried)
        .select_from(source)
        .where(*conditions)
        .order_by(ranked.desc(), *key)
        .limit(bindparam("limit", type_=Integer()))
        .subquery("page")
    )
    snippet = backend.search_snippet(page, terms)
    p = page.c
    statement = (
        select(
            p.session_id, p.conversation_id, p.seq, p.role, p.rank, snippet.text.label("snippet")
        )
        .select_from(snippet.source)
        .order_by(p.rank.desc(), p.conversation_id, p.session_id, p.seq)
    )
    if snippet.condition is not None:
        statement = statement.where(snippet.condition)
    return statement
