"""A batch claim reads the instances of the steps it claimed, not the whole instances table.

A claim returns each claimed step with its instance's inputs. The claimed rows were joined to
the instances table, and PostgreSQL chose the join from its estimate of how many steps a claim
updates. When the update found its picked steps by ``id`` alone (which keeps the queued index
out of it: test_sql_plans_stale_statistics.py), the estimate of a batch of ten became ten rows,
and against a table of a few thousand instances a hash join over a sequential scan of all of
them was priced below ten primary-key probes: every batch claim read every instance (2,000
chains of 3 drained with prefetch 10: 8 % slower). The inputs are now looked up per claimed
step, by the instance's primary key, whatever the estimates. Checked on analyzed tables with a
backlog of a few thousand instances, under custom and generic plans.

And a batch claim is not planned again at each run. Its size is a parameter of its LIMITs, which
PostgreSQL prices at a tenth of the queued steps in a generic plan: with a backlog of some
thousands the generic plan cost more than a plan for the size at hand plus what PostgreSQL
charges for planning, so the prepared claim was planned again every time (0.45 ms, more than
running it). It runs on its generic plan now, whatever the backlog.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker, pg_statements
from tests.sql.plans import assert_reads_at_most, capture, dsn, explain_analyze
from tests.sql.workflows import one_step
from tests.support.databases import PostgresServer

#: Instances queued: reading them all is unmistakable, and few enough that a scan of the whole
#: table was priced below ten probes of its primary key.
BACKLOG = 2_000
#: A backlog under which the batch claim's generic plan was priced above its custom plans.
BIG_BACKLOG = 20_000
#: Batch claims run on one connection: psycopg prepares a statement at its fifth run.
RUNS = 10
#: Steps a batch claim takes (a worker's --prefetch 10).
BATCH = 10
#: The rows any scan of a table may read per claimed step.
MOST_READ = 10
CACHE_MODES = ["force_custom_plan", "force_generic_plan"]


single = one_step("batch-claim-plan")


def database_with_backlog(postgres_server: PostgresServer, instances: int) -> URL:
    """A new database with ``instances`` instances queued and the tables analyzed with them in."""
    url = postgres_server.create_database()
    broker = SqlBroker(url, migrate=True, listen=False)
    try:
        broker.dispatch_many(single.to_schema(), [{} for _ in range(instances)])
    finally:
        broker.close()
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM ANALYZE fuseline_instances, fuseline_steps")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def backlog_url(postgres_server: PostgresServer) -> Iterator[URL]:
    url = database_with_backlog(postgres_server, BACKLOG)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def big_backlog_url(postgres_server: PostgresServer) -> Iterator[URL]:
    url = database_with_backlog(postgres_server, BIG_BACKLOG)
    yield url
    postgres_server.drop_database(url)


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_a_batch_claim_reads_only_the_instances_of_its_steps(
    backlog_url: URL, monkeypatch: pytest.MonkeyPatch, cache_mode: str
) -> None:
    broker = SqlBroker(backlog_url, listen=False)
    try:
        worker = broker.register_worker([single.to_schema()])
        sent, params = capture(
            monkeypatch,
            [pg_statements.steps_claim_batch_one_workflow],
            lambda: broker.get_steps(worker, BATCH),
        )
    finally:
        broker.close()
    plan = explain_analyze(dsn(backlog_url), sent, params, cache_mode=cache_mode)
    assert plan["Actual Rows"] == BATCH, "the claim checked did not claim a whole batch"
    assert_reads_at_most(plan, MOST_READ * BATCH)


def test_a_batch_claim_runs_on_its_generic_plan_under_a_big_backlog(big_backlog_url: URL) -> None:
    broker = SqlBroker(big_backlog_url, connections=1, listen=False)
    try:
        worker = broker.register_worker([single.to_schema()])
        for _ in range(RUNS):
            assert len(broker.get_steps(worker, BATCH)) == BATCH
        # the one connection the claims ran on: its prepared statements and how each was planned
        plans = broker.db.rows(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %(claim)s",
            {"claim": "WITH nondurable%ANY(ARRAY(%"},  # as prepared: its parameters are numbered
        )
    finally:
        broker.close()
    assert len(plans) == 1, "psycopg did not prepare the batch claim"
    ((generic, custom),) = plans
    assert custom == 0, f"the batch claim was planned again at {custom} of its prepared runs"
    assert generic > 0
