"""Files the command line writes (exports, reports): written beside the target under a
temporary name and renamed over it only once complete, so a command that fails (a mistyped
URL, a database that goes away mid-export, a full disk) leaves the previous file as it was.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

__all__ = ["replaced"]


def _mode_for(target: Path, private: bool) -> int:
    """The permissions the finished file gets: owner-only for private data; else those of the
    file it replaces, or what a new file gets under the process's umask."""
    if private:
        return 0o600
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def replaced(
    path: str | Path, *, private: bool = False, newline: str | None = None
) -> Iterator[TextIO]:
    """A UTF-8 text file to write that takes ``path``'s place when the block ends without an
    exception; on an exception it is deleted and ``path`` is untouched.

    A symbolic link is followed (the file it points at is replaced). A path that exists and is
    no regular file (``/dev/stdout``, a named pipe) cannot be replaced by a rename and is
    written directly. ``private``: readable by its owner only.

    Raises:
        OSError: the temporary file cannot be created or renamed (a missing folder, no
            permission).
    """
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        with open(target, "w", encoding="utf-8", newline=newline) as direct:
            yield direct
        return
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial", dir=target.parent
    )
    try:
        with open(descriptor, "w", encoding="utf-8", newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _mode_for(target, private))
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
