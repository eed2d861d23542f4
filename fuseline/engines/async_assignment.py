"""Running an assigned ``AsyncStep`` as a coroutine on an event loop the worker shares.

:func:`.assignment.run_assignment` runs an async step to completion on an
event loop of its own (``asyncio.run``), which blocks its thread for the
whole step: fine for a worker that runs one step at a time, useless for one
that runs many. A multi-slot worker awaits :func:`run_assignment_async`
instead, so its async steps wait on I/O together on one loop.

The step runs exactly as ``Workflow.execute_step`` runs it: the workflow's
``on_step_*`` hooks around it, its conditions, ``before_all`` once per
worker, ``setup``, ``run_step`` inside the step policies (``execute_async``)
without the ``RetryPolicy`` (the broker schedules retries), ``teardown``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from ..broker.base import StepAssignment, StepReport
from ..states import Status
from ..workflow.execution import Outcome, _invoke_async, bind_arguments, describe_error
from ..workflow.lifecycle import StepLifecycle
from ..workflow.policies import RetryPolicy, StepPolicy, WorkflowPolicy
from ..workflow.shapes import ITEM_PARAMETER
from ..workflow.step import Step, running_as
from ..workflow.workflow import Workflow
from .assignment import Execution


async def run_assignment_async(
    workflow: Workflow, assignment: StepAssignment, lifecycle: StepLifecycle, prepared: set[Step]
) -> Execution:
    """Await the assigned async step of ``workflow`` and build its report.

    ``prepared`` holds the steps whose ``before_all`` already ran in
    ``lifecycle`` as far as this caller knows: for those the lifecycle is not
    asked again (asking takes its lock; the first time it runs ``before_all``,
    which may block, so that happens on a thread, not on the shared loop).

    Like ``run_assignment``, an ``Exception`` makes a FAILED report and a
    ``BaseException`` propagates.
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
        outcome = await _execute_step_async(workflow, step, shared, inputs, lifecycle, prepared)
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


async def _execute_step_async(
    workflow: Workflow,
    step: Step,
    shared: Mapping[Step, Any],
    inputs: Mapping[str, Any],
    lifecycle: StepLifecycle,
    prepared: set[Step],
) -> Outcome:
    """``Workflow.execute_step(..., policy_retries=False)`` for an async step, awaited."""
    hooks = [p for p in workflow.policies if isinstance(p, WorkflowPolicy)]
    step_policies = [
        p
        for p in (*workflow.policies, *step.policies)
        if isinstance(p, StepPolicy) and not isinstance(p, RetryPolicy)
    ]
    name = workflow.name_of(step)
    with running_as(step, name):
        for hook in hooks:
            hook.on_step_start(workflow, step)
        try:
            kwargs = bind_arguments(step, shared, inputs, name)
            if kwargs is None:
                outcome = Outcome(None, skipped=True)
            else:
                shared_dict = dict(shared)
                if step not in prepared:
                    await asyncio.to_thread(lifecycle.prepare, step, shared_dict)
                    prepared.add(step)
                outcome = Outcome(await _invoke_async(step, shared_dict, kwargs, step_policies))
        except Exception as exc:
            for hook in hooks:
                hook.on_step_failure(workflow, step, exc)
            raise
        if not outcome.skipped:
            for hook in hooks:
                hook.on_step_success(workflow, step, outcome.result)
    return outcome
