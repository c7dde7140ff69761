"""The ``convostore`` command line: ``--help`` and ``--version``, and that ``import
convostore`` loads neither click nor rich."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from click.testing import CliRunner

from convostore.cli import cli


@pytest.mark.parametrize("command", [[], *([name] for name in cli.commands)])
def test_help(command: list[str]) -> None:
    """--help on the group and on each command explains it with an example."""
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    if command and command != ["demo"]:
        assert "--url URL" in result.stdout
        assert "CONVOSTORE_DATABASE_URL" in result.stdout


def test_version() -> None:
    """--version prints the installed version."""
    result = CliRunner().invoke(cli, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"convostore {version('convostore')}\n")


def test_import_loads_neither_click_nor_rich() -> None:
    """`import convostore` stays free of the command line's dependencies, in a fresh
    interpreter."""
    code = (
        "import sys, convostore; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
