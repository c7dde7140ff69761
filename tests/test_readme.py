"""The README's promises: its analytics query, every Python snippet, the default of
``auto_migrate`` and the command line."""

from __future__ import annotations

import ast
import asyncio
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MakeRepo, Sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from convostore import SchemaNotReady, SessionRepository, StoreConfig, shutdown_session_manager
from convostore.config import DATABASE_URL_ENV
from convostore.migrate import upgrade_url

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


async def _fill(repo: SessionRepository) -> None:
    """Three conversations: two archives_in_place questions; one more, in a conversation that
    was then deleted (its transcript is retained); a question without a template."""
    one, _ = await repo.get_or_create()
    await repo.add_turn(
        one, "Welke archieven zijn er in Utrecht?", "12", template_id="archives_in_place"
    )
    await repo.add_turn(
        one,
        "En in Enschede?",
        "3",
        resolved_question="Welke archieven zijn er in Enschede?",
        template_id="archives_in_place",
    )
    two, _ = await repo.get_or_create()
    await repo.add_turn(two, "Archieven in Utrecht?", "12", template_id="archives_in_place")
    assert await repo.delete(two)
    three, _ = await repo.get_or_create()
    await repo.add_turn(three, "Hallo", "Hoi")


def test_readme_has_one_analytics_query() -> None:
    """The README shows exactly the one query the next test runs (the rest are in
    docs/analytics.md, tested by test_analytics.py)."""
    assert len(_blocks("sql")) == 1


async def test_analytics_query(make_repo: MakeRepo, sql: Sql) -> None:
    """The README's analytics query runs unchanged on this backend and counts the questions
    of the deleted conversation too."""
    await _fill(await make_repo())
    (query,) = _blocks("sql")
    assert [tuple(row) for row in await sql(query)] == [("archives_in_place", 3), (None, 1)]


SNIPPETS = {
    "usage": "history = state.to_dspy_history()",
    "fastapi": "app = FastAPI(lifespan=lifespan)",
    "compat": "from convostore import get_session_manager",
    "pgbouncer": 'pooler="pgbouncer"',
    "users": 'user_id="u-99"',
    "catalog": 'metadata={"place": "Utrecht"}',
    "summaries": "await repo.set_summary(",
    "history": "await repo.rewind(",
    "search": "page = await repo.search(",
    "feedback": "# replaces the first",
    "engine timeouts": '"command_timeout": 5',
    "encryption": "encryption_keys=[key]",
    "messages": "await repo.pop_message(",
}
"""Each README ```python block, by a line only it has; each has a test below."""


def _snippet(name: str) -> str:
    (block,) = [block for block in _blocks("python") if SNIPPETS[name] in block]
    return block


def test_every_python_block_is_tested() -> None:
    """Every ```python block in the README is one of the snippets the tests below run, so a new
    one cannot slip in untested."""
    blocks = _blocks("python")
    assert len(blocks) == len(SNIPPETS)
    assert sorted(name for block in blocks for name, line in SNIPPETS.items() if line in block) == (
        sorted(SNIPPETS)
    )


async def _migrate_postgres(backend: str, url: str) -> None:
    """The deploy's `convostore migrate`, which the README asks for on PostgreSQL only."""
    if backend == "postgresql":
        await upgrade_url(url)


async def _stored_contents(url: str, sid: str) -> list[str]:
    repo = SessionRepository(StoreConfig(database_url=url, cleanup_interval=0, auto_migrate=False))
    async with repo:
        state = await repo.get(sid)
    assert state is not None
    return [turn.content for turn in state.turns]


async def _run_snippet(
    name: str, backend: str, url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run the README's snippet ``name`` as written, its SQLite URL pointed at ``url``, in
    ``tmp_path``, after `convostore migrate` on PostgreSQL."""
    await _migrate_postgres(backend, url)
    example = _snippet(name).replace("sqlite+aiosqlite:///chat.db", url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)


async def test_usage_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The usage snippet runs as written on an empty database (its SQLite URL pointed at this
    test's), after `convostore migrate` on PostgreSQL."""
    await _run_snippet("usage", backend, empty_url, monkeypatch, tmp_path)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            sessions = await conn.scalar(text("SELECT COUNT(*) FROM sessions"))
            turns = await conn.scalar(text("SELECT COUNT(*) FROM turns"))
    finally:
        await engine.dispose()
    assert (sessions, turns) == (1, 2)


async def test_users_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The users snippet runs as written on an empty database and leaves nothing of the
    user behind, after `convostore migrate` on PostgreSQL."""
    await _run_snippet("users", backend, empty_url, monkeypatch, tmp_path)
    assert await _row_counts(empty_url) == [0, 0, 0, 0]


async def test_catalog_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The catalog snippet runs as written on an empty database (its asserts hold), after
    `convostore migrate` on PostgreSQL, and leaves three titled conversations."""
    await _migrate_postgres(backend, empty_url)
    example = _snippet("catalog").replace("sqlite+aiosqlite:///chat.db", empty_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            titles = await conn.scalar(text("SELECT COUNT(title) FROM sessions"))
    finally:
        await engine.dispose()
    assert titles == 3


async def test_summaries_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The summaries snippet runs as written on an empty database (its assert holds), after
    `convostore migrate` on PostgreSQL, and prints the summary before the window."""
    await _migrate_postgres(backend, empty_url)
    example = _snippet("summaries").replace("sqlite+aiosqlite:///chat.db", empty_url)
    monkeypatch.chdir(tmp_path)
    printed: list[object] = []
    namespace: dict[str, object] = {"__name__": "readme_example", "print": printed.append}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)
    (history,) = printed
    messages = history["messages"] if isinstance(history, dict) else history.messages  # type: ignore[attr-defined]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "four cities" in messages[0]["content"]


async def test_messages_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The messages snippet runs as written (its asserts hold); the five messages it took
    out stay in the transcript, superseded."""
    await _run_snippet("messages", backend, empty_url, monkeypatch, tmp_path)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            roles = (
                await conn.execute(
                    text(
                        "SELECT role, SUM(messages) FROM message_roles GROUP BY role ORDER BY role"
                    )
                )
            ).all()
            live = await conn.scalar(text("SELECT turn_count FROM sessions"))
    finally:
        await engine.dispose()
    assert [tuple(row) for row in roles] == [
        ("assistant", 2),
        ("system", 1),
        ("tool", 1),
        ("user", 1),
    ]
    assert live == 0


async def test_history_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The rewind, fork and caps snippet runs as written (its asserts hold); the typo stays in
    the transcript, superseded."""
    await _run_snippet("history", backend, empty_url, monkeypatch, tmp_path)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            superseded = await conn.scalar(
                text(
                    "SELECT COUNT(*) FROM turns t JOIN conversations c "
                    "ON c.session_id = t.session_id AND c.conversation_id = t.conversation_id "
                    "WHERE c.superseded_reason = 'rewind' AND t.content = 'En in Enschedee?'"
                )
            )
    finally:
        await engine.dispose()
    assert superseded == 1


async def test_encryption_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The redaction and encryption snippet runs as written; the stored question is neither
    the e-mail address nor the redacted text, but a token."""
    await _run_snippet("encryption", backend, empty_url, monkeypatch, tmp_path)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT content FROM turns"))).scalars().all()
    finally:
        await engine.dispose()
    assert len(stored) == 2
    assert all(content.startswith("csf1:") for content in stored)


async def test_search_snippet_runs(
    backend: str,
    empty_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The search snippet runs as written on an empty database (after `convostore migrate` on
    PostgreSQL) and prints its one hit, the question, with both words marked."""
    await _migrate_postgres(backend, empty_url)
    example = _snippet("search").replace("sqlite+aiosqlite:///chat.db", empty_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)
    (line,) = capsys.readouterr().out.splitlines()
    assert " 1 user " in line
    assert "**Archieven** in **Utrecht**" in line


async def test_feedback_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The feedback snippet runs as written on an empty database (its asserts hold), after
    `convostore migrate` on PostgreSQL, and leaves the one rating and the traced turns."""
    await _migrate_postgres(backend, empty_url)
    example = _snippet("feedback").replace("sqlite+aiosqlite:///chat.db", empty_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), namespace)
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            scores = (await conn.execute(text("SELECT score FROM feedback"))).all()
            traced = await conn.scalar(text("SELECT COUNT(trace_id) FROM turns"))
    finally:
        await engine.dispose()
    assert ([tuple(row) for row in scores], traced) == ([(1,)], 2)


async def _row_counts(url: str) -> list[int]:
    """Rows in ``sessions``, ``conversations``, ``turns`` and ``turn_slots``."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [
                int(await conn.scalar(text(f"SELECT COUNT(*) FROM {table}")) or 0)
                for table in ("sessions", "conversations", "turns", "turn_slots")
            ]
    finally:
        await engine.dispose()


@asynccontextmanager
async def _fastapi_snippet(
    backend: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the README's FastAPI app, built as written with its URL from env
    CONVOSTORE_DATABASE_URL (after `convostore migrate` on PostgreSQL), its lifespan run."""
    await _migrate_postgres(backend, url)
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(_snippet("fastapi"), "README.md", "exec"), namespace)
    app = namespace["app"]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client,
    ):
        yield client


async def test_fastapi_snippet_runs(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FastAPI app answers a question and its follow-up through its lifespan, on an empty
    database."""
    async with _fastapi_snippet(backend, empty_url, monkeypatch) as client:
        first = await client.post("/ask", params={"question": "Welke archieven in Utrecht?"})
        assert first.status_code == 200, first.text
        sid = first.json()["session_id"]
        second = await client.post(
            "/ask", params={"question": "En in Enschede?", "session_id": sid}
        )
        assert second.status_code == 200, second.text
    assert second.json() == {"session_id": sid, "answer": "(2 earlier turns) ..."}
    assert len(await _stored_contents(empty_url, sid)) == 4


async def test_fastapi_snippet_makes_the_ids_and_refuses_with_4xx(
    backend: str, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients cannot choose session ids: an id the server did not make is 404, a malformed one
    400 with convostore's reason (never a 500), and so is a question convostore cannot store;
    none of them leaves a row behind."""
    async with _fastapi_snippet(backend, empty_url, monkeypatch) as client:
        for session_id, status, says in (
            ("café", 400, "session id"),
            ("x" * 129, 400, "session id"),
            ("mine", 404, "unknown or expired session"),
        ):
            response = await client.post("/ask", params={"question": "q", "session_id": session_id})
            assert response.status_code == status, (session_id, response.text)
            assert says in response.json()["detail"]
        response = await client.post("/ask", params={"question": "nul \x00 byte"})
        assert response.status_code == 400, response.text
        assert "question" in response.json()["detail"]
    assert await _row_counts(empty_url) == [0, 0, 0, 0]


async def test_compat_snippet_runs(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippet for code written for the original SessionManager runs on an empty database
    with no migration step, on PostgreSQL too. Its top-level awaits run as in an async function
    of that code, whose variables (the request's values) the test supplies."""
    monkeypatch.setenv(DATABASE_URL_ENV, empty_url)
    namespace: dict[str, Any] = {
        "__name__": "readme_compat",
        "session_id": None,
        "question": "Welke archieven zijn er in Utrecht?",
        "answer": "Er zijn 12 archieven in Utrecht.",
        "resolved": None,
        "template_id": "archives_in_place",
        "slots": {"place": "Utrecht"},
        "results": [{"name": "Het Utrechts Archief"}],
    }
    code = compile(_snippet("compat"), "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    try:
        await eval(code, namespace)
    finally:
        await shutdown_session_manager()
    assert await _stored_contents(empty_url, namespace["sid"]) == [
        namespace["question"],
        namespace["answer"],
    ]


def test_pgbouncer_snippet_runs() -> None:
    """The PgBouncer snippet builds the config it describes."""
    namespace: dict[str, Any] = {"__name__": "readme_pgbouncer"}
    exec(compile(_snippet("pgbouncer"), "README.md", "exec"), namespace)
    config = namespace["config"]
    assert isinstance(config, StoreConfig)
    assert (config.pooler, config.listen_url) == (
        "pgbouncer",
        "postgresql+asyncpg://app@db:5432/app",
    )


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_engine_timeouts_snippet_runs(url: str) -> None:
    """The engine the README shows for bounded calls on an engine passed in serves a
    repository (the fault test ``test_a_server_that_stops_answering_...[passed-in]`` pauses a
    server under such an engine)."""
    namespace: dict[str, Any] = {"__name__": "readme_engine_timeouts"}
    example = _snippet("engine timeouts").replace("postgresql+asyncpg://app@db/app", url)
    exec(compile(example, "README.md", "exec"), namespace)
    engine = namespace["engine"]
    try:
        assert engine.pool.timeout() == 5
        async with SessionRepository(StoreConfig(cleanup_interval=0), engine=engine) as repo:
            state = await repo.add_turn("s", "q", "a")
            assert len(state.turns) == 2
    finally:
        await engine.dispose()


async def test_auto_migrate_default(backend: str, empty_url: str) -> None:
    """The settings table's default: on an empty database start() creates the schema on SQLite
    and raises SchemaNotReady on PostgreSQL, where the deploy migrates."""
    repo = SessionRepository(StoreConfig(database_url=empty_url, cleanup_interval=0))
    if backend == "postgresql":
        with pytest.raises(SchemaNotReady, match="convostore migrate"):
            await repo.start()
        return
    async with repo:
        await repo.add_turn("s", "q", "a")
    assert await _stored_contents(empty_url, "s") == ["q", "a"]


@pytest.mark.parametrize("command", [["convostore"], [sys.executable, "-m", "convostore"]])
def test_demo_command(command: list[str], tmp_path: Path) -> None:
    """`convostore demo` (and `python -m convostore demo`) answers the follow-up from the
    turns stored before the restart and prints the analytics."""
    if command == ["convostore"]:
        command = [str(BIN / "convostore")]
    done = subprocess.run(
        [*command, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "resolved from the stored turns: Welke archieven zijn er in Enschede?" in done.stdout
    assert "archives_in_place: 2" in done.stdout
    assert done.stdout.count("user ") >= 2


async def test_migrate_command(empty_url: str) -> None:
    """`convostore migrate --url` prepares an empty database for a repository."""
    migrate = [str(BIN / "convostore"), "migrate", "--url", empty_url]
    done = await asyncio.to_thread(
        subprocess.run, migrate, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    async with SessionRepository(StoreConfig(database_url=empty_url, cleanup_interval=0)) as repo:
        sid, _ = await repo.get_or_create()
        assert await repo.get(sid) is not None


def test_migrate_command_reports_errors(tmp_path: Path) -> None:
    """A database that cannot be reached gives a one-line error and exit code 1."""
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [str(BIN / "convostore"), "migrate", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("convostore: schema migration failed")


def test_installed_package_ships_migrations() -> None:
    """An installed convostore migrates from scripts inside the package, not the source tree."""
    import convostore
    from convostore.migrate import script_location

    package = Path(convostore.__file__).resolve().parent
    if package == ROOT / "convostore":
        pytest.skip(
            "convostore is imported from the source tree (editable install); CI installs it"
        )
    assert script_location() == package / "_migrations"
    assert (package / "_migrations" / "env.py").is_file()
    assert list((package / "_migrations" / "versions").glob("0001_*.py"))


def test_installed_package_ships_the_integrations() -> None:
    """The framework adapters are in the installed package, each behind an extra of its own
    (their end-to-end tests import them from there in CI)."""
    import convostore

    extras = set(metadata("convostore").get_all("Provides-Extra") or [])
    assert {"langchain", "pydantic-ai", "openai-agents"} <= extras
    package = Path(convostore.__file__).resolve().parent
    if package == ROOT / "convostore":
        pytest.skip(
            "convostore is imported from the source tree (editable install); CI installs it"
        )
    for module in ("langchain", "pydantic_ai", "openai_agents"):
        assert (package / "integrations" / f"{module}.py").is_file()


INSTRUCTIONS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INSTRUCTIONS += sorted((ROOT / "examples").glob("*.py"))
"""The files whose install lines a new user copies."""
PIP_INSTALL = re.compile(r"pip install ([^`\n#]+)")
FROM_HERE = re.compile(r"^(?:\.|/|dist/|convostore\[[a-z,]+\] @ file:///)")
"""A requirement that installs convostore from the checkout, a path or a built wheel."""


def test_install_lines_name_the_checkout_or_a_wheel() -> None:
    """convostore is on no package index, so every ``pip install`` line of the README, docs and
    examples installs it from the checkout, a file URL or a wheel, never by its bare name
    (``pip install "convostore[postgres]"`` fails on a machine without it); and every extra
    they name exists."""
    extras = set(metadata("convostore").get_all("Provides-Extra") or [])
    assert {"postgres", "redis", "otel"} <= extras
    found = []
    for path in INSTRUCTIONS:
        for line in PIP_INSTALL.findall(path.read_text(encoding="utf-8")):
            command = re.split(r"&&|;|\|", line)[0]
            where = f"{path.name}: pip install {command.strip()}"
            for requirement in shlex.split(command):
                wanted = re.search(r"\[([a-z,]+)\]", requirement)
                if requirement.startswith("-") or not (wanted or "convostore" in requirement):
                    continue  # an option, or another package
                assert FROM_HERE.match(requirement) or ".whl" in requirement, where
                assert wanted is None or set(wanted[1].split(",")) <= extras, where
                found.append(requirement)
    assert ".[postgres]" in found
    assert "convostore[postgres] @ file:///path/to/convostore" in found
