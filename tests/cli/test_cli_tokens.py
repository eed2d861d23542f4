"""``fuseline tokens``: create (the token shown once), list (never the token), revoke; mistakes are
one line and exit 1 (or 2 for a usage error), nothing written.

The store itself (hashing, verifying, revoking across processes) is tests/service's; here the
commands are run as a user runs them, and what they stored is verified in this process.
"""

from __future__ import annotations

import json
import re

import pytest

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import tokens
from fuseline.service.tokens import Identity, Role, TokenStore
from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error
from tests.cli.test_cli_help import help_of, option_help

TOKEN = re.compile(r"flt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
SUBCOMMANDS = [("tokens",), ("tokens", "create"), ("tokens", "list"), ("tokens", "revoke")]


def verify(cli: Cli, token: str) -> Identity | None:
    """What a server on the CLI's database makes of ``token`` (a store of its own, never cached)."""
    url = cli.database_url()
    assert url is not None
    broker = SqlBroker(url)
    try:
        return TokenStore(broker).verify(token)
    finally:
        broker.close()


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_help_exits_0_with_an_example(sqlite_cli: Cli, command: tuple[str, ...]) -> None:
    proc = sqlite_cli.run(*command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert "Example: fuseline tokens" in proc.stdout
    assert not (sqlite_cli.cwd / "fuseline.db").exists(), "--help touched the database"


def test_the_role_option_shows_an_example() -> None:
    assert "e.g. --role " in option_help(help_of(("tokens", "create")), "--role")


@on_backend("postgres")  # the store's SQL on both backends: tests/service/test_tokens.py
def test_create_list_and_revoke(cli: Cli) -> None:
    created = cli.ok("tokens", "create", "ci-deploy", "--role", "operator")
    token = created.stdout.splitlines()[-1]
    assert TOKEN.fullmatch(token), created.stdout
    assert created.stdout == token + "\n"  # the token alone: FUSELINE_TOKEN=$(fuseline tokens create ...)
    (warning,) = created.stderr.splitlines()
    assert "shown this once" in warning and "ci-deploy" in warning and token not in warning
    as_json = cli.json("tokens", "create", "worker.eu-1", "--role", "worker")
    assert sorted(as_json) == ["name", "role", "token"]
    assert (as_json["name"], as_json["role"]) == ("worker.eu-1", "worker")
    assert verify(cli, token) == Identity("ci-deploy", Role.OPERATOR)
    assert verify(cli, as_json["token"]) == Identity("worker.eu-1", Role.WORKER)

    table = cli.ok("tokens", "list")
    listed = cli.json("tokens", "list")

    for shown in (table.stdout + table.stderr, json.dumps(listed)):
        assert token not in shown and as_json["token"] not in shown
        assert "flt_" not in shown
    assert "ci-deploy" in table.stdout and "operator" in table.stdout and "active" in table.stdout
    assert [(t["name"], t["role"], t["revoked_at"]) for t in listed] == [
        ("ci-deploy", "operator", None),
        ("worker.eu-1", "worker", None),
    ]
    assert all(sorted(t) == ["created_at", "name", "revoked_at", "role"] for t in listed)

    revoked = cli.ok("tokens", "revoke", "ci-deploy")
    assert "token ci-deploy revoked at" in revoked.stdout
    assert verify(cli, token) is None
    assert verify(cli, as_json["token"]) == Identity("worker.eu-1", Role.WORKER)
    (gone, kept) = cli.json("tokens", "list")
    assert gone["revoked_at"] is not None and kept["revoked_at"] is None
    assert "revoked" in cli.ok("tokens", "list").stdout
    cli.ok("tokens", "revoke", "ci-deploy")  # twice is fine

    taken = cli.run("tokens", "create", "ci-deploy", "--role", "viewer")
    assert_one_line_error(taken, 1, "'ci-deploy' is taken by a revoked token", "e.g. 'ci-deploy-2'")
    assert taken.stdout == ""


@on_backend("sqlite")
def test_mistakes_are_one_line_and_write_nothing(cli: Cli) -> None:
    bad_role = cli.run("tokens", "create", "ci", "--role", "admin")
    assert_one_line_error(bad_role, 1, "unknown role 'admin'", "worker, viewer, operator")
    assert not (cli.cwd / "fuseline.db").exists(), "a refused role opened the database"
    assert_one_line_error(cli.run("tokens", "create", "ci"), 2, "--role")

    bad_name = cli.run("tokens", "create", "no spaces", "--role", "worker")
    assert_one_line_error(bad_name, 1, "token name 'no spaces'", "letters, digits")
    unknown = cli.run("tokens", "revoke", "nope")
    assert_one_line_error(unknown, 1, "unknown token 'nope'", "fuseline tokens list")

    assert cli.rows(tokens) == []
    assert "no tokens" in cli.ok("tokens", "list").stdout
    assert cli.json("tokens", "list") == []
