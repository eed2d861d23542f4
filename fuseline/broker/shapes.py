"""What every broker decides the same way for Map, SubWorkflow and WaitFor steps.

The brokers store these decisions differently (records in memory, rows in
SQL) but take them here, so their messages and rules cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..states import Status
from ..workflow.schema import WorkflowSchema
from .base import Reason
from .dag import WorkflowPlan
from .scheduling import ChildShape, SignalShape, StepScheduling


def map_problem(plan: WorkflowPlan, step: str, result: Any) -> str | None:
    """Why ``step``'s result cannot feed the Maps over it (not a list, too many items), or None."""
    node = plan.nodes.get(step)
    for successor in node.successors if node is not None else ():
        shape = plan.scheduling.steps[successor].map
        if shape is None or shape.over != step:
            continue
        if not isinstance(result, list):
            return (
                f"Map {successor!r} runs over the result of {step!r}, which must be a list, "
                f"not {type(result).__name__}"
            )
        if len(result) > shape.max_items:
            return (
                f"Map {successor!r} takes at most {shape.max_items:,} items (max_items); "
                f"{step!r} returned {len(result):,}"
            )
    return None


def feeds_map(plan: WorkflowPlan, step: str) -> bool:
    """Whether a Map runs over ``step``'s result (its report is then checked by :func:`map_problem`)."""
    if step not in plan.nodes:
        return False
    return any(
        (shape := plan.scheduling.steps[s].map) is not None and shape.over == step
        for s in plan.successors(step)
    )


def item_failure(index: int, error: str | None) -> str:
    """A Map's error when one of its items failed for good."""
    return f"item {index} failed: {error or 'no error text'}"


def signal_timeout(shape: SignalShape) -> str:
    """A WaitFor's error when its timeout passed without the signal."""
    return f"no signal {shape.signal!r} within {shape.timeout:g} s"


def child_schema(shape: ChildShape) -> WorkflowSchema:
    return WorkflowSchema.from_dict(dict(shape.schema))


def child_inputs(
    shape: ChildShape, schema: WorkflowSchema, parent_inputs: Mapping[str, Any], results: Mapping[str, Any]
) -> dict[str, Any]:
    """The child's inputs: the values given (a predecessor's result for ``{"step": ...}``),
    then, for any input the child's steps read that was not given, the parent's input of
    that name."""
    inputs: dict[str, Any] = {}
    for name, source in shape.inputs.items():
        inputs[name] = results.get(source["step"]) if "step" in source else source.get("value")
    for spec in schema.steps:
        for name in spec.get("inputs", ()):
            if name not in inputs and name in parent_inputs:
                inputs[name] = parent_inputs[name]
    return inputs


def child_failure(child_id: str, status: Status, error: str | None) -> str:
    """A SubWorkflow step's error when its child did not succeed."""
    text = f"child instance {child_id} {status}"
    return f"{text}: {error}" if error else text


def signal_refused(instance_id: str, status: Status) -> str:
    """Why a signal cannot reach an instance that has finished."""
    return f"instance {instance_id!r} is {status}; signals reach only RUNNING instances"


def parked_reason(
    scheduling: StepScheduling, open_items: int | None, child_id: str | None, timeout_at: str | None
) -> tuple[str, str]:
    """Why a step the broker completes itself is still QUEUED, for ``explain``."""
    if scheduling.wait_for is not None:
        until = f" (timeout at {timeout_at})" if timeout_at else ""
        return Reason.WAITING_FOR_SIGNAL, f"waiting for signal {scheduling.wait_for.signal!r}{until}"
    if scheduling.map is not None:
        return Reason.WAITING_FOR_ITEMS, f"waiting for {open_items or 0} item(s) to finish"
    return Reason.WAITING_FOR_CHILD, f"waiting for child instance {child_id}"
