"""What operators see: OpenTelemetry metrics (``convostore.otel``), a span for every statement
under OpenTelemetry's SQLAlchemy instrumentation in each documented order, the snippets of
docs/operations.md, and logs that never carry conversation content."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, MakeRepo, Sql
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import (
    ConversationTurn,
    SessionRepository,
    StoreConfig,
    StoreError,
)
from convostore.otel import CONVERSATION_ID, COUNTERS, DURATIONS, GAUGES, instrument, trace_context

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
TTL = 1800
CREATED = "convostore.sessions.created"
SWEEP_BATCH = "convostore.sweep.batch.duration"


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every data point collected now: metric name -> [(attributes, value or histogram)]."""
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value: Any
                    if isinstance(point, NumberDataPoint):
                        value = point.value
                    else:
                        # convostore's histograms use the default (explicit bucket) aggregation
                        assert isinstance(point, HistogramDataPoint), point
                        value = point
                    assert point.attributes is not None, point
                    found.setdefault(metric.name, []).append((dict(point.attributes), value))
    return found


def test_import_convostore_imports_no_opentelemetry() -> None:
    """OpenTelemetry is an optional extra: ``import convostore`` (and starting a repository's
    modules) loads none of it."""
    code = (
        "import sys, convostore, convostore.repository, convostore._core.store\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_metrics_after_a_workload(make_repo: MakeRepo, clock: FakeClock) -> None:
    """After appends, a miss, a hit, evictions and a sweep, every documented metric is there
    with the value the workload implies, carrying the given attributes."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    repo = await make_repo(max_sessions=1, transcript_retention=0, cache_coherence="local")
    instrument(repo, provider, attributes={"service.instance.id": "w1"})
    await repo.add_turn("a", "Welke archieven zijn er in Utrecht?", "Twaalf.")
    await repo.add_turn("b", "En in Enschede?", "Drie.")  # evicts a
    assert await repo.get("a") is not None  # a miss: read from the database; evicts b
    assert await repo.get("a") is not None  # a hit
    clock.advance(TTL + 1)
    assert await repo.sweep_expired() == 2

    found = points(reader)
    assert set(COUNTERS) | set(GAUGES) | {name for name, _ in DURATIONS.values()} <= set(found)
    values = {name: [value for _, value in found[name]] for name in (*COUNTERS, *GAUGES)}
    assert values == {
        "convostore._core.cache.hits": [1],
        "convostore._core.cache.misses": [1],
        "convostore._core.cache.evictions": [2],
        "convostore.sessions.created": [2],
        "convostore.sessions.expired": [2],
        "convostore.transcripts.deleted": [2],
        "convostore._core.cache.sessions": [0],
        "convostore._core.cache.enabled": [1],
    }
    worker = {"service.instance.id": "w1"}
    assert all(attrs == worker for name in values for attrs, _ in found[name])
    ((attrs, append),) = found["convostore.append.duration"]
    assert attrs == worker
    assert append.count == 2
    assert 0 < append.sum < 60
    ((_, load),) = found["convostore.load.duration"]
    assert load.count == 1
    batches = {attrs["convostore.sweep.pass"]: h.count for attrs, h in found[SWEEP_BATCH]}
    assert batches == {"sessions": 1, "transcripts": 1}
    provider.shutdown()


async def test_several_repositories_on_one_meter_provider(make_repo: MakeRepo) -> None:
    """Two repositories with their own attributes report side by side; a second one with the
    same attributes is refused; after ``uninstrument()`` a repository reports nothing."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    one, two = await make_repo(), await make_repo()
    first = instrument(one, provider, attributes={"worker": "1"})
    instrument(two, provider, attributes={"worker": "2"})
    with pytest.raises(ValueError, match="attributes"):
        instrument(two, provider, attributes={"worker": "1"})
    await one.add_turn("s", "q", "a")
    await two.get_or_create()
    created = dict((attrs["worker"], v) for attrs, v in points(reader)[CREATED])
    assert created == {"1": 1, "2": 1}

    first.uninstrument()
    await one.add_turn("s", "q2", "a2")
    found = points(reader)
    assert [attrs["worker"] for attrs, _ in found[CREATED]] == ["2"]
    appends = {attrs["worker"]: h.count for attrs, h in found["convostore.append.duration"]}
    assert appends == {"1": 1}  # the second append of one was no longer recorded
    provider.shutdown()


async def test_a_failing_timing_hook_fails_no_call(
    make_repo: MakeRepo, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged; the call it timed succeeds, and later hooks still run."""
    repo = await make_repo()
    seen: list[str] = []

    def broken(what: str, seconds: float) -> None:
        raise RuntimeError("broken hook")

    repo.add_timing_hook(broken)
    repo.add_timing_hook(lambda what, seconds: seen.append(what))
    with caplog.at_level(logging.ERROR, logger="convostore"):
        state = await repo.add_turn("s", "q", "a")
    assert [t.content for t in state.turns] == ["q", "a"]
    assert seen == ["append"]
    assert "timing hook failed on append" in caplog.text
    repo.remove_timing_hook(broken)
    await repo.add_turn("s", "q2", "a2")
    assert seen == ["append", "append"]


# -- traces -------------------------------------------------------------------------------

ORDERS = ["instrument the engine after start", "instrument globally first", "pass in an engine"]
STATEMENT_KEYS = ("db.statement", "db.query.text")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider recording into memory; OpenTelemetry's SQLAlchemy instrumentation
    (a process-wide singleton) is undone after the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        provider.shutdown()


def statements(exporter: InMemorySpanExporter) -> list[str]:
    """The statement of each finished span that has one, then forget the spans."""
    found: list[str] = []
    for span in exporter.get_finished_spans():
        attributes = span.attributes or {}
        found.extend(str(attributes[key]) for key in STATEMENT_KEYS if key in attributes)
    exporter.clear()
    return found


@pytest.fixture
async def traced(
    request: pytest.FixtureRequest,
    url: str,
    clock: FakeClock,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> AsyncIterator[SessionRepository]:
    """A started repository whose engine OpenTelemetry's SQLAlchemy instrumentation traces,
    set up in the order ``request.param`` names."""
    provider, _ = spans
    instrumentor = SQLAlchemyInstrumentor()
    config = StoreConfig(
        database_url=url, cleanup_interval=0, max_sessions=1, transcript_retention=0
    )
    order = request.param
    engine = None
    if order == "instrument globally first":
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    elif order == "pass in an engine":
        engine = create_async_engine(url)
        instrumentor.instrument(
            engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
        )
    repo = SessionRepository(config, engine=engine, clock=clock)
    await repo.start()
    if order == "instrument the engine after start":
        instrumentor.instrument(
            engine=repo.engine.sync_engine, tracer_provider=provider, skip_dep_check=True
        )
    try:
        yield repo
    finally:
        await repo.stop()
        if engine is not None:
            await engine.dispose()


@pytest.mark.parametrize("traced", ORDERS, indirect=True)
async def test_every_operation_shows_its_statements_as_spans(
    traced: SessionRepository,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    clock: FakeClock,
    backend: str,
) -> None:
    """add_turn, a cold get, update, delete and the sweep each produce spans whose statement
    attribute holds the SQL they ran, fast path or not."""
    repo, (_, exporter) = traced, spans
    await repo.add_turn("a", "q", "a", slots={"place": "Utrecht"})  # creates the session
    await repo.add_turn("b", "q", "a")  # evicts a
    statements(exporter)

    await repo.add_turn("b", "q2", "a2")  # the one-statement append on a live session
    append = statements(exporter)
    assert any("INSERT INTO turns" in s for s in append), append
    if backend == "postgresql":  # one statement: the CTE that bumps the session row inserts
        assert any(s.startswith("WITH bumped AS") for s in append), append

    state = await repo.get("a")  # a was evicted: a cold load
    assert state is not None
    load = statements(exporter)
    assert any("UNION ALL" in s and "turn_slots" in s for s in load), load

    state.add_turn(ConversationTurn(content="Hoeveel?"))
    await repo.update("a", state)
    update = statements(exporter)
    # PostgreSQL's update records its change in the same statement (WITH bumped AS (UPDATE ...)).
    assert any("UPDATE sessions SET" in s for s in update), update

    assert await repo.delete("a")
    deleted = statements(exporter)
    assert any(s.lstrip().startswith("DELETE FROM sessions") for s in deleted), deleted

    clock.advance(TTL + 1)
    assert await repo.sweep_expired() == 1
    sweep = statements(exporter)
    assert any("DELETE FROM sessions" in s and "expires_at" in s for s in sweep), sweep
    assert any("DELETE FROM conversations" in s for s in sweep), sweep
    if backend == "postgresql":
        assert any("FOR UPDATE SKIP LOCKED" in s for s in sweep), sweep


# -- docs/operations.md ---------------------------------------------------------------------


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", OPERATIONS, flags=re.DOTALL)


def test_operations_lists_every_metric() -> None:
    """docs/operations.md names every metric instrument() exports."""
    for name in (*COUNTERS, *GAUGES, *(name for name, _ in DURATIONS.values())):
        assert f"`{name}`" in OPERATIONS, name


@pytest.mark.sqlite
def test_operations_snippets_run(tmp_path: Path) -> None:
    """The metrics and tracing snippets of docs/operations.md run as written (each in a fresh
    interpreter, in an empty directory, on its SQLite file) and print the metrics and the
    spans they promise."""
    metrics, tracing = _blocks()

    def run(snippet: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    printed = run(metrics)
    assert '"name": "convostore.append.duration"' in printed
    assert '"name": "convostore._core.cache.hits"' in printed
    assert "INSERT INTO turns" in run(tracing)


# -- logging ---------------------------------------------------------------------------------

MARKER = "Zeldzaam-merkteken-7Q"
"""A string to look for in every log record: it is in every piece of content the workload
stores."""


def test_library_adds_no_log_handlers() -> None:
    """The ``convostore`` logger and its children have no handlers and no level of the
    library's making: where records go is the application's choice."""
    code = (
        "import logging, convostore, convostore._ops.cli, convostore.hosting, convostore.migrate\n"
        "names = [n for n in logging.root.manager.loggerDict if n.split('.')[0] == 'convostore']\n"
        "loggers = [logging.getLogger(n) for n in names]\n"
        "assert names and all(not l.handlers and l.level == 0 for l in loggers), names\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class Captured(logging.Handler):
    """Keeps every record it is handed, formatted as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{self.format(record)} {record.args!r} {record.__dict__!r}")


@pytest.fixture
def captured() -> Iterator[Captured]:
    """Every record of every logger under ``convostore``, at DEBUG."""
    logger = logging.getLogger("convostore")
    handler = Captured()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


REJECT_SQLITE = (
    "CREATE TRIGGER reject_marker BEFORE INSERT ON turns WHEN NEW.content = 'reject {m}' "
    "BEGIN SELECT RAISE(ABORT, 'rejected'); END"
)
REJECT_POSTGRES = (
    "CREATE FUNCTION reject_marker() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.content = 'reject {m}' THEN RAISE EXCEPTION 'rejected'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER reject_marker BEFORE INSERT ON turns FOR EACH ROW "
    "EXECUTE FUNCTION reject_marker()",
)


async def test_no_log_record_carries_content(
    make_repo: MakeRepo, sql: Sql, backend: str, captured: Captured, clock: FakeClock
) -> None:
    """A workload at DEBUG with a marker in every question, answer, resolved question,
    template, slot name and value and result, including a rejected write, a failing timing
    hook, a sweep and (PostgreSQL) connections the server drops, leaves records, none of which
    contains the marker."""
    repo = await make_repo(max_sessions=1, cleanup_interval=0, transcript_retention=0)
    m = MARKER

    def failing_hook(what: str, seconds: float) -> None:
        raise RuntimeError("hook failed")

    repo.add_timing_hook(failing_hook)

    async def exchange(sid: str, n: int) -> None:
        await repo.add_turn(
            sid,
            f"vraag {m} {n}",
            f"antwoord {m} {n}",
            resolved_question=f"opgelost {m}",
            template_id=f"sjabloon-{m}",
            slots={f"plaats-{m}": f"Utrecht {m}"},
            results=[{"naam": f"archief {m}", m: [m]}],
            user_id="u-1",
        )

    for n in range(3):
        await exchange("s1", n)
    await exchange("s2", 0)  # evicts s1
    state = await repo.get("s1", user_id="u-1")
    assert state is not None
    state.current_slots[f"nieuw-{m}"] = m
    state.add_turn(ConversationTurn(content=f"bijgewerkt {m}", slots={m: m}))
    await repo.update("s1", state)
    if backend == "sqlite":
        await sql(REJECT_SQLITE.format(m=m))
    else:
        for statement in REJECT_POSTGRES:
            await sql(statement.format(m=m))
    with pytest.raises(StoreError):
        await repo.add_turn("s2", f"reject {m}", f"antwoord {m}")
    if backend == "postgresql":
        await sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await exchange("s2", 1)  # retried on a fresh connection
        await asyncio.sleep(0.2)  # the change listener notices it was cut off
    json.dumps(await repo.export_user("u-1"))
    await repo.list_sessions("u-1")
    clock.advance(TTL + 1)
    await repo.sweep_expired()
    await repo.erase_user("u-1")
    await repo.stop()

    assert captured.lines, "the workload logged nothing: the test would prove nothing"
    assert any("timing hook failed" in line for line in captured.lines)
    leaked = [line for line in captured.lines if m in line]
    assert not leaked, leaked


async def test_trace_context_ties_the_current_span_and_the_exchange(
    repo: SessionRepository, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Inside a span, ``trace_context(sid)`` gives add_turn the span's ids (stored on both
    turns, read back cold) and marks the span with ``gen_ai.conversation.id``; outside any
    span it gives nothing, and add_turn stores no ids."""
    provider, exporter = spans
    assert trace_context("s") == {}
    with provider.get_tracer("app").start_as_current_span("answer") as span:
        ids = trace_context("s")
        state = await repo.add_turn("s", "Vraag?", "Antwoord.", **ids)
    context = span.get_span_context()
    assert ids == {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
    assert [(t.trace_id, t.span_id) for t in state.turns] == [(ids["trace_id"], ids["span_id"])] * 2
    (finished,) = exporter.get_finished_spans()
    assert (finished.attributes or {})[CONVERSATION_ID] == "s"
    untraced = await repo.add_turn("s", "Nog een?", "Ja.", **trace_context("s"))
    assert (untraced.turns[-1].trace_id, untraced.turns[-1].span_id) == (None, None)
