"""``fuseline db``: upgrade, current, history, downgrade; and what an unmigrated database says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuseline.broker.sql.migrate import HEAD_REVISION
from tests.cli.helpers import Cli, assert_one_line_error
from tests.conftest import url_text
from tests.support.databases import PostgresServer


@pytest.fixture
def fresh_cli(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cli]:
    """A Cli on a database without fuseline tables: a new PostgreSQL database, or an empty folder."""
    if backend == "sqlite":
        runner = Cli(backend, tmp_path)
        try:
            yield runner
        finally:
            runner.kill_all()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database("fuseline_cli")
    runner = Cli(backend, tmp_path, url_text(url), via="option")
    try:
        yield runner
    finally:
        runner.kill_all()
        server.drop_database(url)


def test_upgrade_current_history_downgrade_and_upgrade_again(fresh_cli: Cli) -> None:
    cli = fresh_cli

    before = cli.run("db", "current")
    assert before.returncode == 1, before
    assert "fuseline db upgrade" in before.stdout + before.stderr

    upgraded = cli.ok("db", "upgrade")
    assert HEAD_REVISION in upgraded.stdout
    if cli.backend == "sqlite":
        assert (cli.cwd / "fuseline.db").is_file()

    current = cli.ok("db", "current")
    assert HEAD_REVISION in current.stdout
    assert "up to date" in current.stdout

    again = cli.ok("db", "upgrade")
    assert "already at revision" in again.stdout

    history = json.loads(cli.ok("db", "history", "--json").stdout)
    assert isinstance(history, list) and history
    assert history[0]["revision"] == HEAD_REVISION
    assert {"revision", "down_revision", "description"} <= set(history[0])
    assert history[-1]["down_revision"] is None

    cli.ok("db", "downgrade", "base")
    gone = cli.run("db", "current")
    assert gone.returncode == 1, gone
    assert "Traceback" not in gone.stderr

    assert "to revision " + HEAD_REVISION in cli.ok("db", "upgrade").stdout


def test_postgres_without_tables_asks_for_db_upgrade(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.create_database("fuseline_cli")
    try:
        cli = Cli("postgres", tmp_path, url_text(url))
        for args in [
            ("instances", "list"),
            ("workers", "list"),
            ("submit", "flows:diamond", "--input", "x=1"),
            ("worker", "run", "flows:diamond", "--burst"),
        ]:
            proc = cli.run(*args)
            assert_one_line_error(proc, 1, "fuseline db upgrade")
            assert proc.stdout == "", args
        # Nothing was created behind the owner's back.
        assert cli.run("db", "current").returncode == 1
    finally:
        postgres_server.drop_database(url)


def test_sqlite_default_is_created_and_upgraded_on_first_use(sqlite_cli: Cli) -> None:
    assert not (sqlite_cli.cwd / "fuseline.db").exists()

    assert sqlite_cli.json("instances", "list") == []

    assert (sqlite_cli.cwd / "fuseline.db").is_file()
    assert HEAD_REVISION in sqlite_cli.ok("db", "current").stdout


def test_any_sqlite_url_upgrades_itself(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "jobs.db"
    target.parent.mkdir()
    cli = Cli("sqlite", tmp_path, f"sqlite:///{target}", via="option")

    instance_id = cli.submit("flows:diamond", "--input", "x=2")

    assert target.is_file()
    assert not (tmp_path / "fuseline.db").exists()
    assert cli.show(instance_id)["status"] == "RUNNING"
