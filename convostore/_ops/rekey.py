"""``rekey``: turns encrypted again with the first of ``StoreConfig.encryption_keys``.

After a new key is put first (the old ones after it), new turns are encrypted with it, while
the turns stored before stay under the old key, or in plaintext if they were written before
encryption was turned on. ``rekey`` finds those turns in SQL by the key id at the start of
their ``content`` (``crypt.sealed_with``; a turn's encrypted fields are always written
together, under one key), opens them with whichever key they name and seals them with the
first, in batches of one transaction each. A run that stops part way leaves every batch
before it done; running it again goes on with the turns still to do. Once it reports
nothing left, the old keys can be dropped from the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, bindparam, func, select, tuple_, update

from convostore._core.crypt import SEALED_MARK, TurnCipher, sealed_with
from convostore._core.schema import turns
from convostore._ops.admin import open_database
from convostore.config import check_setting
from convostore.errors import ConfigError, translate_errors

__all__ = ["RekeyCounts", "rekey"]

_t = turns.c
_first_key = bindparam("first_key", type_=String())
_to_do = (
    select(
        _t.session_id,
        _t.conversation_id,
        _t.seq,
        _t.content,
        _t.resolved_question,
        _t.results,
        _t.tool_arguments,
        _t.data,
    )
    .where(func.substr(_t.content, 1, bindparam("prefix_length", type_=Integer())) != _first_key)
    .order_by(_t.session_id, _t.conversation_id, _t.seq)
    .limit(bindparam("batch", type_=Integer()))
)
"""The next turns not sealed with the first key, in key order."""
_to_do_after = _to_do.where(
    tuple_(_t.session_id, _t.conversation_id, _t.seq)
    > tuple_(
        bindparam("after_sid", type_=_t.session_id.type),
        bindparam("after_cid", type_=_t.conversation_id.type),
        bindparam("after_seq", type_=_t.seq.type),
    )
)
"""The same, after the last turn of the batch before (each run reads the table once)."""
_resealed = (
    update(turns)
    .where(
        _t.session_id == bindparam("b_sid"),
        _t.conversation_id == bindparam("b_cid"),
        _t.seq == bindparam("b_seq"),
    )
    .values(
        content=bindparam("b_content"),
        resolved_question=bindparam("b_resolved"),
        results=bindparam("b_results", type_=_t.results.type),
        tool_arguments=bindparam("b_arguments", type_=_t.tool_arguments.type),
        data=bindparam("b_data", type_=_t.data.type),
    )
)


@dataclass(slots=True)
class RekeyCounts:
    """What ``rekey`` did."""

    key_id: str
    """The id of the key every turn is now encrypted with (``crypt.key_id``)."""
    rekeyed: int = 0
    """Turns encrypted again, from an older key or from plaintext."""
    from_plaintext: int = 0
    """Of those, the turns that had been stored in plaintext."""
    batches: int = 0
    """Transactions committed."""


async def rekey(
    url: str,
    encryption_keys: Sequence[str],
    *,
    batch_size: int | None = None,
    schema: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RekeyCounts:
    """Encrypt every turn of the database at ``url`` that the first of ``encryption_keys``
    did not encrypt (under an older key, or plaintext) with that key, ``batch_size`` turns
    (default ``StoreConfig.sweep_batch_size``) per transaction; returns the counts.
    ``progress(rekeyed)`` is called after each batch. Workers may keep running: turns are
    never changed once written, and they read every key in the list.

    Raises:
        ConfigError: no keys, a malformed key, a batch size out of range, a URL convostore
            cannot use.
        SchemaNotReady: the database lacks the newest migration.
        DecryptionFailed: a turn was encrypted with a key not in the list (the batches
            before stay done).
        StoreError: the database failed (the batches before stay done).
    """
    if not encryption_keys:
        raise ConfigError(
            "rekey needs the encryption keys (env CONVOSTORE_ENCRYPTION_KEYS), the new one first"
        )
    cipher = TurnCipher(encryption_keys)
    size = int(check_setting("sweep_batch_size", batch_size))
    first = sealed_with(encryption_keys[0])
    counts = RekeyCounts(cipher.first_id)
    params: dict[str, Any] = {"first_key": first, "prefix_length": len(first), "batch": size}
    async with open_database(url, schema=schema) as engine:
        statement = _to_do
        while True:
            with translate_errors("re-encrypting turns"):
                async with engine.begin() as conn:
                    rows = (await conn.execute(statement, params)).all()
                    if not rows:
                        return counts
                    await conn.execute(_resealed, [_sealed(cipher, row, counts) for row in rows])
            counts.batches += 1
            sid, cid, seq = rows[-1][:3]
            params.update(after_sid=sid, after_cid=cid, after_seq=seq)
            statement = _to_do_after
            if progress is not None:
                progress(counts.rekeyed)


def _sealed(cipher: TurnCipher, row: Any, counts: RekeyCounts) -> dict[str, Any]:
    """The parameters that store ``row``'s fields sealed with the first key."""
    sid, cid, seq, content, resolved, results, arguments, data = row
    counts.rekeyed += 1
    counts.from_plaintext += not content.startswith(SEALED_MARK)
    return {
        "b_sid": sid,
        "b_cid": cid,
        "b_seq": seq,
        "b_content": cipher.reseal(content),
        "b_resolved": None if resolved is None else cipher.reseal(resolved),
        "b_results": cipher.reseal(results)
        if isinstance(results, str)
        else cipher.seal_results(results),
        "b_arguments": _resealed_json(cipher, arguments),
        "b_data": _resealed_json(cipher, data),
    }


def _resealed_json(cipher: TurnCipher, value: Any) -> Any:
    """A message's ``tool_arguments`` or ``data`` sealed with the first key: a sealed one
    sealed again, a plain one (any JSON value) sealed as its JSON text; None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(SEALED_MARK):
        return cipher.reseal(value)
    return cipher.seal_results(value)
