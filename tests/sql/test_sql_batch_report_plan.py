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
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL

from fuseline.broker.base import StepReport
from fuseline.broker.sql import SqlBroker, pg_statements
from fuseline.broker.sql.database import PostgresDatabase
from fuseline.states import Status
from tests.sql.workflows import diamond

REPORTS = 60


class Captured(Exception):
    """Stops a report call once its batch statement's parameters are captured."""


def captured_batch(broker: SqlBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The parameters the broker sends for a batch of REPORTS successes of diamonds' first steps;
    the statement itself is not run, so the steps stay RUNNING for the plan below."""
    schema = diamond.to_schema()
    broker.dispatch_many(schema, [{"log": str(tmp_path / "ledger"), "n": n} for n in range(REPORTS)])
    worker = broker.register_worker([schema])
    held = broker.get_steps(worker, REPORTS)
    assert len(held) == REPORTS
    sent: list[dict[str, Any]] = []
    run = PostgresDatabase.rows

    def capture(db: PostgresDatabase, sql: str, params: dict[str, Any]) -> Any:
        if sql != pg_statements.steps_succeed_batch:
            return run(db, sql, params)
        sent.append(params)
        raise Captured  # before the broker would send the refused reports one by one

    monkeypatch.setattr(PostgresDatabase, "rows", capture)
    reports = [
        StepReport(
            a.workflow_id,
            a.instance_id,
            a.step_name,
            Status.SUCCEEDED,
            n,
            attempt=a.attempt,
            version=a.version,
        )
        for n, a in enumerate(held)
    ]
    with pytest.raises(Captured):
        broker.report_steps(worker, reports)
    monkeypatch.undo()
    assert len(sent) == 1, "the reports did not go out as one batch statement"
    return sent[0]


def as_prepared(sql: str) -> tuple[str, list[str]]:
    """``sql`` with its ``%(name)s`` parameters numbered ``$1``..., and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), names


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def test_a_batch_of_successes_under_a_generic_plan_runs_no_node_more_often_than_it_has_reports(
    broker_factory_postgres: Callable[..., SqlBroker],
    postgres_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    params = captured_batch(broker_factory_postgres(listen=False), monkeypatch, tmp_path)
    statement, names = as_prepared(pg_statements.steps_succeed_batch)
    arguments = ", ".join(f"%({name})s" for name in names)
    dsn = postgres_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:  # one transaction, rolled back: EXPLAIN ANALYZE writes
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE batch AS {statement}")
        # the arguments inlined as literals, which EXECUTE casts to the statement's types
        inlined = psycopg.ClientCursor(conn)
        (explained,) = inlined.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE batch({arguments})", params
        ).fetchone()
        conn.rollback()
    plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
    assert plan["Actual Rows"] == REPORTS, "the plan checked did not accept the batch"
    rows = REPORTS + len(params["p_q_ns"])  # the reports and the successors they queue
    busiest = max(nodes(plan), key=lambda node: node.get("Actual Loops", 0))
    assert busiest["Actual Loops"] <= rows, (
        f"{busiest['Node Type']} ran {busiest['Actual Loops']} times for {REPORTS} reports and "
        f"{rows - REPORTS} successors: " + json.dumps(busiest)[:500]
    )
