"""What users read from ``MemoryBroker``: instances, their histories, workers.

A mixin over the broker's own state, under its lock: nothing here changes
anything, so the part of the broker that moves instances on stays apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UnknownInstance
from ..states import Status
from .base import InstanceEvent, InstanceInfo, InstancePage, WorkerInfo
from .memory_records import InstanceRecord, StepRecord, WorkerRecord


class MemoryReads:
    _lock: threading.RLock
    _instances: dict[str, InstanceRecord]
    _workers: dict[str, WorkerRecord]
    _running: set[tuple[str, str]]
    _load: Callable[[Any], Any]
    _is_alive: Callable[[WorkerRecord], bool]

    def _instance(self, instance_id: str) -> InstanceRecord:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise UnknownInstance(instance_id)
        return instance

    def get_instance(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            return self._instance(instance_id).info(self._load)

    def instances_page(self, page: InstancePage) -> list[InstanceInfo]:
        with self._lock:
            newest_first = list(reversed(self._instances.values()))
            if page.after is not None:
                self._instance(page.after)  # UnknownInstance if there is none
                newest_first = newest_first[[i.instance_id for i in newest_first].index(page.after) + 1 :]
            found = [
                i
                for i in newest_first
                if (page.status is None or i.status is page.status)
                and (page.workflow_id is None or i.workflow_id == page.workflow_id)
                and (page.since is None or i.created_at >= page.since)
                and (page.until is None or i.created_at < page.until)
                and (page.key is None or i.key == page.key)
            ]
            return [i.info(self._load) for i in found[page.offset : page.offset + page.limit]]

    def instance_events(self, instance_id: str) -> list[InstanceEvent]:
        with self._lock:
            return list(self._instance(instance_id).events)

    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        wanted = set(workflows) if workflows is not None else None
        with self._lock:
            return any(
                i.status is Status.RUNNING
                and (wanted is None or (i.workflow_id, i.version) in wanted)
                and any(self._moving(i, s) for s in i.steps.values())
                for i in self._instances.values()
            )

    @staticmethod
    def _moving(instance: InstanceRecord, step: StepRecord) -> bool:
        """Running or queued, other than waiting for a signal or for a child instance."""
        if step.state is Status.RUNNING:
            return True
        if step.state is not Status.QUEUED:
            return False
        scheduling = instance.plan.scheduling.of(step.name)
        own_row = step.name in instance.plan.nodes
        return not (own_row and (scheduling.wait_for is not None or scheduling.child is not None))

    def list_workers(self) -> list[WorkerInfo]:
        with self._lock:
            held: dict[str, list[str]] = {}
            for instance_id, name in sorted(self._running):
                holder = self._instances[instance_id].steps[name].worker_id
                if holder is not None:
                    held.setdefault(holder, []).append(f"{instance_id}/{name}")
            return [
                w.info(self._is_alive(w), held.get(w.worker_id, [])) for w in reversed(self._workers.values())
            ]
