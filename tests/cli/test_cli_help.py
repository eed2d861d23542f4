"""``--help`` of every command exits 0 and shows an example."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

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
    ("db", "check"),
    ("db", "prune"),
    ("worker",),
    ("worker", "run"),
    ("submit",),
    ("instances",),
    ("instances", "list"),
    ("instances", "show"),
    ("instances", "explain"),
    ("instances", "cancel"),
    ("instances", "retry"),
    ("instances", "signal"),
    ("steps",),
    ("steps", "skip"),
    ("steps", "set-output"),
    ("schedules",),
    ("schedules", "add"),
    ("schedules", "list"),
    ("schedules", "pause"),
    ("schedules", "resume"),
    ("schedules", "remove"),
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


#: Options added for issue 11: each one's own help shows how it is written.
OPTIONS = [
    (("submit",), "--delay"),
    (("submit",), "--at"),
    (("submit",), "--key"),
    (("submit",), "--priority"),
    (("db", "upgrade"), "--sql"),
    (("db", "prune"), "--older-than"),
    (("db", "prune"), "--dry-run"),
    (("worker", "run"), "--retention"),
    (("worker", "run"), "--queue"),
    (("worker", "run"), "--metrics-port"),
    (("worker", "run"), "--metrics-host"),
    (("instances", "signal"), "--data"),
    (("instances", "retry"), "--from"),
    (("instances", "list"), "--since"),
    (("instances", "list"), "--until"),
    (("instances", "list"), "--key"),
    (("instances", "list"), "--after"),
    (("steps", "set-output"), "--result"),
]


def option_help(help_text: str, option: str) -> str:
    """The help of one option in a command's --help, its wrapped lines joined."""
    entries: list[list[str]] = []
    for line in help_text.split("Options:", 1)[1].splitlines():
        if line.lstrip().startswith("-") and line.startswith("  -"):
            entries.append([])
        if entries:
            entries[-1].append(line)
    (entry,) = [e for e in entries if option in e[0].replace(",", " ").split()]
    return " ".join(" ".join(entry).split())


@functools.cache
def help_of(command: tuple[str, ...]) -> str:
    """``fuseline *command --help`` (exit 0), run once for all the options tests look up in it."""
    with tempfile.TemporaryDirectory() as folder:
        proc = Cli("sqlite", Path(folder)).run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(("command", "option"), OPTIONS, ids=[f"{' '.join(c)} {o}" for c, o in OPTIONS])
def test_each_new_option_shows_an_example(command: tuple[str, ...], option: str) -> None:
    assert f"e.g. {option} " in option_help(help_of(command), option)
