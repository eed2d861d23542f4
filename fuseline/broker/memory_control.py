"""``MemoryBroker``'s operator actions on whole instances: cancel and retry.

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

    def retry_instance(self, instance_id: str) -> InstanceInfo:
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
