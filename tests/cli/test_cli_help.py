"""``--help`` of every command exits 0 and shows an example."""

from __future__ import annotations

import pytest

from tests.cli.helpers import Cli

COMMANDS = [
    (),
    ("db",),
    ("db", "upgrade"),
    ("db", "downgrade"),
    ("db", "current"),
    ("db", "history"),
    ("db", "verify"),
    ("worker",),
    ("worker", "run"),
    ("submit",),
    ("instances",),
    ("instances", "list"),
    ("instances", "show"),
    ("instances", "cancel"),
    ("instances", "retry"),
    ("workers",),
    ("workers", "list"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "fuseline" for c in COMMANDS])
def test_help_exits_0_with_an_example(sqlite_cli: Cli, command: tuple[str, ...]) -> None:
    proc = sqlite_cli.run(*command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Usage: fuseline" in proc.stdout
    assert "Example:" in proc.stdout
    assert not (sqlite_cli.cwd / "fuseline.db").exists(), "--help touched the database"
