"""The soak's audit (``bench/soak.py``): it must catch each way stored turns can betray the
acknowledged exchanges, or a clean soak proves nothing."""

from __future__ import annotations

from bench.soak import Audit, audit

ACKNOWLEDGED = [("s", "q 1", "a 1"), ("s", "q 2", "a 2"), ("t", "q 3", "a 3")]


def _turns(*sessions: tuple[str, list[str]]) -> list[tuple[str, int, str, str]]:
    """Turns numbered 1..n per session, alternating user and assistant."""
    return [
        (sid, seq, "user" if seq % 2 else "assistant", content)
        for sid, contents in sessions
        for seq, content in enumerate(contents, 1)
    ]


def test_every_exchange_stored_once_is_clean() -> None:
    turns = _turns(("s", ["q 1", "a 1", "q 2", "a 2"]), ("t", ["q 3", "a 3"]))
    assert audit(turns, ACKNOWLEDGED) == Audit(
        stored=3, duplicates=0, lost=0, broken=0, unacknowledged=0
    )


def test_duplicates_losses_and_unacknowledged_exchanges_are_counted() -> None:
    turns = _turns(("s", ["q 1", "a 1", "q 1", "a 1", "q 9", "a 9"]))
    assert audit(turns, ACKNOWLEDGED) == Audit(
        stored=3, duplicates=1, lost=2, broken=0, unacknowledged=1
    )


def test_a_split_exchange_or_a_gap_in_seq_breaks_the_session() -> None:
    split = _turns(("s", ["q 1", "q 2", "a 1", "a 2"]))
    assert audit(split, ACKNOWLEDGED[:2]).broken == 1
    gap = [("t", 1, "user", "q 3"), ("t", 3, "assistant", "a 3")]
    assert audit(gap, ACKNOWLEDGED[2:]).broken == 1
