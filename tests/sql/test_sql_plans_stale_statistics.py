"""Claims and reports read a few rows when the statistics were taken while the queue was empty.

That is a quiet deployment's usual state: autovacuum analyzes the steps table after a drain,
when no step is QUEUED or RUNNING, so to the planner the partial indexes of queued and of
running steps look empty, cheaper to read whole than one probe of a big unique index. Then a
burst arrives, and two statements priced such an index below the one that finds their row:

- a claim found the step it had picked again by ``id = ... AND state = 'QUEUED'``, which the
  queued index (the id its last column) can serve by reading it whole: every claim read every
  queued entry (3.6 ms a claim with 20,000 queued, 1.2 ms since);
- a report found its step by ``instance_id, name, ..., state = 'RUNNING', worker_id``, through
  the worker's running steps: every step its worker held, for each report. (A batch of
  reports still reads them, once for the batch: without that index it hashed a scan of the
  whole table on tables not analyzed yet, see test_sql_plans_unanalyzed.py.)

Under an old snapshot (RELIABILITY item 11) both also read every dead entry it keeps, so claims
slowed down for as long as it was held. Here the tables are analyzed after a drain, a burst is
dispatched, and each statement runs under EXPLAIN ANALYZE with custom and generic plans.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Status
from fuseline.broker.sql import SqlBroker, pg_statements
from tests.contract.support import report
from tests.sql.plans import (
    assert_reads_at_most,
    assert_touches_at_most,
    capture,
    dsn,
    explain_analyze,
    successes,
)
from tests.sql.workflows import one_step
from tests.support.databases import PostgresServer

#: Instances run before the ANALYZE (the history a drained deployment has).
HISTORY = 300
#: Instances dispatched after it: their queued entries fill some 50 index pages.
BURST = 5_000
#: Steps the worker holds while it reports (a worker with slots, or one that prefetched).
HELD = 50
#: The rows, and the pages per run, any scan of a table may read for one claim or report.
MOST_READ = 10
#: A claim's lookup of the step it picked counts the pick's pages too (13 here); reading the
#: queued index whole to find it touched 54.
MOST_PAGES = 20
#: Each further step of a batch is found by its own descent of the primary key (PostgreSQL 15
#: descends once per array element: two index pages) and its heap page: 24 pages for ten.
PAGES_PER_FURTHER_STEP = 3
CACHE_MODES = ["force_custom_plan", "force_generic_plan"]


single = one_step("stale-statistics")


@pytest.fixture
def stale_url(postgres_server: PostgresServer) -> Iterator[URL]:
    """A database analyzed after a drain (nothing queued or running then), with a burst queued
    since; autovacuum is off for the two tables, so the statistics stay as they were."""
    url = postgres_server.create_database()
    try:
        SqlBroker(url, migrate=True).close()
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for table in ("fuseline_instances", "fuseline_steps"):
                    conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            drain_history(url)
            with engine.connect() as conn:
                conn.exec_driver_sql("VACUUM ANALYZE fuseline_instances, fuseline_steps")
                empty = conn.exec_driver_sql(
                    "SELECT relname FROM pg_class WHERE reltuples = 0 AND relname IN"
                    " ('ix_fuseline_steps_queued', 'ix_fuseline_steps_running_worker')"
                ).scalars()
                assert sorted(empty) == ["ix_fuseline_steps_queued", "ix_fuseline_steps_running_worker"]
            broker = SqlBroker(url, listen=False)
            try:
                broker.dispatch_many(single.to_schema(), [{} for _ in range(BURST)])
            finally:
                broker.close()
        finally:
            engine.dispose()
        yield url
    finally:
        postgres_server.drop_database(url)


def drain_history(url: URL) -> None:
    """HISTORY instances dispatched and run to the end, so the tables hold finished rows."""
    broker = SqlBroker(url, listen=False)
    try:
        schema = single.to_schema()
        broker.dispatch_many(schema, [{} for _ in range(HISTORY)])
        worker = broker.register_worker([schema])
        while held := broker.get_steps(worker, 50):
            broker.report_steps(worker, successes(held, [1] * len(held)))
        broker.deregister_worker(worker)
    finally:
        broker.close()


def assert_plan_reads_its_rows_alone(plan: dict, steps: int) -> None:
    """No scan reads more rows, or touches more pages, than ``steps`` steps found one by one need."""
    assert_reads_at_most(plan, MOST_READ * steps)
    assert_touches_at_most(plan, MOST_PAGES + PAGES_PER_FURTHER_STEP * (steps - 1))


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
@pytest.mark.parametrize(
    ("limit", "statement"), [(1, "step_claim_one_workflow"), (10, "steps_claim_batch_one_workflow")]
)
def test_a_claim_finds_the_steps_it_picked_by_their_primary_key(
    stale_url: URL, monkeypatch: pytest.MonkeyPatch, cache_mode: str, limit: int, statement: str
) -> None:
    broker = SqlBroker(stale_url, listen=False)
    try:
        worker = broker.register_worker([single.to_schema()])
        sent, params = capture(
            monkeypatch, [getattr(pg_statements, statement)], lambda: broker.get_steps(worker, limit)
        )
    finally:
        broker.close()
    plan = explain_analyze(dsn(stale_url), sent, params, cache_mode=cache_mode)
    assert plan["Actual Rows"] == limit, "the claim checked claimed nothing"
    assert_plan_reads_its_rows_alone(plan, limit)


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_a_report_finds_its_step_by_instance_and_name_while_its_worker_holds_many(
    stale_url: URL, monkeypatch: pytest.MonkeyPatch, cache_mode: str
) -> None:
    broker = SqlBroker(stale_url, listen=False)
    try:
        worker = broker.register_worker([single.to_schema()])
        held = broker.get_steps(worker, HELD)
        assert len(held) == HELD
        sent, params = capture(
            monkeypatch,
            [pg_statements.step_succeed_and_finish],
            lambda: broker.report_step(worker, report(held[0], Status.SUCCEEDED, 1, version=held[0].version)),
        )
    finally:
        broker.close()
    plan = explain_analyze(dsn(stale_url), sent, params, cache_mode=cache_mode)
    assert plan["Actual Rows"] == 1, "the report checked was not accepted"
    assert_plan_reads_its_rows_alone(plan, 1)
