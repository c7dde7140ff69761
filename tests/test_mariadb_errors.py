"""Which of asyncmy's errors convostore runs a call again for on MariaDB."""

from __future__ import annotations

import pytest
from asyncmy.errors import IntegrityError, OperationalError

from convostore.backends.mariadb import BACKEND


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError(1213, "Deadlock found when trying to get lock"), True),
        # an append's feed trigger beside a sweep's DELETE: the AUTO-INC lock was not had
        (OperationalError(1467, "Failed to read auto-increment value from storage engine"), True),
        (IntegrityError(1062, "Duplicate entry"), False),
        (OperationalError(1205, "Lock wait timeout exceeded"), False),
    ],
)
def test_deadlocks_and_a_lost_auto_inc_lock_are_run_again(
    error: BaseException, transient: bool
) -> None:
    assert BACKEND.is_transient(error) is transient
