"""``PostgresDatabase.together``: statements pipelined in one round trip are one transaction.

The hot path (a success and the same worker's next claim) relies on it: the
claim must see the successors the report queued, and a failed claim must
undo the report. No BEGIN or COMMIT is sent; the pipeline's single Sync
closes the implicit transaction, so these tests pin that behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.database import PostgresDatabase
from fuseline.errors import DatabaseError


@contextmanager
def _driver_connection(database: PostgresDatabase) -> Iterator[psycopg.Connection]:
    """One of the broker's own connections, as the psycopg connection under it."""
    with database.budget.lend() as connection:
        yield connection.connection.driver_connection


@pytest.fixture
def database(broker_factory_postgres: Callable[..., SqlBroker]) -> Iterator[PostgresDatabase]:
    broker = broker_factory_postgres()
    assert isinstance(broker.db, PostgresDatabase)
    with _driver_connection(broker.db) as raw:
        raw.execute("CREATE TABLE together_probe (x integer PRIMARY KEY)")
    try:
        yield broker.db
    finally:
        with _driver_connection(broker.db) as raw:
            raw.execute("DROP TABLE together_probe")


def _count(database: PostgresDatabase) -> int:
    return database.rows("SELECT count(*) FROM together_probe", {})[0][0]


def test_statements_share_one_transaction_and_see_each_others_writes(database: PostgresDatabase) -> None:
    inserted, seen = database.together(
        [
            ("INSERT INTO together_probe VALUES (1) RETURNING txid_current()", {}),
            ("SELECT txid_current(), (SELECT count(*) FROM together_probe)", {}),
        ]
    )
    assert seen[0][0] == inserted[0][0]  # one transaction id for both statements
    assert seen[0][1] == 1  # the second statement saw the first one's row
    assert _count(database) == 1  # and the Sync committed it


def test_a_failing_statement_undoes_the_earlier_ones(database: PostgresDatabase) -> None:
    with pytest.raises(DatabaseError):
        database.together(
            [
                ("INSERT INTO together_probe VALUES (%(x)s)", {"x": 7}),
                ("INSERT INTO together_probe VALUES (%(x)s)", {"x": 7}),  # duplicate key
            ]
        )
    assert _count(database) == 0
    # The connection went back usable, outside any transaction.
    assert database.together([("SELECT 1", {})]) == [[(1,)]]


def test_nothing_stays_open_after_the_round_trip(database: PostgresDatabase) -> None:
    """A transaction-local setting is gone afterwards: the transaction ended at the Sync."""
    database.together([("SELECT set_config('synchronous_commit', 'off', true)", {})])
    setting = database.together([("SELECT current_setting('synchronous_commit')", {})])
    assert setting == [[("on",)]]
    with _driver_connection(database) as raw:
        status = raw.info.transaction_status
    assert status == psycopg.pq.TransactionStatus.IDLE


def test_a_statement_the_server_lost_runs_again_on_new_connections(
    broker_factory_postgres: Callable[..., SqlBroker],
) -> None:
    """psycopg believes a statement prepared that the server no longer holds (a worker met it
    right after a full disk): the operation runs once more on new connections instead of
    failing. ``DEALLOCATE ALL`` inside a DO block empties the server's side unseen."""
    broker = broker_factory_postgres(connections=1)
    database = broker.db
    assert isinstance(database, PostgresDatabase)
    statement = "SELECT 2 + %(x)s"
    for run in (lambda: database.rows(statement, {"x": 1}),
                lambda: database.together([(statement, {"x": 1})])[0]):  # fmt: skip
        for _ in range(6):  # psycopg prepares a statement at its fifth run on a connection
            database.rows(statement, {"x": 1})
        with _driver_connection(database) as raw:
            raw.execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                raw.execute(statement, {"x": 1})  # what every later run met
        assert run() == [(3,)]
