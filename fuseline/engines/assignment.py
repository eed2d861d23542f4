"""Turning a step assignment into a report: the part every engine shares."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..broker.base import StepAssignment, StepReport
from ..states import Status
from ..workflow.execution import describe_error
from ..workflow.workflow import Workflow


@dataclass(frozen=True)
class Execution:
    """A finished run of one assigned step: the report to send, and the exception if any."""

    report: StepReport
    error: Exception | None
    seconds: float


def run_assignment(workflow: Workflow, assignment: StepAssignment) -> Execution:
    """Run the assigned step of ``workflow`` and build its report.

    A step that raises is reported FAILED with its error text; the exception
    is returned, not raised, so the worker lives on.
    """
    started = time.perf_counter()
    step = workflow.steps_by_name[assignment.step_name]
    payload = assignment.payload
    shared = {
        workflow.steps_by_name[name]: value
        for name, value in (payload.get("results") or {}).items()
        if name in workflow.steps_by_name
    }
    inputs = payload.get("workflow_inputs") or {}
    error: Exception | None = None
    try:
        outcome = workflow._run(step, shared, inputs)
    except Exception as exc:
        error = exc
        state, result, text = Status.FAILED, None, describe_error(exc)
    else:
        state = Status.SKIPPED if outcome.skipped else Status.SUCCEEDED
        result, text = outcome.result, None
    report = StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=state,
        result=result,
        attempt=assignment.attempt,
        error=text,
        version=assignment.version,
    )
    return Execution(report, error, time.perf_counter() - started)
