"""``StoreConfig.encryption_keys``: turns' content, resolved question and results encrypted at
rest, on the fast path and SQLAlchemy's, read back whole from the cache and cold; keys
rotate (the first encrypts, all decrypt; ``rekey`` moves every row to the first); rows
written before encryption still load; a missing, wrong or altered key is
``DecryptionFailed``, never ciphertext. Every backend."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import MakeRepo, Sql
from cryptography.fernet import Fernet

from convostore import (
    ConfigError,
    ConversationTurn,
    DecryptionFailed,
    SessionRepository,
    StoreConfig,
)
from convostore._core.crypt import SEALED_MARK, sealed_with
from convostore._ops.admin import transcripts
from convostore._ops.cli import cli
from convostore._ops.rekey import rekey
from convostore._ops.transfer import export_conversations, import_conversations

OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))
QUESTION = "Welke archieven zijn er in Utrecht? 🏛️"
PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "sqlalchemy"])


async def _talk(repo: SessionRepository, sid: str) -> list[ConversationTurn]:
    """Two exchanges with every encrypted field set; the turns as add_turn returned them."""
    await repo.add_turn(
        sid,
        QUESTION,
        "Er zijn er 12.",
        resolved_question="Welke archieven zijn er in de stad Utrecht?",
        template_id="archives_in_place",
        slots={"place": "Utrecht"},
        results=[{"name": "Het Utrechts Archief", "score": 0.5, "tags": [1, None, -0.0]}],
    )
    state = await repo.add_turn(sid, "En in Enschede?", "Er zijn er 3.")
    return list(state.turns)


async def _turn_rows(sql: Sql, sid: str | None = None) -> list[tuple[str, str | None, str]]:
    """Every turn's (or session ``sid``'s) content, resolved question and results, as stored
    (results as JSON text), in order."""
    rows = await sql(
        "SELECT content, resolved_question, results FROM turns"
        " WHERE session_id = coalesce(:sid, session_id) ORDER BY session_id, seq",
        sid=sid,
    )
    return [(content, resolved, _json_text(results)) for content, resolved, results in rows]


def _json_text(value: Any) -> str:
    """A JSON column's value as JSON text: drivers return the text, or (asyncpg through
    SQLAlchemy) the decoded value."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return json.dumps(value)
        return value
    return json.dumps(value)


def _under(key: str, rows: list[tuple[str, str | None, str]]) -> bool:
    """Whether every encrypted field of ``rows`` was encrypted with ``key``."""
    prefix = sealed_with(key)
    return all(
        content.startswith(prefix)
        and (resolved is None or resolved.startswith(prefix))
        and json.loads(results).startswith(prefix)
        for content, resolved, results in rows
    )


@PATHS
async def test_round_trip_cached_and_cold(make_repo: MakeRepo, sql: Sql, fast_path: bool) -> None:
    """Turns read back exactly as written from the cache, from a new repository (whole and
    windowed), after update too, while the rows hold only tokens of the first key."""
    repo = await make_repo(encryption_keys=[NEW], fast_path=fast_path)
    await repo.get_or_create("live")
    written = await _talk(repo, "live")  # appends to a live session
    await _talk(repo, "new")  # the append that creates its session
    state = await repo.get("live")
    assert state is not None
    state.turns.append(ConversationTurn(role="user", content="Dank je", results=[{"a": "b"}]))
    await repo.update("live", state)
    cached = await repo.get("live")
    assert cached is not None
    assert cached.turns[:4] == written
    rows = await _turn_rows(sql)
    assert len(rows) == 9
    assert _under(NEW, rows)
    assert not any(
        "Utrecht" in text or "archief" in text.lower() for row in rows for text in row if text
    )
    await repo.stop()
    cold = await make_repo(encryption_keys=[NEW], fast_path=fast_path)
    loaded = await cold.get("live")
    assert loaded is not None
    assert loaded.turns == cached.turns
    assert loaded.turns[0].results == [
        {"name": "Het Utrechts Archief", "score": 0.5, "tags": [1, None, -0.0]}
    ]
    window = await (await make_repo(encryption_keys=[NEW])).get("new", last_turns=3)
    assert window is not None
    assert [turn.content for turn in window.turns] == [
        "Er zijn er 12.",
        "En in Enschede?",
        "Er zijn er 3.",
    ]


@PATHS
async def test_rotation_and_rekey(make_repo: MakeRepo, url: str, sql: Sql, fast_path: bool) -> None:
    """With a new key first, rows of the old key still load and new rows use the new key;
    rekey moves plaintext and old rows to the new key in batches, a second run finds nothing,
    and then the new key alone reads everything."""
    plain = await make_repo(fast_path=fast_path)
    before = await _talk(plain, "plain")
    old = await make_repo(encryption_keys=[OLD], fast_path=fast_path)
    under_old = await _talk(old, "old")
    rotated = await make_repo(encryption_keys=[NEW, OLD], fast_path=fast_path)
    under_new = await _talk(rotated, "new")
    for sid, turns in (("plain", before), ("old", under_old)):
        read = await rotated.get(sid)
        assert read is not None
        assert read.turns == turns
    assert _under(NEW, await _turn_rows(sql, "new"))
    assert _under(OLD, await _turn_rows(sql, "old"))
    batches: list[int] = []
    counts = await rekey(url, [NEW, OLD], batch_size=3, progress=batches.append)
    assert (counts.rekeyed, counts.from_plaintext, counts.batches) == (8, 4, 3)
    assert batches == [3, 6, 8]
    assert _under(NEW, await _turn_rows(sql))
    again = await rekey(url, [NEW, OLD])
    assert (again.rekeyed, again.batches) == (0, 0)
    only_new = await make_repo(encryption_keys=[NEW], fast_path=fast_path)
    for sid, turns in (("plain", before), ("old", under_old), ("new", under_new)):
        read = await only_new.get(sid)
        assert read is not None
        assert read.turns == turns


async def test_plaintext_rows_load_after_keys_are_set(make_repo: MakeRepo, sql: Sql) -> None:
    """Rows written before keys were set load as they are, and the session goes on: its new
    turns encrypted, its old ones still plaintext."""
    plain = await make_repo()
    before = await _talk(plain, "s1")
    await plain.stop()
    repo = await make_repo(encryption_keys=[NEW])
    state = await repo.get("s1")
    assert state is not None
    assert state.turns == before
    await repo.add_turn("s1", "Nog een vraag", "Nog een antwoord")
    rows = await _turn_rows(sql)
    assert rows[0][0] == QUESTION
    assert not rows[3][0].startswith(SEALED_MARK)
    assert _under(NEW, rows[4:])
    cold = await (await make_repo(encryption_keys=[NEW])).get("s1")
    assert cold is not None
    assert [turn.content for turn in cold.turns][-2:] == ["Nog een vraag", "Nog een antwoord"]


@pytest.mark.parametrize("keys", [[OTHER], []], ids=["wrong-key", "no-key"])
async def test_missing_or_wrong_key_is_a_clear_error(
    make_repo: MakeRepo, url: str, keys: list[str]
) -> None:
    """A repository without the key that encrypted the rows raises DecryptionFailed naming
    the key id (never a key or the text) on a cold read, an export and a transcript."""
    writer = await make_repo(encryption_keys=[NEW])
    await _talk(writer, "s1")
    await writer.stop()
    reader = await make_repo(encryption_keys=keys)
    with pytest.raises(DecryptionFailed, match=sealed_with(NEW)[len(SEALED_MARK) : -1]) as raised:
        await reader.get("s1")
    assert NEW not in str(raised.value)
    with pytest.raises(DecryptionFailed):
        await export_conversations(url, io.StringIO(), encryption_keys=keys)
    with pytest.raises(DecryptionFailed):
        await transcripts(reader.engine, "s1", include_ended=True, encryption_keys=keys)


async def test_altered_row_is_a_clear_error(make_repo: MakeRepo, sql: Sql) -> None:
    """A token changed in the database does not decrypt: DecryptionFailed, not garbage."""
    writer = await make_repo(encryption_keys=[NEW])
    await _talk(writer, "s1")
    await writer.stop()
    (content,) = (await sql("SELECT content FROM turns WHERE seq = 1"))[0]
    await sql("UPDATE turns SET content = :c WHERE seq = 1", c=content[:-6] + "AAAAA=")
    reader = await make_repo(encryption_keys=[NEW])
    with pytest.raises(DecryptionFailed, match="altered"):
        await reader.get("s1")


async def test_operator_paths_read_and_write_encrypted_turns(
    make_repo: MakeRepo, url: str, sql: Sql
) -> None:
    """export_user, show's transcripts and the export give the text; an import with keys
    stores the turns encrypted, and they read back equal."""
    repo = await make_repo(encryption_keys=[NEW])
    await repo.get_or_create("s1", user_id="u1")
    written = await _talk(repo, "s1")
    exported = await repo.export_user("u1")
    assert exported["conversations"][0]["turns"][0]["content"] == QUESTION
    (shown,) = await transcripts(repo.engine, "s1", include_ended=True, encryption_keys=[NEW])
    assert shown.turns == written
    out = io.StringIO()
    await export_conversations(url, out, encryption_keys=[NEW])
    assert QUESTION in out.getvalue()
    for table in ("turn_slots", "turns", "sessions", "conversations"):
        await sql(f"DELETE FROM {table}")
    await repo.stop()
    counts = await import_conversations(url, out.getvalue().splitlines(), encryption_keys=[OLD])
    assert counts.turns == 4
    assert _under(OLD, await _turn_rows(sql))
    engine_repo = await make_repo(encryption_keys=[OLD])
    (read,) = await transcripts(engine_repo.engine, "s1", include_ended=True, encryption_keys=[OLD])
    assert read.turns == written


async def test_cli_rekey_takes_keys_from_the_environment(
    make_repo: MakeRepo, url: str, sql: Sql
) -> None:
    """``convostore rekey`` reads CONVOSTORE_ENCRYPTION_KEYS, reports its counts, and refuses
    to run without keys (exit code 1, one line); ``show`` reads the turns with the same
    variable."""
    await _talk(await make_repo(encryption_keys=[OLD]), "s1")
    runner = CliRunner()
    env = {
        "CONVOSTORE_ENCRYPTION_KEYS": f"{NEW}, {OLD}",
        "CONVOSTORE_DATABASE_URL": None,
        "COLUMNS": "200",
    }
    result = await _in_thread(runner, ["rekey", "--url", url], env)
    assert result.exit_code == 0, result.output
    assert "re-encrypted 4 turns (0 of them plaintext)" in result.output
    assert _under(NEW, await _turn_rows(sql))
    shown = await _in_thread(runner, ["show", "s1", "--all", "--json", "--url", url], env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["conversations"][0]["turns"][0]["content"] == QUESTION
    refused = await _in_thread(runner, ["rekey", "--url", url], {"CONVOSTORE_ENCRYPTION_KEYS": ""})
    assert refused.exit_code == 1
    assert "CONVOSTORE_ENCRYPTION_KEYS" in refused.output


async def test_rekey_goes_on_after_an_interruption(make_repo: MakeRepo, url: str, sql: Sql) -> None:
    """A rekey that stops part way (here at a turn of a key it was not given) keeps the
    batches it committed; run again, it does only the turns still to do."""
    await _talk(await make_repo(encryption_keys=[OLD]), "a")
    await _talk(await make_repo(encryption_keys=[OTHER]), "b")
    with pytest.raises(DecryptionFailed):
        await rekey(url, [NEW, OLD], batch_size=2)
    assert _under(NEW, await _turn_rows(sql, "a"))
    assert _under(OTHER, await _turn_rows(sql, "b"))
    counts = await rekey(url, [NEW, OLD, OTHER], batch_size=2)
    assert (counts.rekeyed, counts.batches) == (4, 2)
    assert _under(NEW, await _turn_rows(sql))


async def _in_thread(runner: CliRunner, args: list[str], env: dict[str, Any]) -> Any:
    return await asyncio.to_thread(runner.invoke, cli, args, env=env)


def test_keys_are_checked_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed key is a ConfigError (naming the variable when it came from the
    environment); keys never show in repr; the environment's keys are comma-separated."""
    with pytest.raises(ConfigError, match="key 2 is not a Fernet key"):
        StoreConfig(encryption_keys=[NEW, "not-a-key"])
    config = StoreConfig(encryption_keys=[NEW, OLD])
    assert NEW not in repr(config)
    assert OLD not in repr(config)
    monkeypatch.setenv("CONVOSTORE_ENCRYPTION_KEYS", f"{NEW},{OLD}")
    assert StoreConfig().encryption_keys == (NEW, OLD)
    monkeypatch.setenv("CONVOSTORE_ENCRYPTION_KEYS", "nope")
    with pytest.raises(ConfigError, match="CONVOSTORE_ENCRYPTION_KEYS"):
        StoreConfig()


def test_import_convostore_does_not_import_cryptography() -> None:
    """cryptography is an optional extra: importing convostore (and building a config
    without keys) does not load it."""
    code = (
        "import sys, convostore; convostore.StoreConfig(); "
        "assert 'cryptography' not in sys.modules, 'loaded'"
    )
    env = {k: v for k, v in os.environ.items() if k != "CONVOSTORE_ENCRYPTION_KEYS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
