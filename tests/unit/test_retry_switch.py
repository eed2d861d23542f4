"""Who retries a RetryPolicy: the thread in-process runs, the broker for workers.

``Workflow.run`` (PoolEngine, on a MemoryBroker with ``broker_retries=False``)
and the worker guide's ``_execute_step`` retry inside the call, as always.
A worker runs the step once (``policy_retries=False``) and reports the
failure; its broker schedules the retry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from fuseline import Sleep, Status, Step, StepAssignment, Workflow
from fuseline.broker import MemoryBroker, StepReport
from fuseline.engines.assignment import run_assignment
from fuseline.policies import RetryPolicy


class Flaky(Step):
    """Fails ``failures`` times, then returns how many calls it took."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        self.failures = failures
        self.calls = 0
        super().__init__(**kwargs)

    def run_step(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"failure {self.calls}")
        return self.calls


def flaky_workflow(failures: int) -> tuple[Workflow, Flaky]:
    step = Flaky(failures, policies=[RetryPolicy(max_retries=3)])
    return Workflow(step, workflow_id="flaky"), step


def test_execute_step_without_policy_retries_runs_the_step_once_and_raises() -> None:
    workflow, step = flaky_workflow(1)

    with pytest.raises(ConnectionError, match="failure 1"):
        workflow.execute_step(step, {}, {}, policy_retries=False)

    assert step.calls == 1


def test_execute_step_applies_the_retry_policy_by_default() -> None:
    workflow, step = flaky_workflow(2)

    assert workflow.execute_step(step, {}, {}).result == 3


def test_the_worker_guides_execute_step_retries_in_process() -> None:
    workflow, step = flaky_workflow(2)

    assert workflow._execute_step(step, {}) == 3
    assert step.state is Status.SUCCEEDED


def test_workflow_run_retries_in_process() -> None:
    workflow, step = flaky_workflow(2)

    assert workflow.run() == 3
    assert step.calls == 3


def test_run_assignment_without_policy_retries_reports_the_first_failure() -> None:
    workflow, step = flaky_workflow(1)
    now = datetime.now(timezone.utc)
    assignment = StepAssignment("flaky", "i-1", "flaky", {}, now, now, 1, "1")

    execution = run_assignment(workflow, assignment, policy_retries=False)

    assert (execution.report.state, step.calls) == (Status.FAILED, 1)
    assert "failure 1" in (execution.report.error or "")


def test_a_memory_broker_without_broker_retries_fails_the_step_on_its_first_reported_failure() -> None:
    workflow, _ = flaky_workflow(1)
    broker = MemoryBroker(broker_retries=False)
    worker = broker.register_worker([workflow.to_schema()])
    instance_id = workflow.dispatch(broker, {})
    assignment = broker.get_step(worker)
    assert assignment is not None

    broker.report_step(
        worker,
        StepReport("flaky", instance_id, "flaky", Status.FAILED, attempt=assignment.attempt, error="x"),
    )

    step = broker.get_instance(instance_id).step("flaky")
    assert (step.state, step.retries) == (Status.FAILED, 0)


class Tick(Step):
    def run_step(self) -> str:
        return "tick"


def test_a_sleep_in_workflow_run_pauses_and_the_run_goes_on() -> None:
    pause, tick = Sleep(0.05, name="pause"), Tick()
    pause >> tick
    run = Workflow(tick, workflow_id="paused").run_instance()

    assert (run.status, run.result) == (Status.SUCCEEDED, "tick")
    assert run.steps == {"pause": Status.SUCCEEDED, "tick": Status.SUCCEEDED}
