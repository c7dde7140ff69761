"""OpenTelemetry for a ``SessionRepository``: ``pip install "convostore[otel]"``, then
``instrument(repo)`` for metrics, and ``trace_context(session_id)`` to tie turns and traces.

The core counts and times in plain Python (``SessionRepository.stats()`` and its timing hooks)
and imports no OpenTelemetry; this module, imported only by whoever installed the extra, turns
those into instruments of the meter ``convostore``: observable counters and gauges read from
``stats()`` when the reader collects, and histograms fed by a timing hook. The metric names,
units and attributes are listed in docs/operations.md.

convostore starts no spans of its own (OpenTelemetry's SQLAlchemy instrumentation shows its
statements). ``trace_context`` links the application's span and the exchange both ways: the
turns store the span's ids, and the span gets the attribute ``gen_ai.conversation.id`` (the
session id, as OpenTelemetry's GenAI conventions name it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from threading import Lock
from typing import TypedDict
from weakref import WeakKeyDictionary

from opentelemetry import trace
from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
    get_meter,
)
from opentelemetry.util.types import AttributeValue

from convostore.repository import SessionRepository

__all__ = [
    "CONVERSATION_ID",
    "COUNTERS",
    "DURATIONS",
    "GAUGES",
    "METER_NAME",
    "Instrumentation",
    "TraceIds",
    "instrument",
    "trace_context",
]

METER_NAME = "convostore"

Attributes = Mapping[str, AttributeValue]

COUNTERS: dict[str, tuple[str, str, str]] = {
    "convostore._core.cache.hits": ("cache_hits", "{hit}", "gets served from the cache"),
    "convostore._core.cache.misses": ("cache_misses", "{miss}", "gets that read the database"),
    "convostore._core.cache.evictions": ("sessions_evicted", "{session}", "LRU evictions"),
    "convostore.sessions.created": ("sessions_created", "{session}", "sessions created"),
    "convostore.sessions.expired": (
        "sessions_expired",
        "{session}",
        "sessions ended by expiry, on a read or by the sweep",
    ),
    "convostore.transcripts.deleted": (
        "transcripts_deleted",
        "{conversation}",
        "conversations the sweep deleted past transcript_retention",
    ),
}
"""Monotonic counters: metric name -> (``stats()`` key, unit, description)."""

GAUGES: dict[str, tuple[str, str, str]] = {
    "convostore._core.cache.sessions": ("cached_sessions", "{session}", "sessions in the cache"),
    "convostore._core.cache.enabled": (
        "cache_enabled",
        "1",
        "1 while the cache serves hits, 0 while it is off because the change listener is down",
    ),
}
"""Gauges: metric name -> (``stats()`` key, unit, description)."""

DURATIONS: dict[str, tuple[str, dict[str, AttributeValue]]] = {
    "append": ("convostore.append.duration", {}),
    "load": ("convostore.load.duration", {}),
    "sweep.sessions": ("convostore.sweep.batch.duration", {"convostore.sweep.pass": "sessions"}),
    "sweep.transcripts": (
        "convostore.sweep.batch.duration",
        {"convostore.sweep.pass": "transcripts"},
    ),
}
"""Timing hook events -> (histogram name, the attributes they add)."""

_DESCRIPTIONS = {
    "convostore.append.duration": "add_turn calls, from admission to the returned state",
    "convostore.load.duration": "reads of one session from the database",
    "convostore.sweep.batch.duration": "expiry sweep batches, one transaction each",
}
_BOUNDARIES = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: an append or load takes about a millisecond, a sweep batch tens of them."""


def _version() -> str:
    try:
        return version("convostore")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0"


@dataclass(eq=False)
class Instrumentation:
    """One repository's metrics on one meter; ``uninstrument()`` ends them."""

    repo: SessionRepository
    attributes: dict[str, AttributeValue]
    _instruments: _Instruments = field(repr=False)

    def record(self, what: str, seconds: float) -> None:
        """The timing hook: one duration into its histogram."""
        histogram, extra = self._instruments.durations[what]
        histogram.record(seconds, {**self.attributes, **extra} if extra else self.attributes)

    def uninstrument(self) -> None:
        """Stop recording durations and observing this repository's counters."""
        self.repo.remove_timing_hook(self.record)
        self._instruments.remove(self)


class _Instruments:
    """convostore's instruments on one meter, observing every repository instrumented on it
    (the SDK creates an instrument once per meter and ignores the callbacks of a second
    registration under the same name)."""

    def __init__(self, meter: Meter) -> None:
        self._lock = Lock()
        self._registered: list[Instrumentation] = []
        for name, (key, unit, description) in COUNTERS.items():
            meter.create_observable_counter(name, [self._observer(key)], unit, description)
        for name, (key, unit, description) in GAUGES.items():
            meter.create_observable_gauge(name, [self._observer(key)], unit, description)
        histograms = {
            name: meter.create_histogram(
                name, "s", description, explicit_bucket_boundaries_advisory=_BOUNDARIES
            )
            for name, description in _DESCRIPTIONS.items()
        }
        self.durations: dict[str, tuple[Histogram, dict[str, AttributeValue]]] = {
            what: (histograms[name], extra) for what, (name, extra) in DURATIONS.items()
        }

    def _observer(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback that observes ``stats()[key]`` of every registered repository."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                registered = list(self._registered)
            return [Observation(i.repo.stats()[key], i.attributes) for i in registered]

        return observe

    def add(self, instrumentation: Instrumentation) -> None:
        with self._lock:
            if any(i.attributes == instrumentation.attributes for i in self._registered):
                raise ValueError(
                    "a repository with these attributes is instrumented on this meter already; "
                    "give each repository its own attributes"
                )
            self._registered.append(instrumentation)

    def remove(self, instrumentation: Instrumentation) -> None:
        with self._lock:
            if instrumentation in self._registered:
                self._registered.remove(instrumentation)


_by_meter: WeakKeyDictionary[Meter, _Instruments] = WeakKeyDictionary()
_by_meter_lock = Lock()


def instrument(
    repo: SessionRepository,
    meter_provider: MeterProvider | None = None,
    *,
    attributes: Attributes | None = None,
) -> Instrumentation:
    """Export ``repo``'s counters, gauges and durations as OpenTelemetry metrics of the meter
    ``convostore`` on ``meter_provider`` (None: the global one). ``attributes`` are added to
    each data point; several repositories on one meter provider need different ones. Works
    before or after ``repo.start()``."""
    meter = get_meter(METER_NAME, _version(), meter_provider)
    with _by_meter_lock:
        instruments = _by_meter.get(meter)
        if instruments is None:
            instruments = _by_meter[meter] = _Instruments(meter)
    instrumentation = Instrumentation(repo, dict(attributes or {}), instruments)
    instruments.add(instrumentation)
    repo.add_timing_hook(instrumentation.record)
    return instrumentation


CONVERSATION_ID = "gen_ai.conversation.id"
"""The span attribute that names the conversation (OpenTelemetry's GenAI semantic
conventions): the session id."""


class TraceIds(TypedDict, total=False):
    """``add_turn``'s keyword arguments for a span's ids (none where no span is current)."""

    trace_id: str
    span_id: str


def trace_context(session_id: str | None = None) -> TraceIds:
    """The current span's ids as ``add_turn`` takes them, ``trace_id`` and ``span_id`` in
    lowercase hex: ``await repo.add_turn(sid, q, a, **trace_context(sid))``. Empty (so
    ``add_turn`` stores none) when no valid span is current. With ``session_id``, the current
    span also gets the attribute ``gen_ai.conversation.id``, so a trace found in the tracing
    backend names its conversation, as the stored turns name their trace."""
    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return TraceIds()
    if session_id is not None:
        span.set_attribute(CONVERSATION_ID, session_id)
    return TraceIds(
        trace_id=trace.format_trace_id(context.trace_id),
        span_id=trace.format_span_id(context.span_id),
    )
