"""``fuseline db check``, ``db upgrade --sql``, ``db prune`` and ``worker run --retention``.

Instances are made old by moving their ``finished_at`` back with SQL. The migration
commands run on both backends (their migrations differ); pruning reaches the database
only through the broker, whose retention tests/sql/test_sql_retention.py checks on
both, so its commands run on one backend each, split between PostgreSQL and SQLite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import HEAD_REVISION, REVISIONS
from fuseline.broker.sql.models import instances, schedules
from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, wait_for
from tests.cli.test_cli_db import fresh_cli  # noqa: F401 - a fixture: a database without tables


@contextmanager
def engine_of(cli: Cli) -> Iterator[sa.Engine]:
    engine = create_database_engine(cli.url or f"sqlite:///{cli.cwd / 'fuseline.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


def backdate(cli: Cli, ids: Sequence[str], days: float = 10) -> None:
    with engine_of(cli) as engine, engine.begin() as conn:
        at = datetime.now(timezone.utc) - timedelta(days=days)
        if engine.dialect.name == "sqlite":
            at = at.replace(tzinfo=None)  # stored as UTC text
        conn.execute(sa.update(instances).where(instances.c.id.in_(list(ids))).values(finished_at=at))


def tables(cli: Cli) -> set[str]:
    with engine_of(cli) as engine:
        return {t for t in sa.inspect(engine).get_table_names() if t.startswith("fuseline_")}


def listed(cli: Cli) -> set[str]:
    return {i["instance_id"] for i in cli.json("instances", "list")}


def test_db_check_exits_0_at_head_and_1_naming_the_missing_revisions(fresh_cli: Cli) -> None:  # noqa: F811
    cli = fresh_cli
    empty = cli.run("db", "check")
    assert empty.returncode == 1, empty
    assert "without fuseline tables, behind: missing " + ", ".join(REVISIONS) in empty.stdout

    cli.ok("db", "upgrade", "0005")
    behind = cli.run("db", "check")
    assert behind.returncode == 1, behind
    (line,) = behind.stdout.splitlines()
    assert "at revision 0005, behind: missing " + ", ".join(REVISIONS[5:]) in line
    assert "fuseline db upgrade" in line

    cli.ok("db", "upgrade")
    at_head = cli.ok("db", "check")
    assert at_head.stdout.strip().endswith(f"is at revision {HEAD_REVISION} (head)")


def test_upgrade_sql_prints_the_migrations_and_leaves_the_database_as_it_was(fresh_cli: Cli) -> None:  # noqa: F811
    cli = fresh_cli
    cli.ok("db", "upgrade", "0005")
    before = tables(cli)
    # On SQLite, 0011 rebuilds two tables (dropping a constraint), which offline SQL cannot do.
    target = HEAD_REVISION if cli.backend == "postgres" else "0010"

    printed = cli.ok("db", "upgrade", target, "--sql")

    assert "CREATE TABLE fuseline_signals" in printed.stdout
    assert "CREATE INDEX ix_fuseline_instances_finished_at" in printed.stdout
    assert f"version_num='{target}'" in printed.stdout
    assert "CREATE TABLE fuseline_instances" not in printed.stdout  # from the database's revision on
    assert tables(cli) == before
    assert "at revision 0005" in cli.run("db", "check").stdout
    if cli.backend == "sqlite":
        assert_one_line_error(cli.run("db", "upgrade", "--sql"), 1, "SQLite", "fuseline db upgrade")
        assert tables(cli) == before

    cli.ok("db", "upgrade")
    done = cli.ok("db", "upgrade", "--sql")
    assert done.stdout == ""
    assert "already at revision" in done.stderr


def test_upgrade_sql_of_a_range_reads_no_database(fresh_cli: Cli) -> None:  # noqa: F811
    cli = fresh_cli
    printed = cli.ok("db", "upgrade", "0005:0006", "--sql")
    assert "CREATE TABLE fuseline_schedules" in printed.stdout
    assert "fuseline_signals" not in printed.stdout
    if cli.backend == "sqlite":
        assert not (cli.cwd / "fuseline.db").exists()
        # From an empty database, SQLite's migrations rebuild tables: that needs the database.
        assert_one_line_error(cli.run("db", "upgrade", "--sql"), 1, "SQLite", "fuseline db upgrade")
        assert not (cli.cwd / "fuseline.db").exists()
    else:
        assert "CREATE TABLE fuseline_instances" in cli.ok("db", "upgrade", "--sql").stdout
        assert tables(cli) == set()


@on_backend("postgres")
def test_prune_dry_run_changes_nothing_and_prune_deletes_what_it_counted(cli: Cli) -> None:
    ids = [cli.submit("flows:diamond", "--input", f"x={n}") for n in range(3)]
    cli.burst("flows:diamond")
    backdate(cli, ids[:2])

    planned = cli.json("db", "prune", "--dry-run")
    assert planned == {
        "dry_run": True,
        "older_than_seconds": 7 * 86400,
        "instances": 2,
        "steps": 8,
        "events": planned["events"],
        "signals": 0,
        "workers": 0,
    }
    assert planned["events"] == 2 * 3  # b, c and d queued (claims and successes are on the rows)
    assert listed(cli) == set(ids)

    deleted = cli.ok("db", "prune", "--older-than", "8d")
    lines = deleted.stdout.splitlines()
    assert "deleted in" in lines[0] and "finished more than 8d ago" in lines[0]
    counts = dict(line.split() for line in lines[1:])
    assert counts == {
        "instances": "2",
        "steps": "8",
        "events": str(planned["events"]),
        "signals": "0",
        "workers": "0",
    }
    assert listed(cli) == {ids[2]}
    cli.ok("db", "verify")
    assert cli.json("db", "prune")["instances"] == 0


@on_backend("sqlite")
def test_a_running_worker_prunes_what_finished_longer_ago_than_its_retention(cli: Cli) -> None:
    old = [cli.submit("flows:diamond", "--input", f"x={n}") for n in range(2)]
    cli.burst("flows:diamond")
    backdate(cli, old, days=1)
    recent = cli.submit("flows:diamond", "--input", "x=9")

    worker = cli.start_worker("flows:diamond", "--retention", "30s")  # a pass every 3 s at most
    wait_for(lambda: {row.id for row in cli.rows(instances)} == {recent}, 30, "the old instances pruned")
    assert listed(cli) == {recent}
    worker.wait_for_log("retention: deleted 2 instances")
    assert cli.show(recent)["status"] == "SUCCEEDED"
    worker.signal()
    assert worker.wait(30) == 0
    cli.ok("db", "verify")


def test_bad_durations_are_one_line_usage_errors(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    assert_one_line_error(cli.run("db", "prune", "--older-than", "7"), 2, "--older-than", "'7'", "e.g. 7d")
    refused = cli.run("worker", "run", "flows:diamond", "--retention", "3x")
    assert_one_line_error(refused, 2, "--retention", "'3x'")
    from_env = Cli("sqlite", cli.cwd, extra_env={"FUSELINE_RETENTION": "soon"})
    assert_one_line_error(from_env.run("db", "prune"), 2, "FUSELINE_RETENTION", "'soon'")
    assert not (cli.cwd / "fuseline.db").exists()
    assert cli.json("db", "prune", "--older-than", "0")["instances"] == 0


@on_backend("postgres")
def test_schedules_list_shows_a_last_instance_that_was_pruned(cli: Cli) -> None:
    cli.ok("schedules", "add", "flows:diamond", "--every", "1h", "--name", "hourly", "--input", "x=1")
    gone = str(uuid.uuid4())
    with engine_of(cli) as engine, engine.begin() as conn:
        conn.execute(sa.update(schedules).values(last_instance_id=gone))

    assert gone in cli.ok("schedules", "list").stdout
    (hourly,) = json.loads(cli.ok("schedules", "list", "--json").stdout)
    assert hourly["last_instance_id"] == gone
