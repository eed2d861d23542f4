"""Item 15, bad reports and schemas: one row however many register it; refused reports change nothing.

The contract suite checks the error types; here ten OS processes register
one schema at the same moment, and every refused report is compared against
a snapshot of every row of every fuseline table (all columns) on both dialects.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from fuseline import Status, StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import steps
from fuseline.errors import (
    BrokerError,
    LeaseLost,
    ReportConflict,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
    UnknownWorkflow,
)
from tests.reliability import flows
from tests.reliability.support import REPOSITORY, execute, select_rows, snapshot, subprocess_env

#: Ten OS processes (forked after the imports, so they start fast) each open a broker,
#: meet at a barrier, and register as workers of the same workflow at the same moment.
REGISTERING_PROCESSES = """
import sys
from multiprocessing import get_context
from fuseline.broker.sql import SqlBroker
from tests.reliability import flows

def register(url, barrier):
    broker = SqlBroker(url)
    barrier.wait(timeout=60)
    broker.register_worker([flows.diamond.to_schema()])
    broker.close()

context = get_context("fork")
barrier = context.Barrier(10)
processes = [context.Process(target=register, args=(sys.argv[1], barrier)) for _ in range(10)]
for process in processes:
    process.start()
for process in processes:
    process.join(90)
print([process.exitcode for process in processes])
"""


def test_the_same_schema_registered_by_ten_processes_at_once_leaves_one_row(db_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", REGISTERING_PROCESSES, db_url],
        cwd=REPOSITORY,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == str([0] * 10), done.stdout + done.stderr

    schema = flows.diamond.to_schema()
    rows = execute(db_url, "SELECT workflow_id, version, schema_hash FROM fuseline_workflows")[0]
    assert rows == [(schema.workflow_id, schema.version, schema.hash)]
    assert execute(db_url, "SELECT count(*) FROM fuseline_workers")[0] == [(10,)]


# -- refused reports change 0 rows --------------------------------------------------------------

UNKNOWN_UUID = "5f0c1a7e-0000-4000-8000-000000000000"


def _report(assignment: Any, **changes: Any) -> StepReport:
    fields = {
        "workflow_id": assignment.workflow_id,
        "instance_id": assignment.instance_id,
        "step_name": assignment.step_name,
        "state": Status.SUCCEEDED,
        "result": 1,
        "attempt": assignment.attempt,
        "error": None,
        "version": assignment.version,
    }
    fields.update(changes)
    return StepReport(**fields)


@pytest.fixture
def scene(db_url: str) -> Any:
    """Two workers and three diamonds: one finished, one mid-way, one not started.

    The mid-way diamond has ``top`` SUCCEEDED, ``left`` RUNNING (held by
    ``holder``), ``right`` RUNNING (held by ``other``) and ``bottom`` PENDING;
    the third diamond's ``top`` is QUEUED.
    """
    broker = SqlBroker(db_url)
    schema = flows.diamond.to_schema()
    holder = broker.register_worker([schema])
    other = broker.register_worker([schema])
    done_id = broker.dispatch_workflow(schema, {"x": 1})

    def claim(worker: str, instance_id: str, step_name: str) -> Any:
        assignment = broker.get_step(worker)
        assert assignment is not None
        assert (assignment.instance_id, assignment.step_name) == (instance_id, step_name)
        return assignment

    done_top = claim(holder, done_id, "top")
    broker.report_step(holder, _report(done_top, result=2))
    for name in ("left", "right", "bottom"):
        broker.report_step(holder, _report(claim(holder, done_id, name), result=2))
    midway_id = broker.dispatch_workflow(schema, {"x": 2})
    broker.report_step(holder, _report(claim(holder, midway_id, "top"), result=2))
    left = claim(holder, midway_id, "left")
    claim(other, midway_id, "right")
    queued_id = broker.dispatch_workflow(schema, {"x": 3})
    yield {
        "broker": broker,
        "holder": holder,
        "other": other,
        "done_top": done_top,
        "left": left,
        "queued_id": queued_id,
        "midway_id": midway_id,
        "url": db_url,
    }
    broker.close()


def _cases(s: dict[str, Any]) -> dict[str, tuple[str, StepReport, type[BrokerError]]]:
    """Name -> (reporting worker, report, the error it must raise)."""
    left, done, holder, other = s["left"], s["done_top"], s["holder"], s["other"]
    cases: dict[str, tuple[str, StepReport, type[BrokerError]]] = {
        "unknown-step": (holder, _report(left, step_name="no_such_step"), UnknownStep),
        "unknown-instance-uuid": (holder, _report(left, instance_id=UNKNOWN_UUID), UnknownInstance),
        "unknown-instance-text": (holder, _report(left, instance_id="not-an-id"), UnknownInstance),
        "unknown-workflow": (holder, _report(left, workflow_id="no-such-workflow"), UnknownWorkflow),
        "unknown-worker": (UNKNOWN_UUID, _report(left), UnknownWorker),
        "pending-step": (holder, _report(left, step_name="bottom"), LeaseLost),
        "queued-step": (holder, _report(left, instance_id=s["queued_id"], step_name="top"), LeaseLost),
        "succeeded-step-other-worker": (other, _report(done, result=2), LeaseLost),
        "succeeded-step-different-result": (holder, _report(done, result=999), ReportConflict),
        "succeeded-step-now-failed": (
            holder,
            _report(done, state=Status.FAILED, result=None),
            ReportConflict,
        ),
        "running-step-other-holder": (holder, _report(left, step_name="right"), LeaseLost),
        "running-step-wrong-attempt": (holder, _report(left, attempt=left.attempt + 1), LeaseLost),
        "running-step-old-attempt": (holder, _report(left, attempt=0), LeaseLost),
    }
    for name, (worker, report, error) in list(cases.items()):
        # the same report as a failure (the general path; successes may take the one-statement path)
        if report.state is Status.SUCCEEDED:
            failed = dataclasses.replace(report, state=Status.FAILED, result=None, error="x")
            cases[f"{name}-as-failure"] = (worker, failed, error)
    return cases


#: Refused reports whose step the worker itself already reported (at that attempt): on
#: PostgreSQL the claim sent with the report cannot tell them from a replay, so
#: report_and_claim may claim a step, which it must give back before raising.
SAME_WORKER_REPLAYS = {"succeeded-step-different-result"}


def _holders(snap: dict[str, list[tuple[Any, ...]]], url: str) -> list[tuple[Any, ...]]:
    """(instance, step, state, holder) of every step: what a leftover claim would change."""
    return execute(url, "SELECT instance_id, name, state, worker_id FROM fuseline_steps ORDER BY id")[0]


def test_refused_reports_raise_typed_errors_and_change_no_row(scene: dict[str, Any]) -> None:
    broker: SqlBroker = scene["broker"]
    url = scene["url"]
    before = snapshot(url)
    assert sum(len(rows) for rows in before.values()) > 20  # the scene is not empty
    raised = {}
    for name, (worker, report, error) in _cases(scene).items():
        with pytest.raises(BrokerError) as refused:
            broker.report_step(worker, report)
        raised[name] = type(refused.value)
        assert isinstance(refused.value, error), (name, refused.value)
        assert snapshot(url) == before, f"{name}: the refused report changed rows"

        if worker == UNKNOWN_UUID:
            continue
        holders = _holders(before, url)
        with pytest.raises(error):  # reporting and claiming in one go claims nothing either
            broker.report_and_claim(worker, report)
        after = snapshot(url)
        if name in SAME_WORKER_REPLAYS and after != before:
            assert _holders(after, url) == holders, f"{name}: a step stayed claimed"
            assert [r for r in after["fuseline_events"] if r not in before["fuseline_events"]][-1][3] == (
                "released"
            )
            before = after
        assert after == before, f"{name}: report_and_claim changed rows"
    assert set(raised.values()) == {
        UnknownStep,
        UnknownInstance,
        UnknownWorkflow,
        UnknownWorker,
        LeaseLost,
        ReportConflict,
    }

    # the scene is live: the real holder's report is accepted and changes rows
    broker.report_step(scene["holder"], _report(scene["left"], result=4))
    assert snapshot(url) != before
    assert broker.get_instance(scene["midway_id"]).step("left").state is Status.SUCCEEDED


def test_an_exact_replay_through_report_and_claim_hands_out_one_step_and_orphans_none(
    scene: dict[str, Any],
) -> None:
    """A report sent again (say, after the connection dropped mid-commit) claims once, not twice."""
    broker: SqlBroker = scene["broker"]
    holder = scene["holder"]
    replay = _report(scene["done_top"], result=2)  # exactly what was accepted

    assignment = broker.report_and_claim(holder, replay)

    assert assignment is not None
    assert (assignment.instance_id, assignment.step_name) == (scene["queued_id"], "top")
    held = select_rows(
        scene["url"], sa.select(steps.c.name).where(steps.c.state == "RUNNING", steps.c.worker_id == holder)
    )
    assert sorted(held) == [("left",), ("top",)], "a step was claimed that nobody was told about"
