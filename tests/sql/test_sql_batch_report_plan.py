"""A batch of successes costs each report a bounded amount of work, even under a generic plan.

psycopg prepares a statement run five times on one connection, and after
five more runs PostgreSQL may switch it to a generic plan, which estimates
any batch of reports at ten rows. The batch success statement once matched
reports to their locked instances with a subquery per (held step, report)
pair: with 90 reports a plan node ran 8,100 times and the batch took four
times as long (seconds with 100 slots per worker). Here the statement runs
under a forced generic plan, and no node may run more often than the batch
has reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker, pg_statements
from tests.sql.plans import capture, explain_analyze, nodes, successes
from tests.sql.workflows import diamond

REPORTS = 60


def captured_batch(broker: SqlBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The parameters the broker sends for a batch of REPORTS successes of diamonds' first steps;
    the statement itself is not run, so the steps stay RUNNING for the plan below."""
    schema = diamond.to_schema()
    broker.dispatch_many(schema, [{"log": str(tmp_path / "ledger"), "n": n} for n in range(REPORTS)])
    worker = broker.register_worker([schema])
    held = broker.get_steps(worker, REPORTS)
    assert len(held) == REPORTS
    reports = successes(held, range(len(held)))
    _, params = capture(
        monkeypatch, [pg_statements.steps_succeed_batch], lambda: broker.report_steps(worker, reports)
    )
    return params


def test_a_batch_of_successes_under_a_generic_plan_runs_no_node_more_often_than_it_has_reports(
    broker_factory_postgres: Callable[..., SqlBroker],
    postgres_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    params = captured_batch(broker_factory_postgres(listen=False), monkeypatch, tmp_path)
    dsn = postgres_url.set(drivername="postgresql").render_as_string(hide_password=False)
    plan = explain_analyze(dsn, pg_statements.steps_succeed_batch, params, cache_mode="force_generic_plan")
    assert plan["Actual Rows"] == REPORTS, "the plan checked did not accept the batch"
    rows = REPORTS + len(params["p_q_ns"])  # the reports and the successors they queue
    busiest = max(nodes(plan), key=lambda node: node.get("Actual Loops", 0))
    assert busiest["Actual Loops"] <= rows, (
        f"{busiest['Node Type']} ran {busiest['Actual Loops']} times for {REPORTS} reports and "
        f"{rows - REPORTS} successors: " + json.dumps(busiest)[:500]
    )
