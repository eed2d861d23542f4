"""Turning a step assignment into a report: the part every engine shares."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..broker.base import StepAssignment, StepReport
from ..states import Status
from ..workflow.execution import describe_error
from ..workflow.lifecycle import StepLifecycle
from ..workflow.shapes import ITEM_PARAMETER
from ..workflow.workflow import Workflow


@dataclass(frozen=True)
class Execution:
    """A finished run of one assigned step: the report to send, and the exception if any."""

    report: StepReport
    error: Exception | None
    seconds: float


def run_assignment(
    workflow: Workflow,
    assignment: StepAssignment,
    lifecycle: StepLifecycle | None = None,
    *,
    policy_retries: bool = True,
) -> Execution:
    """Run the assigned step of ``workflow`` and build its report.

    ``lifecycle`` is the scope of ``before_all`` / ``after_all`` the engine
    keeps (one per in-process run, one per worker); without one the
    workflow's own is used, which ``workflow.close()`` ends.
    ``policy_retries=False`` runs the step without its ``RetryPolicy``: the
    engine's broker schedules the retries (see ``Workflow.execute_step``).

    A step that raises an ``Exception`` is reported FAILED with its error
    text; the exception is returned, not raised, so the worker lives on. A
    ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) propagates: the
    engine must stop, not report.
    """
    started = time.perf_counter()
    payload = assignment.payload
    step = workflow.step_for(assignment.step_name)
    shared = {
        workflow.steps_by_name[name]: value
        for name, value in (payload.get("results") or {}).items()
        if name in workflow.steps_by_name
    }
    inputs = payload.get("workflow_inputs") or {}
    if "item" in payload:  # a Map item: the mapped step's ``item`` parameter
        inputs = {**inputs, ITEM_PARAMETER: payload["item"]}
    error: Exception | None = None
    try:
        outcome = workflow.execute_step(
            step, shared, inputs, lifecycle=lifecycle, policy_retries=policy_retries
        )
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
