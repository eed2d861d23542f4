"""Small helpers the contract tests share: reading states, claiming, a client that misbehaves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fuseline import Status, StepAssignment, StepReport
from fuseline.broker import Broker, InstanceInfo, Lease
from fuseline.clients import BrokerClient
from fuseline.workflow import Workflow, WorkflowSchema

_SAME = object()

#: Ids no broker ever handed out: free text and a well-formed UUID.
UNKNOWN_IDS = ["no-such-id", "5f0c1a7e-0000-4000-8000-000000000000"]


def states(info: InstanceInfo) -> dict[str, Status]:
    """Step name -> state."""
    return {step.name: step.state for step in info.steps}


def trail(broker: Broker, instance_id: str) -> list[tuple[str, str | None]]:
    """The instance's history as (kind, step name) pairs, oldest first."""
    return [(event.kind, event.step_name) for event in broker.instance_events(instance_id)]


def claim(broker: Broker, worker_id: str) -> StepAssignment:
    """Claim the next step, failing the test if there is none."""
    assignment = broker.get_step(worker_id)
    assert assignment is not None, "expected a queued step"
    return assignment


def succeed(broker: Broker, worker_id: str, assignment: StepAssignment, result: Any) -> None:
    broker.report_step(worker_id, report(assignment, Status.SUCCEEDED, result))


def report(
    assignment: StepAssignment,
    state: Status,
    result: Any = None,
    *,
    attempt: Any = _SAME,
    error: str | None = None,
    version: str | None = None,
) -> StepReport:
    """The report for ``assignment``; ``attempt`` defaults to the assignment's attempt.

    Pass ``version=assignment.version`` for the report as a ProcessEngine
    sends it, which lets a broker take its one-statement path.
    """
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=state,
        result=result,
        attempt=assignment.attempt if attempt is _SAME else attempt,
        error=error,
        version=version,
    )


def register(broker: Broker, *flows: Workflow) -> str:
    return broker.register_worker([flow.to_schema() for flow in flows])


class InjectingClient(BrokerClient):
    """A real client that hands its engine extra assignments before the broker's own.

    It stands for a broker that knows steps this worker's code does not (an
    older deployment of the worker, a renamed step).
    """

    def __init__(self, inner: BrokerClient, extra: Sequence[StepAssignment]) -> None:
        self.inner = inner
        self.extra = list(extra)
        self.handed_out: list[StepAssignment] = []

    def register_worker(self, schemas: Sequence[WorkflowSchema]) -> str:
        return self.inner.register_worker(schemas)

    def get_step(self, worker_id: str) -> StepAssignment | None:
        assignment = self.extra.pop(0) if self.extra else self.inner.get_step(worker_id)
        if assignment is not None:
            self.handed_out.append(assignment)
        return assignment

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self.inner.report_step(worker_id, report)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        return self.inner.keep_alive(worker_id)

    def deregister_worker(self, worker_id: str) -> None:
        self.inner.deregister_worker(worker_id)
