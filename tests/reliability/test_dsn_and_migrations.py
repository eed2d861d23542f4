"""Item 16, DSN and migrations: bad URLs fail fast and quietly; schema versions are checked and atomic.

tests/cli/test_cli_errors.py covers a refused connection (closed port) for
every command; tests/sql/test_sql_migrations.py covers upgrade/downgrade,
concurrent upgrades and an unknown revision through the API. Here: every
kind of bad URL through ``fuseline instances list`` (exit 1, within the
connect timeout, no password), a database behind or ahead refused by the
commands with "run `fuseline db upgrade`", and a failed migration that
leaves the version where it was.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fuseline.broker.sql import migrate
from fuseline.broker.sql.engine import CONNECT_TIMEOUT_SECONDS, create_database_engine
from fuseline.broker.sql.migrate import HEAD_REVISION, UPGRADE_HINT
from tests.conftest import url_text
from tests.reliability.support import (
    FLOWS,
    SECRET,
    SECRET_IN_URL,
    PgCluster,
    execute,
    fuseline,
    in_parallel,
    ok,
    password_checking_server,
    table_names,
)
from tests.support.databases import PostgresServer

#: Slack on top of the connect timeout, besides the CLI's own start-up (imports), which is
#: measured: the slowest of the cases that fail without waiting for anything.
SLACK_SECONDS = 2.0
WRONG = "Wr0ng-p%40ss"  # a wrong password, as written in the URL ...
WRONG_DECODED = "Wr0ng-p@ss"  # ... and as sent


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _error_line(proc) -> str:
    assert proc.returncode == 1, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_invalid_dsns_exit_1_within_the_connect_timeout_and_never_show_the_password(
    postgres_server: PostgresServer, silent_server: int, tmp_path: Path
) -> None:
    local = postgres_server.admin_url

    def attempt(url: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        began = time.monotonic()
        proc = fuseline("instances", "list", url=url, cwd=tmp_path, timeout=60)
        return time.monotonic() - began, proc

    with ThreadPoolExecutor(max_workers=6) as pool:
        # a host that never answers: only the connect timeout ends the wait (started first: it is
        # the longest, and waits while the rest runs)
        silent = f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:{silent_server}/db"
        futures = {"silent-host": (pool.submit(attempt, silent), "timeout")}
        with password_checking_server("0wner-Pw") as scram:
            execute(scram, f"CREATE ROLE fuseline_app LOGIN PASSWORD '{SECRET}'", autocommit=True)
            cases = {
                # scheme, driver and syntax: refused before any connection
                "unknown-scheme": (f"mysql://u:{SECRET_IN_URL}@127.0.0.1/db", "unsupported database 'mysql'"),
                "other-driver": (f"postgresql+asyncpg://u:{SECRET_IN_URL}@127.0.0.1/db", "psycopg 3 driver"),
                "not-a-url": (f"u:{SECRET_IN_URL}@127.0.0.1/db", "invalid database URL"),
                "bad-port": (
                    f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:x/db",
                    "invalid database URL",
                ),
                # a host that does not exist, or refuses connections
                "unknown-host": (
                    f"postgresql+psycopg://u:{SECRET_IN_URL}@no-such-host.invalid/db",
                    "resolve",
                ),
                "closed-port": (f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:1/db", "127.0.0.1"),
                # the server answers and refuses: a wrong password, a role or database it does not know
                "wrong-password": (
                    url_text(scram.set(username="fuseline_app", password=WRONG_DECODED)),
                    "password authentication failed",
                ),
                "wrong-superuser-password": (
                    url_text(scram.set(password=WRONG_DECODED)),
                    "password authentication failed",
                ),
                "unknown-role": (
                    url_text(local.set(username="no_such_role_x", password=SECRET)),
                    'role "no_such_role_x" does not exist',
                ),
                "unknown-database": (
                    url_text(local.set(database="no_such_database_x", password=SECRET)),
                    'database "no_such_database_x" does not exist',
                ),
            }
            for name, (url, expected) in cases.items():
                futures[name] = (pool.submit(attempt, url), expected)
            results = {name: (future.result(), expected) for name, (future, expected) in futures.items()}

    for name, ((_seconds, proc), expected) in results.items():
        line = _error_line(proc)
        assert expected in line, (name, line)
        for secret in (SECRET, SECRET_IN_URL, WRONG, WRONG_DECODED):
            assert secret not in proc.stdout + proc.stderr, (name, line)
    # The silent host is given up after the connect timeout (without one it would hang until
    # the 60 s subprocess timeout): not sooner, and not much later than the slowest start-up
    # of a command that waits for nothing (a busy machine makes that several seconds).
    seconds = {name: result[0][0] for name, result in results.items()}
    startup = max(s for name, s in seconds.items() if name != "silent-host")
    assert seconds["silent-host"] >= CONNECT_TIMEOUT_SECONDS - 1, "the silent host should wait the timeout"
    assert seconds["silent-host"] < CONNECT_TIMEOUT_SECONDS + startup + SLACK_SECONDS, seconds


# -- schema versions --------------------------------------------------------------------------------


@pytest.fixture
def pg_database(cluster: PgCluster) -> str:
    """A new, empty PostgreSQL database (dropped after the test)."""
    return url_text(cluster.create_database())


def _migrate(url: str, direction: str, revision: str) -> None:
    engine = create_database_engine(url)
    try:
        getattr(migrate, direction)(engine, revision)
    finally:
        engine.dispose()


def _version_rows(url: str) -> list[tuple[str, ...]]:
    if "fuseline_alembic_version" not in table_names(url):
        return []
    return execute(url, "SELECT version_num FROM fuseline_alembic_version")[0]


def test_a_postgresql_database_behind_or_ahead_is_refused_with_the_upgrade_hint(
    pg_database: str, tmp_path: Path
) -> None:
    _migrate(pg_database, "upgrade", "head")
    _migrate(pg_database, "downgrade", "base")  # behind: no tables at all
    commands = [("instances", "list"), ("worker", "run", f"{FLOWS}:diamond", "--burst")]
    behind = in_parallel([lambda c=c: fuseline(*c, url=pg_database, cwd=tmp_path) for c in commands])
    for command, proc in zip(commands, behind, strict=True):
        line = _error_line(proc)
        assert UPGRADE_HINT in line and "no fuseline tables" in line, (command, line)
    assert _version_rows(pg_database) == [], "a command upgraded PostgreSQL by itself"

    ok(fuseline("db", "upgrade", url=pg_database, cwd=tmp_path))
    execute(
        pg_database, "UPDATE fuseline_alembic_version SET version_num = 'ffff'"
    )  # ahead: a newer fuseline
    ahead = in_parallel([lambda c=c: fuseline(*c, url=pg_database, cwd=tmp_path) for c in commands])
    for command, proc in zip(commands, ahead, strict=True):
        line = _error_line(proc)
        assert UPGRADE_HINT in line and "ffff" in line and "does not know" in line, (command, line)
    assert _version_rows(pg_database) == [("ffff",)]


def test_an_embedded_sqlite_database_upgrades_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    _migrate(url, "upgrade", "head")
    _migrate(url, "downgrade", "base")
    assert _version_rows(url) == []

    ok(fuseline("instances", "list", url=url, cwd=tmp_path))

    assert _version_rows(url) == [(HEAD_REVISION,)]


#: An object in the way of the first migration: a view where it creates the events table.
BLOCKER = "CREATE VIEW fuseline_events AS SELECT 1 AS id"


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_a_failed_migration_does_not_bump_the_version_and_a_rerun_is_a_no_op(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("pg_database") if dialect == "postgres" else f"sqlite:///{tmp_path}/f.db"
    _migrate(url, "upgrade", "head")
    _migrate(url, "downgrade", "base")  # the version table stays, empty
    execute(url, BLOCKER)
    before_tables, before_versions = table_names(url), _version_rows(url)
    assert "fuseline_alembic_version" in before_tables and before_versions == []

    failed = fuseline("db", "upgrade", url=url, cwd=tmp_path)

    line = _error_line(failed)
    assert "upgrade failed" in line and "fuseline_events" in line, line
    assert _version_rows(url) == before_versions, "a failed migration bumped the version"
    assert table_names(url) == before_tables, "a failed migration left some of its tables behind"

    execute(url, "DROP VIEW fuseline_events")
    _migrate(url, "upgrade", "head")
    tables = table_names(url)
    again = ok(fuseline("db", "upgrade", url=url, cwd=tmp_path))

    assert f"already at revision {HEAD_REVISION}" in again.stdout
    assert _version_rows(url) == [(HEAD_REVISION,)]
    assert table_names(url) == tables
