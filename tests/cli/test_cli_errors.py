"""Every user mistake: the right exit code, one clear line on stderr, never a traceback.

Exit code 2 for usage mistakes (caught before any database is touched),
1 for failures of the thing asked. Passwords never appear in any output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, error_lines
from tests.conftest import url_text

UNKNOWN_ID = "0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21"

USAGE_MISTAKES = [
    (("submit", "flows"), "is not MODULE:WORKFLOW"),
    (("submit", ":diamond"), "is not MODULE:WORKFLOW"),
    (("submit", "no_such_module:diamond"), "cannot import module 'no_such_module'"),
    (("submit", "flows.nested:diamond"), "cannot import module 'flows.nested'"),
    (("submit", "broken:flow"), "importing 'broken' failed: RuntimeError: broken on purpose"),
    (("submit", "needs_missing:flow"), "importing 'needs_missing' failed"),
    (("submit", "flows:missing"), "module 'flows' has no attribute 'missing'"),
    (("worker", "run", "flows:diamond", "flows:missing"), "has no attribute 'missing'"),
    (("submit", "flows:not_a_workflow"), "is a dict, not a fuseline Workflow"),
    (("worker", "run", "flows:not_a_workflow"), "not a fuseline Workflow"),
    (("submit", "flows:diamond", "--input", "x"), "'x' is not NAME=VALUE"),
    (("submit", "flows:diamond", "--inputs-json", "[1, 2]"), "must be a JSON object, got list"),
    (("submit", "flows:diamond", "--inputs-json", "{x: 1"), "not valid JSON"),
    (("instances", "list", "--status", "DONE"), "'DONE' is not one of RUNNING"),
    (("worker", "run", "flows:diamond", "--log-level", "LOUD"), "'LOUD' is not one of DEBUG"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_MISTAKES, ids=[" ".join(a) for a, _ in USAGE_MISTAKES])
def test_usage_mistakes_exit_2_with_one_line(sqlite_cli: Cli, args: tuple[str, ...], message: str) -> None:
    (sqlite_cli.cwd / "broken.py").write_text('raise RuntimeError("broken on purpose")\n')
    (sqlite_cli.cwd / "needs_missing.py").write_text("import fuseline_no_such_dependency  # noqa\n")

    proc = sqlite_cli.run(*args)

    assert_one_line_error(proc, 2, message)
    assert proc.stdout == ""
    assert not (sqlite_cli.cwd / "fuseline.db").exists(), "a usage mistake touched the database"


@pytest.mark.parametrize(
    "args",
    [
        ("instances", "show", UNKNOWN_ID, "--json"),
        ("instances", "cancel", UNKNOWN_ID),
        ("instances", "retry", "not-a-uuid"),
    ],
    ids=["show", "cancel", "retry-not-uuid"],
)
@on_backend("postgres")  # ids are checked before any query (UnknownInstance), on any database
def test_unknown_instance_exits_1(cli: Cli, args: tuple[str, ...]) -> None:
    proc = cli.run(*args)

    assert_one_line_error(proc, 1, "unknown instance", args[2])
    assert proc.stdout == ""


SECRET = "S3cr3t-p@ss"
SECRET_IN_URL = "S3cr3t-p%40ss"
UNREACHABLE = f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:1/db"


@pytest.mark.parametrize(
    "args",
    [
        ("instances", "list"),
        ("instances", "show", UNKNOWN_ID, "--json"),
        ("workers", "list"),
        ("db", "upgrade"),
        ("db", "current"),
        ("submit", "flows:diamond", "--input", "x=1", "--wait"),
        ("worker", "run", "flows:diamond", "--burst"),
    ],
    ids=lambda args: "-".join(a for a in args if not a.startswith("0b6c")),
)
def test_unreachable_database_exits_1_and_masks_the_password(sqlite_cli: Cli, args: tuple[str, ...]) -> None:
    via_option = Cli("postgres", sqlite_cli.cwd, UNREACHABLE, via="option")

    proc = via_option.run(*args, timeout=30)

    line = assert_one_line_error(proc, 1, "127.0.0.1")
    assert "u:***@127.0.0.1:1/db" in line
    for output in (proc.stdout, proc.stderr):
        assert SECRET_IN_URL not in output and SECRET not in output


def test_password_from_the_environment_is_masked_too(sqlite_cli: Cli) -> None:
    via_env = Cli("postgres", sqlite_cli.cwd, UNREACHABLE, via="env")

    proc = via_env.run("instances", "list")

    assert_one_line_error(proc, 1, "u:***@")
    assert SECRET_IN_URL not in proc.stderr and SECRET not in proc.stderr


def test_password_is_masked_when_everything_works(postgres_url: URL, tmp_path: Path) -> None:
    # The local server trusts its clients, so any password is accepted and must still be hidden.
    with_password = url_text(postgres_url.set(password=SECRET))
    assert SECRET_IN_URL in with_password
    cli = Cli("postgres", tmp_path, with_password, via="option")

    outputs = [
        cli.ok("db", "upgrade"),
        cli.ok("db", "current"),
        cli.ok("submit", "flows:diamond", "--input", "x=1"),
        cli.burst("flows:diamond"),
        cli.ok("instances", "list"),
        cli.ok("workers", "list", "--all"),
    ]

    assert "***@" in outputs[0].stdout
    assert "***@" in outputs[3].stderr, "the worker's start line should name the masked URL"
    for proc in outputs:
        for output in (proc.stdout, proc.stderr):
            assert SECRET_IN_URL not in output and SECRET not in output


def test_a_long_error_stays_on_one_line(sqlite_cli: Cli) -> None:
    deep = sqlite_cli.cwd / ("d" * 120) / ("e" * 120) / "jobs.db"
    cli = Cli("sqlite", sqlite_cli.cwd, f"sqlite:///{deep}", via="option")

    proc = cli.run("instances", "list")

    line = assert_one_line_error(proc, 1, str(deep))
    assert len(line) > 250


def test_errors_show_markup_characters_verbatim(sqlite_cli: Cli) -> None:
    proc = sqlite_cli.run("instances", "show", "[/bold]x")

    assert_one_line_error(proc, 1, "unknown instance '[/bold]x'")


def test_usage_errors_name_the_command(sqlite_cli: Cli) -> None:
    proc = sqlite_cli.run("submit", "nope")

    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "Error: Invalid value: 'nope' is not MODULE:WORKFLOW (for example: my_app.flows:etl)"
    ]
    assert "fuseline submit --help" in proc.stderr
