"""Repairs an operator makes to one instance: retry from a step, skip a step, set a step's output.

Every broker plans a repair here, from the instance's stored states alone,
with the same DAG rules that move instances (:mod:`.dag`): which steps it
resets or ends, and what the rules then decide. ``--dry-run`` prints that
plan; applying it writes the same changes and lets the rules run for real,
so a dry run shows exactly what a repair does. A repair never lowers a
step's attempt number, so a worker still holding an old attempt is refused
when it reports (fencing holds across repairs).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..errors import InvalidTransition, UnknownStep
from ..states import BROKEN_STATES, Status
from .dag import StepView, WorkflowPlan
from .scheduling import item_base

#: States a step may be skipped or given an output from (not yet done, or done badly).
REPAIRABLE_STATES = frozenset(
    {Status.PENDING, Status.QUEUED, Status.RUNNING, Status.FAILED, Status.CANCELLED}
)


class RepairAction(str, Enum):
    RETRY_FROM = "retry --from"
    SKIP = "skip"
    SET_OUTPUT = "set-output"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StepChange:
    step: str
    before: Status
    after: Status


@dataclass(frozen=True)
class RepairPlan:
    """What a repair changes: the instance's status and each step it moves."""

    action: RepairAction
    instance_id: str
    step: str
    operator: str
    status_before: Status
    status_after: Status
    changes: tuple[StepChange, ...]
    #: Steps whose rows go back to PENDING (attempt kept), the repaired step included for a retry.
    reset: tuple[str, ...] = ()

    @property
    def touched(self) -> list[str]:
        return [c.step for c in self.changes]

    def describe(self) -> str:
        """The history line: the action, who, and the steps touched."""
        return f"{self.action} {self.step!r} by {self.operator}: {', '.join(self.touched) or '-'}"


def operator_name(given: str | None = None) -> str:
    """Who repairs: the name given (a token's, later), else the OS user."""
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's random uid)
        return "unknown"


def descendants(plan: WorkflowPlan, step: str) -> list[str]:
    """Every step downstream of ``step``, in the workflow's order."""
    found: set[str] = set()
    frontier = [step]
    while frontier:
        for successor in plan.successors(frontier.pop()):
            if successor not in found:
                found.add(successor)
                frontier.append(successor)
    return [n for n in plan.order if n in found]


def plan_retry_from(
    plan: WorkflowPlan,
    instance_id: str,
    status: Status,
    views: Mapping[str, StepView],
    step: str,
    operator: str,
) -> RepairPlan:
    """Re-run ``step`` and everything downstream of it, on a finished instance."""
    if status is Status.RUNNING:
        raise InvalidTransition(
            f"instance {instance_id!r} is RUNNING; retry --from applies to finished instances "
            "(cancel it first)"
        )
    _check_step(plan, instance_id, step)
    probe = _nodes(plan, views)
    touched = [step, *descendants(plan, step)]
    for name in touched:
        probe[name] = StepView(Status.PENDING)
    progress = plan.settle(probe, [step])
    if step not in progress.queued:
        blocked = [p for p in plan.nodes[step].inbound if probe[p].state is not Status.SUCCEEDED]
        raise InvalidTransition(
            f"step {step!r} cannot run again: its dependencies {blocked} did not succeed; "
            "retry from an earlier step"
        )
    return _plan(RepairAction.RETRY_FROM, instance_id, step, operator, status, views, probe, plan, touched)


def plan_finish(
    plan: WorkflowPlan,
    instance_id: str,
    status: Status,
    views: Mapping[str, StepView],
    step: str,
    state: Status,
    action: str | None,
    operator: str,
) -> RepairPlan:
    """End ``step`` as ``state`` (SKIPPED for a skip, SUCCEEDED for set-output) and let the
    rules move on; a finished instance runs again, the steps a failure cancelled downstream
    of ``step`` with it."""
    kind = RepairAction.SKIP if state is Status.SKIPPED else RepairAction.SET_OUTPUT
    if status is Status.SUCCEEDED:
        raise InvalidTransition(
            f"instance {instance_id!r} is SUCCEEDED; use retry --from to run a step again"
        )
    current = views[step].state if step in views else None
    if step not in plan.nodes:
        if current is None or item_base(step) not in plan.nodes:
            raise UnknownStep(instance_id, step)
        if status is not Status.RUNNING:
            raise InvalidTransition(
                f"instance {instance_id!r} is {status}; retry --from the Map {item_base(step)!r} instead "
                "of repairing one of its items"
            )
        return _item_plan(kind, instance_id, step, operator, status, current, state)
    if current not in REPAIRABLE_STATES:
        raise InvalidTransition(
            f"step {step!r} of instance {instance_id!r} is {current}; only a step not yet done, "
            "FAILED or CANCELLED can be skipped or given an output"
        )
    if plan.scheduling.steps[step].map is not None and status is Status.RUNNING and current is Status.QUEUED:
        raise InvalidTransition(f"step {step!r} is a Map whose items are running; skip or set its items")
    probe = _nodes(plan, views)
    reset: list[str] = []
    if status is not Status.RUNNING:
        reset = [n for n in descendants(plan, step) if probe[n].state is Status.CANCELLED]
        for name in reset:
            probe[name] = StepView(Status.PENDING)
    probe[step] = StepView(state, action, _LAST)
    plan.settle(probe, plan.successors(step))
    touched = [step, *reset]
    return _plan(kind, instance_id, step, operator, status, views, probe, plan, touched, tuple(reset))


#: Sorts after every real finish time: the repaired step finished last.
class _Last:
    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return True


_LAST = _Last()


def _check_step(plan: WorkflowPlan, instance_id: str, step: str) -> None:
    if step not in plan.nodes:
        raise UnknownStep(instance_id, step)


def _nodes(plan: WorkflowPlan, views: Mapping[str, StepView]) -> dict[str, StepView]:
    """A copy of the views of the workflow's own steps (Map items are not the rules' business)."""
    return {n: StepView(v.state, v.action, v.finished) for n, v in views.items() if n in plan.nodes}


def _plan(
    action: RepairAction,
    instance_id: str,
    step: str,
    operator: str,
    status: Status,
    views: Mapping[str, StepView],
    probe: Mapping[str, StepView],
    plan: WorkflowPlan,
    touched: list[str],
    reset: tuple[str, ...] | None = None,
) -> RepairPlan:
    changed = [n for n in plan.order if n in touched or probe[n].state is not views[n].state]
    after = plan.outcome(probe) or Status.RUNNING
    return RepairPlan(
        action,
        instance_id,
        step,
        operator,
        status,
        after,
        tuple(StepChange(n, views[n].state, probe[n].state) for n in changed),
        tuple(touched) if reset is None else reset,
    )


def _item_plan(
    kind: RepairAction,
    instance_id: str,
    item: str,
    operator: str,
    status: Status,
    current: Status | None,
    state: Status,
) -> RepairPlan:
    if current not in REPAIRABLE_STATES - BROKEN_STATES:
        raise InvalidTransition(
            f"item {item!r} of instance {instance_id!r} is {current}; only items not yet done can be "
            "skipped or given an output"
        )
    assert current is not None
    return RepairPlan(kind, instance_id, item, operator, status, status, (StepChange(item, current, state),))
