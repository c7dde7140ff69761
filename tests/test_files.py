"""``files.replaced``, the one way the command line writes a file: the target changes only when
the new content is complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convostore._ops.files import replaced


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """An exception while writing: the old content stays, and nothing else is left behind."""
    target = tmp_path / "export.jsonl"
    target.write_text("old\n", encoding="utf-8")

    def export_that_fails() -> None:
        with replaced(target) as file:
            file.write("half of the new")
            raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        export_that_fails()
    assert target.read_text(encoding="utf-8") == "old\n"
    assert list(tmp_path.iterdir()) == [target]


def test_success_replaces_keeping_the_permissions(tmp_path: Path) -> None:
    """A finished file takes the old one's place and keeps its permissions; a new file gets the
    umask's; a private one is its owner's only, even when it replaces a readable one."""
    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o640)
    with replaced(target) as file:
        file.write("new ünïcode")
    assert target.read_bytes() == "new ünïcode".encode()
    assert target.stat().st_mode & 0o777 == 0o640

    umask = os.umask(0o022)
    try:
        with replaced(tmp_path / "fresh.html") as file:
            file.write("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "fresh.html").stat().st_mode & 0o777 == 0o644

    with replaced(target, private=True) as file:
        file.write("secret")
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fresh.html", "report.html"]


def test_a_link_is_followed_and_a_device_written_directly(tmp_path: Path) -> None:
    """A symbolic link keeps pointing at the file, which gets the new content; a path that is
    no regular file (here /dev/null) is written as it is, never renamed over."""
    real = tmp_path / "real.jsonl"
    real.write_text("old", encoding="utf-8")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    with replaced(link) as file:
        file.write("new")
    assert link.is_symlink()
    assert real.read_text(encoding="utf-8") == "new"

    with replaced("/dev/null") as file:
        file.write("nothing")
    assert Path("/dev/null").is_char_device()
