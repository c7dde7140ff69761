"""The report's statements, as SQLAlchemy Core over the analytics views (the queries of
docs/analytics.md, and the feedback per template and per day), with what differs per
database asked of the backend. ``report`` runs them and lays out the page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, case, column, distinct, func, select
from sqlalchemy import table as view

from convostore._core.schema import UTCDateTime, conversations, live_session, sessions, turns
from convostore.backends import Backend

__all__ = ["QUESTIONS_PER_TEMPLATE", "report_queries"]

_exchanges = view(
    "exchanges",
    column("conversation_id"),
    column("question"),
    column("resolved_question"),
    column("template_id"),
    column("created_at"),
)
_slot_values = view("slot_values", column("conversation_id"), column("name"), column("value"))
_feedback = view("feedback", column("template_id"), column("score"), column("created_at"))
_roles = view(
    "message_roles",
    column("conversation_id"),
    column("role"),
    column("messages"),
    column("tool_messages"),
)
_e, _v, _f, _r = _exchanges.c, _slot_values.c, _feedback.c, _roles.c


def report_queries(backend: Backend, top: int) -> dict[str, Any]:
    """The report's statements for a backend (``top``: the slot values kept); each groups in
    an outer query over a subquery, so PostgreSQL never compares a grouped expression with
    bound parameters."""
    days = select(backend.utc_day(_e.created_at).label("day"), _e.conversation_id).subquery()
    hours = select(backend.utc_hour(_e.created_at).label("hour")).subquery()
    lengths = (
        select(func.count().label("exchanges"))
        .select_from(_exchanges)
        .group_by(_e.conversation_id)
        .subquery()
    )
    mentions = func.count()
    given = select(backend.utc_day(_f.created_at).label("day"), _f.score).subquery()
    return {
        "conversations": select(
            select(func.count()).select_from(conversations).scalar_subquery(),
            select(func.count())
            .where(live_session(sessions.c.expires_at, bindparam("now", type_=UTCDateTime())))
            .scalar_subquery(),
        ),
        "per_day": select(days.c.day, func.count(), func.count(distinct(days.c.conversation_id)))
        .group_by(days.c.day)
        .order_by(days.c.day),
        "per_hour": select(hours.c.hour, func.count()).group_by(hours.c.hour),
        "templates": select(
            _e.template_id, func.count(), func.count(distinct(_e.conversation_id))
        ).group_by(_e.template_id),
        "follow_ups": select(
            func.count(),
            func.coalesce(func.sum(case((_e.resolved_question != _e.question, 1), else_=0)), 0),
        ).select_from(_exchanges),
        "lengths": select(lengths.c.exchanges, func.count()).group_by(lengths.c.exchanges),
        "slot_values": select(_v.name, _v.value, mentions, func.count(distinct(_v.conversation_id)))
        .group_by(_v.name, _v.value)
        .order_by(mentions.desc(), _v.name, _v.value)
        .limit(top),
        "feedback_templates": select(
            _f.template_id, func.count(), *_positive_negative(_f.score), func.avg(_f.score)
        ).group_by(_f.template_id),
        "feedback_days": select(given.c.day, func.count(), *_positive_negative(given.c.score))
        .group_by(given.c.day)
        .order_by(given.c.day),
        "roles": select(_r.role, func.sum(_r.messages), func.sum(_r.tool_messages), func.count())
        .group_by(_r.role)
        .order_by(_r.role),
    }


def _positive_negative(score: Any) -> tuple[Any, Any]:
    """How many of the grouped feedback rows have a positive and a negative ``score``."""
    return (
        func.coalesce(func.sum(case((score > 0, 1), else_=0)), 0),
        func.coalesce(func.sum(case((score < 0, 1), else_=0)), 0),
    )


QUESTIONS_PER_TEMPLATE = (
    select(turns.c.template_id, func.count().label("questions"))
    .where(turns.c.role == "user")
    .group_by(turns.c.template_id)
    .order_by(turns.c.template_id)
)
"""The demo's example of analytics in SQL: questions per template, from the turns table."""
