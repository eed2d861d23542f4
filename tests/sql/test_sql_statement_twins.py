"""Each one-statement form of PostgreSQL leaves the same rows as its general twin.

The same scenario runs twice on one database: once on a broker that takes
the one-statement forms (:mod:`fuseline.broker.sql.pg_statements`), once on
a broker with ``fast_paths=False`` that takes the general path (Core
statements in one transaction). The rows each leaves for its own instances
(steps, instance, history) are compared after replacing ids by roles and
timestamps by whether they are set. Each scenario also checks that the fast
broker really took its one-statement form: the general path runs
``UPDATE fuseline_steps`` through SQLAlchemy, the one-statement forms never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import StepReport
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import events, instances, steps
from fuseline.states import Status
from fuseline.workflow import Workflow
from tests.conftest import FUSELINE_TABLES
from tests.contract import workflows as wf
from tests.contract.support import report

Scenario = Callable[[SqlBroker, str], list[str]]


@contextmanager
def general_step_writes(broker: SqlBroker) -> Iterator[list[str]]:
    """The ``UPDATE fuseline_steps`` statements run through SQLAlchemy while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE FUSELINE_STEPS", "INSERT INTO FUSELINE_STEPS")):
            seen.append(statement)

    sa.event.listen(broker.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(broker.engine, "before_cursor_execute", record)


def ok(assignment: StepAssignment, result: Any) -> StepReport:
    return report(assignment, Status.SUCCEEDED, result, version=assignment.version)


def snapshot(url: URL, instance_ids: list[str], roles: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of these instances with ids replaced by roles and times by whether they are set."""
    engine = sa.create_engine(url)

    def who(value: Any) -> Any:
        return roles.get(str(value), value) if value is not None else None

    try:
        with engine.connect() as conn:
            found = []
            for instance_id in instance_ids:
                instance = conn.execute(sa.select(instances).where(instances.c.id == instance_id)).one()
                step_rows = conn.execute(
                    sa.select(steps).where(steps.c.instance_id == instance_id).order_by(steps.c.name)
                ).all()
                event_rows = conn.execute(
                    sa.select(events).where(events.c.instance_id == instance_id).order_by(events.c.id)
                ).all()
                found.append(
                    {
                        "instance": (instance.status, instance.inputs, instance.result, instance.error,
                                     instance.finished_at is not None),
                        "steps": [
                            (s.name, s.state, s.attempt, s.released, s.max_attempts, s.result, s.error,
                             s.action, s.inputs_from, who(s.worker_id), who(s.reported_by),
                             s.lease_expires_at is not None, s.available_at is not None,
                             s.started_at is not None, s.finished_at is not None)
                            for s in step_rows
                        ],
                        "events": [
                            (e.kind, e.step_name, e.attempt, who(e.worker_id), e.detail) for e in event_rows
                        ],
                    }
                )  # fmt: skip
            return found
    finally:
        engine.dispose()


def dispatch(broker: SqlBroker, worker: str) -> list[str]:
    return broker.dispatch_many(wf.DIAMOND.to_schema(), [{"x": 1}, {"x": 2}])


def claim_one(broker: SqlBroker, worker: str) -> list[str]:
    ids = broker.dispatch_many(wf.SEQUENCE.to_schema(), [{"x": 1}, {"x": 2}])
    assert broker.get_step(worker) is not None
    return ids


def claim_batch(broker: SqlBroker, worker: str) -> list[str]:
    ids = broker.dispatch_many(wf.SEQUENCE.to_schema(), [{"x": n} for n in range(4)])
    assert len(broker.get_steps(worker, 3)) == 3
    return ids


def claim_many_workflows(broker: SqlBroker, worker: str) -> list[str]:
    ids = [wf.SINGLE.dispatch(broker, {"x": 1}), wf.SEQUENCE.dispatch(broker, {"x": 2})]
    assert len(broker.get_steps(worker, 5)) == 2
    return ids


def succeed_and_queue(broker: SqlBroker, worker: str) -> list[str]:
    ids = broker.dispatch_many(wf.SEQUENCE.to_schema(), [{"x": 1}])
    held = broker.get_step(worker)
    assert held is not None
    broker.report_step(worker, ok(held, 7))
    return ids


def succeed_and_finish(broker: SqlBroker, worker: str) -> list[str]:
    (instance_id,) = [wf.SINGLE.dispatch(broker, {"x": 3})]
    held = broker.get_step(worker)
    assert held is not None
    broker.report_step(worker, ok(held, 6))
    return [instance_id]


def succeed_batch(broker: SqlBroker, worker: str) -> list[str]:
    ids = broker.dispatch_many(wf.SEQUENCE.to_schema(), [{"x": n} for n in range(3)])
    batch = broker.get_steps(worker, 3)
    assert broker.report_steps(worker, [ok(a, n) for n, a in enumerate(batch)]) == [None] * 3
    return ids


def succeed_then_claim(broker: SqlBroker, worker: str) -> list[str]:
    ids = broker.dispatch_many(wf.SEQUENCE.to_schema(), [{"x": 1}])
    held = broker.get_step(worker)
    assert held is not None
    following = broker.report_and_claim(worker, ok(held, 2))
    assert following is not None and following.step_name == "second"
    return ids


SCENARIOS: dict[str, tuple[Scenario, list[Workflow]]] = {
    "instances_dispatch": (dispatch, [wf.DIAMOND]),
    "step_claim_one_workflow": (claim_one, [wf.SEQUENCE]),
    "steps_claim_batch_one_workflow": (claim_batch, [wf.SEQUENCE]),
    "steps_claim_batch_many_workflows": (claim_many_workflows, [wf.SINGLE, wf.SEQUENCE]),
    "step_succeed_and_queue": (succeed_and_queue, [wf.SEQUENCE]),
    "step_succeed_and_finish": (succeed_and_finish, [wf.SINGLE]),
    "steps_succeed_batch": (succeed_batch, [wf.SEQUENCE]),
    "step_claim_after_report": (succeed_then_claim, [wf.SEQUENCE]),
}


def empty(url: URL) -> None:
    """Start the next run from empty tables, so neither claims the other's steps."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE " + ", ".join(FUSELINE_TABLES) + " RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_one_statement_form_leaves_the_rows_of_its_general_twin(postgres_url: URL, name: str) -> None:
    scenario, flows = SCENARIOS[name]
    snapshots, writes = [], []
    for fast_paths in (True, False):
        broker = SqlBroker(postgres_url, fast_paths=fast_paths)
        try:
            schemas = [flow.to_schema() for flow in flows]
            broker.register_workflows(schemas)  # cached plans: the one-statement forms need them
            worker = broker.register_worker(schemas)
            with general_step_writes(broker) as seen:
                ids = scenario(broker, worker)
            writes.append(seen)
            snapshots.append(snapshot(postgres_url, ids, {worker: "worker"}))
        finally:
            broker.close()

        empty(postgres_url)

    fast, general = snapshots
    assert fast == general
    assert writes[1], "the general path wrote no step through SQLAlchemy: the scenario tests nothing"
    assert writes[0] == [], f"the fast broker took the general path: {writes[0]}"
