"""``MemoryBroker``'s operator actions: cancel, retry (whole, or from a step), skip a step, set
a step's output (planned by :mod:`.repairs`).

A mixin over the broker's records, called without the lock held (each takes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidTransition
from ..states import BROKEN_STATES, EventKind, Status
from .base import InstanceInfo
from .dag import Progress
from .memory_records import InstanceRecord, utcnow
from .repairs import RepairAction, RepairPlan, operator_name, plan_finish, plan_retry_from


class MemoryControl:
    """Cancel and retry, on the records of a ``MemoryBroker``."""

    _lock: Any
    _running: set[tuple[str, str]]
    _finished_seq: Any
    _instance: Callable[[str], InstanceRecord]
    _event: Callable[..., None]
    _load: Callable[[Any], Any]
    _apply: Callable[[InstanceRecord, Progress], None]
    _finalize_if_done: Callable[..., None]
    _forget_items: Callable[[InstanceRecord, str], None]
    _cancel_children: Callable[[InstanceRecord], None]
    _child_ended: Callable[[InstanceRecord], None]
    _finish: Callable[..., None]
    _store: Callable[[str, Any], Any]

    def cancel_instance(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            instance = self._instance(instance_id)
            if instance.status is not Status.RUNNING:
                raise InvalidTransition(
                    f"instance {instance_id!r} is {instance.status}; only RUNNING instances can be cancelled"
                )
            now = utcnow()
            for step in instance.steps.values():
                if not step.state.is_final:
                    self._running.discard((instance_id, step.name))
                    step.end(Status.CANCELLED, now, next(self._finished_seq))
                    self._event(instance, EventKind.CANCELLED, step)
            instance.status = Status.CANCELLED
            instance.finished_at = now
            self._event(instance, EventKind.INSTANCE_CANCELLED, None)
            self._cancel_children(instance)
            self._child_ended(instance)
            return instance.info(self._load)

    def retry_instance(
        self, instance_id: str, from_step: str | None = None, *, operator: str | None = None
    ) -> InstanceInfo:
        if from_step is not None:
            return self._repair(instance_id, RepairAction.RETRY_FROM, from_step, None, operator, apply=True)[
                1
            ]
        with self._lock:
            instance = self._instance(instance_id)
            if instance.status not in (Status.FAILED, Status.CANCELLED):
                raise InvalidTransition(
                    f"instance {instance_id!r} is {instance.status}; only FAILED or CANCELLED "
                    "instances can be retried"
                )
            reset = []
            for name in [n for n in instance.plan.order if instance.steps[n].state in BROKEN_STATES]:
                self._forget_items(instance, name)  # a map fans out afresh; a SubWorkflow starts a new child
            for step in instance.steps.values():
                if step.state in BROKEN_STATES:
                    step.reset(instance.plan.nodes[step.name].max_attempts)
                    reset.append(step.name)
            instance.status = Status.RUNNING
            instance.result = instance.error = instance.finished_at = None
            self._event(instance, EventKind.RETRIED, None)
            views = instance.views()
            self._apply(instance, instance.plan.settle(views, reset))
            self._finalize_if_done(instance, views)
            return instance.info(self._load)

    def skip_step(self, instance_id: str, step: str, *, operator: str | None = None) -> InstanceInfo:
        return self._repair(instance_id, RepairAction.SKIP, step, None, operator, apply=True)[1]

    def set_step_output(
        self, instance_id: str, step: str, result: Any, *, operator: str | None = None
    ) -> InstanceInfo:
        return self._repair(instance_id, RepairAction.SET_OUTPUT, step, result, operator, apply=True)[1]

    def plan_repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any = None,
        *,
        operator: str | None = None,
    ) -> RepairPlan:
        return self._repair(instance_id, RepairAction(action), step, result, operator, apply=False)[0]

    def _repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any,
        operator: str | None,
        *,
        apply: bool,
    ) -> tuple[RepairPlan, InstanceInfo]:
        who = operator_name(operator)
        with self._lock:
            instance = self._instance(instance_id)
            plan, views = instance.plan, instance.views()
            if action is RepairAction.RETRY_FROM:
                repair = plan_retry_from(plan, instance_id, instance.status, views, step, who)
            else:
                state = Status.SKIPPED if action is RepairAction.SKIP else Status.SUCCEEDED
                stored = self._store(step, result) if state is Status.SUCCEEDED else None
                chosen = plan.chosen_action(step, result) if state is Status.SUCCEEDED else None
                repair = plan_finish(plan, instance_id, instance.status, views, step, state, chosen, who)
            if not apply:
                return repair, instance.info(self._load)
            self._reset(instance, repair.reset)
            if instance.status is not Status.RUNNING:
                instance.status = Status.RUNNING
                instance.result = instance.error = instance.finished_at = None
            record = instance.steps[step]
            self._event(instance, EventKind.REPAIRED, record, detail=repair.describe())
            if action is RepairAction.RETRY_FROM:
                views = instance.views()
                self._apply(instance, plan.settle(views, [step]))
                self._finalize_if_done(instance, views)
            else:
                self._running.discard((instance_id, step))
                record.worker_id = None  # the holder's late report is refused
                self._finish(instance, record, state, stored, None)
            return repair, instance.info(self._load)

    def _reset(self, instance: InstanceRecord, names: tuple[str, ...]) -> None:
        """Back to PENDING (attempts kept): a Map fans out afresh, a SubWorkflow starts a new child."""
        for name in names:
            self._forget_items(instance, name)
            record = instance.steps[name]
            record.reset(instance.plan.nodes[name].max_attempts)
            record.child_id = None
