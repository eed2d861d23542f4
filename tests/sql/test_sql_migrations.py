"""Migrations: up, down and up again on both dialects; no drift; refusing a database that is not current."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import (
    HEAD_REVISION,
    REVISIONS,
    current_revision,
    downgrade,
    history,
    upgrade,
)
from fuseline.broker.sql.models import VERSION_TABLE, Base
from fuseline.errors import DatabaseError, SchemaOutOfDate
from tests.conftest import url_text
from tests.sql.processes import REPOSITORY, subprocess_env

FUSELINE_TABLES = set(Base.metadata.tables)
ALEMBIC = Path(sys.executable).parent / "alembic"


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any table: a new PostgreSQL database (dropped after) or a new SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield url_text(url)
    finally:
        server.drop_database(url)


def fuseline_tables(engine: sa.Engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith("fuseline_")}


def revision_of(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn)


def test_upgrade_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    engine = create_database_engine(empty_url)
    try:
        assert fuseline_tables(engine) == set()

        upgrade(engine)
        assert fuseline_tables(engine) == FUSELINE_TABLES | {VERSION_TABLE}
        assert revision_of(engine) == HEAD_REVISION

        downgrade(engine, "base")
        # alembic keeps its (now empty) version table; every table of fuseline's own is gone
        assert fuseline_tables(engine) == {VERSION_TABLE}
        assert revision_of(engine) is None

        upgrade(engine)
        assert fuseline_tables(engine) == FUSELINE_TABLES | {VERSION_TABLE}
        assert revision_of(engine) == HEAD_REVISION
        upgrade(engine)  # a re-run is a no-op
        assert revision_of(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def test_revisions_listed_in_the_code_are_the_migration_scripts() -> None:
    scripts = history()  # newest first
    assert tuple(reversed([r.revision for r in scripts])) == REVISIONS
    assert [r.revision for r in scripts if r.is_head] == [HEAD_REVISION]
    # one linear history: each revision revises the one before it
    assert [r.down_revision for r in reversed(scripts)] == [None, *REVISIONS[:-1]]


def test_alembic_check_finds_no_drift_between_models_and_migrations(db_url: str) -> None:
    env = {**os.environ, "FUSELINE_DATABASE_URL": db_url}
    done = subprocess.run(
        [str(ALEMBIC), "check"], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr


def test_broker_refuses_an_unmigrated_database_unless_asked_to_migrate(empty_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="fuseline db upgrade"):
        SqlBroker(empty_url)

    broker = SqlBroker(empty_url, migrate=True)
    try:
        assert revision_of(broker.engine) == HEAD_REVISION
        assert fuseline_tables(broker.engine) == FUSELINE_TABLES | {VERSION_TABLE}
    finally:
        broker.close()
    SqlBroker(empty_url).close()  # now current: accepted without migrating


def test_database_at_an_unknown_revision_is_refused_with_a_clear_message(empty_url: str) -> None:
    SqlBroker(empty_url, migrate=True).close()
    engine = create_database_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'zzzz'"))
    finally:
        engine.dispose()

    with pytest.raises(SchemaOutOfDate) as refused:
        SqlBroker(empty_url)
    message = str(refused.value)
    assert "zzzz" in message
    assert "does not know" in message
    assert "upgrade fuseline" in message

    with pytest.raises(DatabaseError, match="zzzz"):  # upgrading cannot fix it either
        SqlBroker(empty_url, migrate=True)


#: Each process imports everything, says it is ready, waits for the gate, then opens with migrate=True.
MIGRATING_PROCESS = """
import sys, time
from pathlib import Path
from fuseline.broker.sql import SqlBroker
url, gate = sys.argv[1], Path(sys.argv[2])
(gate / f"ready-{sys.argv[3]}").touch()
deadline = time.monotonic() + 60
while not (gate / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.005)
SqlBroker(url, migrate=True).close()
"""


def test_ten_concurrent_upgrades_of_a_new_database_all_succeed(postgres_server, tmp_path: Path) -> None:
    """Ten OS processes (each with its own alembic) upgrade one new database at the same moment."""
    url = url_text(postgres_server.create_database())
    gate = tmp_path / "gate"
    gate.mkdir()
    env = subprocess_env()
    processes: list[subprocess.Popen[str]] = []
    try:
        for i in range(10):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", MIGRATING_PROCESS, url, str(gate), str(i)],
                    cwd=REPOSITORY,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + 60
        while len(list(gate.glob("ready-*"))) < 10:
            assert all(p.poll() is None for p in processes), "a process exited before the gate opened"
            assert time.monotonic() < deadline, "the processes did not start in time"
            time.sleep(0.01)
        (gate / "go").touch()
        failures = []
        for process in processes:
            _, stderr = process.communicate(timeout=max(0.1, deadline + 60 - time.monotonic()))
            if process.returncode != 0:
                failures.append(stderr)
        assert failures == [], failures[0]

        engine = create_database_engine(url)
        try:
            with engine.connect() as conn:
                versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
            assert versions == [HEAD_REVISION]
            assert fuseline_tables(engine) == FUSELINE_TABLES | {VERSION_TABLE}
        finally:
            engine.dispose()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        postgres_server.drop_database(sa.make_url(url))
