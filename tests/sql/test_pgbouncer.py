"""fuseline behind a real PgBouncer in transaction mode (``pool_mode = transaction``).

A transaction pooler lends a server connection for one transaction, so
nothing may outlive a transaction on a server connection. fuseline says so
with ``?pooler=transaction`` on the URL: no server-side prepared statements,
no startup options, no LISTEN. Through PgBouncer (pool of 4 server
connections), ``fuseline db upgrade`` migrates, a few hundred diamonds are
dispatched, six ``fuseline worker run --no-listen`` processes (twelve client
connections) drain them, and ``db verify``, ``instances list`` and
``instances show`` read the result. Without the option, the failure is one
line that names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from fuseline.errors import DatabaseError
from tests.cli.flows import diamond
from tests.cli.helpers import Cli, assert_one_line_error
from tests.support.databases import PostgresServer
from tests.support.pgbouncer import ConnectionSampler, PgBouncer

POOL_SIZE = 4
WORKERS = 6  # two client connections each: three times PgBouncer's server connections
BATCHED, ONE_BY_ONE = 250, 50


def _expected(x: int) -> int:
    return (x + 1) * 2 + (x + 2)  # the diamond with inputs x and y=1


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> Iterator[URL]:
    """A new, empty database (fuseline's tables are created through PgBouncer)."""
    url = postgres_server.create_database("fuseline_pgbouncer")
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="module")
def pgbouncer(database: URL) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(database, pool_size=POOL_SIZE)
    yield bouncer
    bouncer.stop()


def test_workers_drain_hundreds_of_diamonds_through_pgbouncer_in_transaction_mode(
    database: URL, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    cli = Cli("postgres", tmp_path, pgbouncer.url())

    # Migrations run through the pooler too: one transaction, its lock a transaction lock.
    assert "to revision" in cli.ok("db", "upgrade").stdout
    assert "(up to date)" in cli.ok("db", "current").stdout

    broker = SqlBroker(pgbouncer.url())
    try:
        assert broker.db.listener is None, "LISTEN cannot work through a transaction pooler"
        schema = diamond.to_schema()
        inputs = {}
        for first in range(0, BATCHED, 50):
            batch = list(range(first, first + 50))
            ids = broker.dispatch_many(schema, [{"x": x, "y": 1} for x in batch])
            inputs.update(zip(ids, batch, strict=True))
        for x in range(BATCHED, BATCHED + ONE_BY_ONE):  # the same statement again and again
            inputs[diamond.dispatch(broker, {"x": x, "y": 1})] = x

        with ConnectionSampler(database, pgbouncer) as sampled:
            run = cli.ok(
                "worker", "run", "flows:diamond", "--burst", "--no-listen", "--poll-interval", "0.05",
                "--concurrency", str(WORKERS), timeout=120,
            )  # fmt: skip
        stopped = [line for line in run.stderr.splitlines() if "stopped after" in line]
        assert len(stopped) == WORKERS, run.stderr
        assert sum(int(line.split("stopped after ")[1].split()[0]) for line in stopped) == 4 * len(inputs)
        assert sampled.clients > POOL_SIZE, "the workers never had more connections than PgBouncer's pool"
        assert 0 < sampled.servers <= POOL_SIZE, "PostgreSQL saw more connections than PgBouncer's pool"

        for instance_id, x in inputs.items():
            info = broker.get_instance(instance_id)
            assert (info.status.value, info.result) == ("SUCCEEDED", _expected(x)), instance_id
    finally:
        broker.close()

    assert "every invariant holds" in cli.ok("db", "verify").stdout
    listed = cli.json("instances", "list", "--status", "SUCCEEDED", "--limit", "1000")
    assert {item["instance_id"] for item in listed} == set(inputs)
    instance_id, x = next(iter(inputs.items()))
    shown = cli.show(instance_id)
    assert (shown["status"], shown["result"], len(shown["steps"])) == ("SUCCEEDED", _expected(x), 4)
    assert instance_id in cli.ok("instances", "show", instance_id).stdout


def test_without_the_pooler_option_pgbouncer_refusing_startup_options_is_one_line_naming_it(
    pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    cli = Cli("postgres", tmp_path, pgbouncer.url(pooler=False))
    assert_one_line_error(
        cli.run("instances", "list"), 1, "unsupported startup parameter: options", "?pooler=transaction"
    )
    assert_one_line_error(cli.run("db", "current"), 1, "unsupported startup parameter", "?pooler=transaction")


def test_without_the_pooler_option_prepared_statements_break_a_worker_with_an_error_naming_it(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """PgBouncer set to drop the startup options (as many are): then only psycopg's prepared
    statements betray a client that does not say it is behind a pooler, on whichever server
    connection an earlier client left its own."""
    url = postgres_server.create_database("fuseline_pgbouncer")
    bouncer = PgBouncer(url, pool_size=1, ignore_options=True)
    try:
        engine = create_database_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        earlier = SqlBroker(bouncer.url(pooler=False))
        try:
            diamond_schema = diamond.to_schema()
            earlier.dispatch_many(diamond_schema, [{"x": x} for x in range(20)])
            for _ in range(6):  # psycopg prepares a statement at its fifth run on a connection
                earlier.list_instances()
        finally:
            earlier.close()
        cli = Cli("postgres", tmp_path, bouncer.url(pooler=False))
        run = cli.run("worker", "run", "flows:diamond", "--burst", "--no-listen", "--poll-interval", "0.05")
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        errors = [line for line in run.stderr.splitlines() if "ERROR" in line or line.startswith("error:")]
        assert len(errors) == 1, run.stderr
        assert "stopped: database error" in errors[0], run.stderr
        assert 'prepared statement "_pg3_' in errors[0] and "add ?pooler=transaction" in errors[0], run.stderr
    finally:
        bouncer.stop()
        postgres_server.drop_database(url)


def test_prepared_statements_stay_on_for_direct_connections_and_off_behind_a_pooler(
    postgres_url: URL,
) -> None:
    direct = create_database_engine(postgres_url)
    pooled = create_database_engine(postgres_url.update_query_dict({"pooler": "transaction"}))
    try:
        for engine, threshold in ((direct, 5), (pooled, None)):
            with engine.connect() as connection:
                assert connection.connection.driver_connection.prepare_threshold == threshold
        assert "pooler" not in pooled.url.query, "libpq does not know the option"
    finally:
        direct.dispose()
        pooled.dispose()


def test_an_unknown_pooler_mode_is_refused_before_connecting() -> None:
    with pytest.raises(DatabaseError, match=r"unknown pooler='session'.*pooler=transaction"):
        SqlBroker("postgresql+psycopg://app:secret@127.0.0.1:1/app?pooler=session")
    with pytest.raises(DatabaseError, match="for PostgreSQL URLs"):
        SqlBroker("sqlite:///fuseline.db?pooler=transaction")


def test_pgbouncer_keeps_answering_after_logging_more_than_a_pipe_holds(
    database: URL, pgbouncer: PgBouncer
) -> None:
    """PgBouncer logs every connection and disconnection to its stderr as well as its log file;
    a harness that left stderr in an unread pipe froze it once 64 KiB had been written (the
    200-worker benchmark hung at 50 workers). Far more than that is logged here, then a query
    through it must still answer at once."""
    url = pgbouncer.url(pooler=False).replace("postgresql+psycopg://", "postgresql://")
    logged_before = len(pgbouncer.log_text())
    for _ in range(600):
        psycopg.connect(url, autocommit=True, connect_timeout=5).close()
    logged = len(pgbouncer.log_text()) - logged_before
    assert logged > 64 * 1024, f"only {logged} bytes logged: the case is not exercised"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET statement_timeout = '5s'")
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
