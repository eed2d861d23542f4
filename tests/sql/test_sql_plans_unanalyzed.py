"""Reports find their instance by its id, even before PostgreSQL has statistics on the tables.

Until autovacuum first analyzes a table (up to a minute after rows arrive), the planner guesses
its rows from its pages and the declared widths of its columns: some 250 for 5,000 instances.
An instance looked up by its id and by another indexed column (its workflow, its status) then
cost the same through either index, and PostgreSQL took the other one: each report of a
one-step workflow read every instance of its workflow and every RUNNING one, and 5,000 fresh
instances drained at a third of the speed they did after an ANALYZE. The report statements
look the instance up by its id alone now (the workflow is checked on the step row, the status
on the instance row they locked). Here each runs on a new database that was never analyzed,
holding a few thousand instances, under custom and generic plans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.sql.expression import Executable

from fuseline import Computed, Depends, Step, Workflow
from fuseline.broker.base import StepReport
from fuseline.broker.sql import SqlBroker, pg_statements
from fuseline.broker.sql.queries.reports import for_dialect
from fuseline.states import Status
from tests.sql.plans import assert_reads_at_most, capture, dsn, explain_analyze, nodes, successes
from tests.sql.workflows import one_step
from tests.support.databases import PostgresServer

#: Enough instances that reading them all is unmistakable, few enough that the planner's guess
#: for a table never analyzed puts either index at one row (up to some 6,000 instances).
INSTANCES = 3_000
#: The rows any scan of a table may read for one report (the instance, the step, a successor).
MOST_READ = 10
BATCH = 20
CACHE_MODES = ["force_custom_plan", "force_generic_plan"]


class First(Step):
    def run_step(self) -> int:
        return 1


first = First()


class Second(Step):
    def run_step(self, value: Computed[int] = Depends(first)) -> int:
        return value + 1


single = one_step("unanalyzed-single")
chain = Workflow([Second()], workflow_id="unanalyzed-chain", version="1")


@pytest.fixture
def unanalyzed_url(postgres_server: PostgresServer) -> Iterator[URL]:
    """A new database, migrated, whose instances and steps autovacuum leaves unanalyzed."""
    url = postgres_server.create_database()
    try:
        SqlBroker(url, migrate=True).close()
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                for table in ("fuseline_instances", "fuseline_steps"):
                    conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        finally:
            engine.dispose()
        yield url
    finally:
        postgres_server.drop_database(url)


def held_steps(broker: SqlBroker, workflow: Workflow, count: int) -> tuple[str, list[StepReport]]:
    """A worker, and the successes it would report for ``count`` root steps it claimed among
    INSTANCES instances of ``workflow`` dispatched on tables never analyzed."""
    schema = workflow.to_schema()
    broker.dispatch_many(schema, [{} for _ in range(INSTANCES)])
    worker = broker.register_worker([schema])
    held = broker.get_steps(worker, count)
    assert len(held) == count
    reports = successes(held, [1] * count)
    return worker, reports


def assert_never_analyzed(url: URL) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            analyzed = conn.exec_driver_sql(
                "SELECT relname FROM pg_stat_user_tables"
                " WHERE relname IN ('fuseline_instances', 'fuseline_steps')"
                " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
            ).all()
    finally:
        engine.dispose()
    assert analyzed == [], "the tables were analyzed: this test checks plans made without statistics"


def sent_by_sqlalchemy(url: URL, statement: Executable, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters SQLAlchemy sends the driver for ``statement`` (run in a
    transaction rolled back)."""
    engine = sa.create_engine(url)
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(conn: Any, cursor: Any, text: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((text, dict(parameters)))

    try:
        sa.event.listen(engine, "before_cursor_execute", record)
        with engine.connect() as conn:
            conn.execute(statement, values)
            conn.rollback()
    finally:
        engine.dispose()
    return sent[-1]


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
@pytest.mark.parametrize(
    ("workflow", "expected"),
    [(single, "step_succeed_and_finish"), (chain, "step_succeed_and_queue")],
    ids=["ends-the-instance", "queues-a-successor"],
)
def test_a_report_reads_a_few_rows_of_tables_never_analyzed(
    unanalyzed_url: URL, monkeypatch: pytest.MonkeyPatch, workflow: Workflow, expected: str, cache_mode: str
) -> None:
    broker = SqlBroker(unanalyzed_url, listen=False)
    try:
        worker, (report,) = held_steps(broker, workflow, 1)
        statement, params = capture(
            monkeypatch,
            [pg_statements.step_succeed_and_finish, pg_statements.step_succeed_and_queue],
            lambda: broker.report_step(worker, report),
        )
    finally:
        broker.close()
    assert statement == getattr(pg_statements, expected)
    assert_never_analyzed(unanalyzed_url)
    plan = explain_analyze(dsn(unanalyzed_url), statement, params, cache_mode=cache_mode)
    assert plan["Actual Rows"] == 1, "the report checked was not accepted"
    assert_reads_at_most(plan, MOST_READ)


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_a_batch_of_reports_reads_a_few_rows_each_of_tables_never_analyzed(
    unanalyzed_url: URL, monkeypatch: pytest.MonkeyPatch, cache_mode: str
) -> None:
    broker = SqlBroker(unanalyzed_url, listen=False)
    try:
        worker, reports = held_steps(broker, single, BATCH)
        _, params = capture(
            monkeypatch, [pg_statements.steps_succeed_batch], lambda: broker.report_steps(worker, reports)
        )
    finally:
        broker.close()
    assert_never_analyzed(unanalyzed_url)
    plan = explain_analyze(
        dsn(unanalyzed_url), pg_statements.steps_succeed_batch, params, cache_mode=cache_mode
    )
    assert plan["Actual Rows"] == BATCH, "the batch checked was not accepted"
    assert_reads_at_most(plan, MOST_READ * BATCH)


@pytest.mark.parametrize("cache_mode", CACHE_MODES)
def test_the_general_path_ends_an_instance_reading_its_row_alone_on_tables_never_analyzed(
    unanalyzed_url: URL, cache_mode: str
) -> None:
    """The general path (a shaped workflow, a cancel) ends an instance with ``instance_finish``."""
    broker = SqlBroker(unanalyzed_url, listen=False)
    try:
        instance_id = broker.dispatch_many(single.to_schema(), [{} for _ in range(INSTANCES)])[0]
    finally:
        broker.close()
    values = {
        "p_instance_id": instance_id,
        "p_status": Status.CANCELLED.value,
        "p_result": None,
        "p_error": None,
    }
    statement, params = sent_by_sqlalchemy(unanalyzed_url, for_dialect("postgresql").instance_finish, values)
    assert_never_analyzed(unanalyzed_url)
    plan = explain_analyze(dsn(unanalyzed_url), statement, params, cache_mode=cache_mode)
    assert_reads_at_most(plan, MOST_READ)
    assert sum(node.get("Actual Rows", 0) for node in nodes(plan) if "Relation Name" in node) == 1
