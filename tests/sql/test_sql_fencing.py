"""Fencing (RELIABILITY item 2): only the holder of the current lease may report a step."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuseline import Status, StepReport
from fuseline.broker.reports import WORKER_LOST
from fuseline.broker.sql import SqlBroker
from fuseline.errors import LeaseLost
from tests.sql.leases import expire_leases, step_row, stored_rows
from tests.sql.workflows import diamond, fragile


def report(assignment, result, attempt) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=result,
        attempt=attempt,
    )


def test_report_of_an_expired_attempt_is_rejected_after_another_worker_reclaimed_it(
    db_url: str, tmp_path: Path
) -> None:
    first_broker, second_broker = SqlBroker(db_url), SqlBroker(db_url)
    try:
        schema = diamond.to_schema()
        instance_id = first_broker.dispatch_workflow(schema, {"log": str(tmp_path / "ledger"), "n": 5})
        first = first_broker.register_worker([schema])
        second = second_broker.register_worker([schema])

        held = first_broker.get_step(first)
        assert (held.instance_id, held.step_name, held.attempt) == (instance_id, "a", 1)
        assert second_broker.get_step(second) is None  # held, not expired: nothing to claim
        assert expire_leases(first_broker.engine) == 1

        taken = second_broker.get_step(second)
        assert (taken.instance_id, taken.step_name, taken.attempt) == (instance_id, "a", 2)

        before = stored_rows(first_broker.engine)
        with pytest.raises(LeaseLost, match="handed to another worker"):
            first_broker.report_step(first, report(held, 5, attempt=1))
        with pytest.raises(LeaseLost):
            first_broker.report_step(first, report(held, 5, attempt=None))
        assert stored_rows(first_broker.engine) == before, "a rejected report changed rows"
        row = step_row(first_broker.engine, instance_id, "a")
        assert (row.state, row.worker_id, row.attempt) == ("RUNNING", second, 2)
        info = first_broker.get_instance(instance_id)
        assert {s.name: s.state for s in info.steps} == {
            "a": Status.RUNNING,
            "b": Status.PENDING,
            "c": Status.PENDING,
            "d": Status.PENDING,
        }

        second_broker.report_step(second, report(taken, 5, attempt=2))

        row = step_row(first_broker.engine, instance_id, "a")
        assert (row.state, row.reported_by, row.attempt, row.result) == ("SUCCEEDED", second, 2, "5")
        states = {s.name: s.state for s in first_broker.get_instance(instance_id).steps}
        assert states == {"a": Status.SUCCEEDED, "b": Status.QUEUED, "c": Status.QUEUED, "d": Status.PENDING}
        with pytest.raises(LeaseLost):  # and still not after the step ended
            first_broker.report_step(first, report(held, 5, attempt=1))
    finally:
        first_broker.close()
        second_broker.close()


def test_step_whose_lease_expires_on_its_last_attempt_fails_with_worker_lost(
    db_url: str, tmp_path: Path
) -> None:
    brokers = [SqlBroker(db_url) for _ in range(3)]
    try:
        schema = fragile.to_schema()
        instance_id = brokers[0].dispatch_workflow(schema, {"log": str(tmp_path / "ledger"), "n": 1})
        workers = [b.register_worker([schema]) for b in brokers]

        held = brokers[0].get_step(workers[0])
        assert (held.step_name, held.attempt) == ("fragile", 1)
        expire_leases(brokers[0].engine)
        last = brokers[1].get_step(workers[1])
        assert (last.step_name, last.attempt) == ("fragile", 2)  # max_attempts = 2
        expire_leases(brokers[0].engine)

        assert brokers[2].get_step(workers[2]) is None  # the reaper fails it instead of queueing it

        info = brokers[0].get_instance(instance_id)
        steps = {s.name: s for s in info.steps}
        assert steps["fragile"].state is Status.FAILED
        assert steps["fragile"].attempt == 2
        assert steps["fragile"].error == WORKER_LOST
        assert "worker lost" in steps["fragile"].error
        assert steps["after"].state is Status.CANCELLED
        assert info.status is Status.FAILED
        assert "worker lost" in (info.error or "")
        kinds = [(e.kind, e.step_name, e.attempt) for e in brokers[0].instance_events(instance_id)]
        assert kinds.count(("failed", "fragile", 2)) == 1
        assert kinds.count(("instance_failed", None, None)) == 1
        with pytest.raises(LeaseLost, match="FAILED"):
            brokers[1].report_step(workers[1], report(last, 1, attempt=2))
        assert brokers[0].get_instance(instance_id).status is Status.FAILED
    finally:
        for broker in brokers:
            broker.close()
