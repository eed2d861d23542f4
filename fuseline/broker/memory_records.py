"""What ``MemoryBroker`` keeps: instances, steps, workers, and the queue of ready steps."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..states import Status
from .base import InstanceEvent, InstanceInfo, StepInfo, WorkerInfo
from .dag import StepView, WorkflowPlan


@dataclass
class StepRecord:
    name: str
    max_attempts: int
    state: Status = Status.PENDING
    #: Claims so far; only grows (reports are fenced by it).
    attempt: int = 0
    #: Claims given back unstarted: the step has run ``attempt - released`` times.
    released: int = 0
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    #: ``time.monotonic()`` when the lease runs out (None: not leased).
    lease_deadline: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    finished_seq: int | None = None
    inputs_from: list[str] = field(default_factory=list)
    action: str | None = None
    #: The worker whose report set the final state (None: reaper, cancel or the rules).
    reported_by: str | None = None

    @property
    def executions(self) -> int:
        return self.attempt - self.released

    def info(self, load: Callable[[Any], Any]) -> StepInfo:
        """As users see it: ``attempt`` counts executions (claims given back are not)."""
        return StepInfo(
            self.name, self.state, self.executions, load(self.result), self.error, self.worker_id,
            self.started_at, self.finished_at, self.max_attempts,
        )  # fmt: skip


@dataclass
class InstanceRecord:
    instance_id: str
    workflow_id: str
    version: str
    plan: WorkflowPlan
    inputs: Any
    created_at: datetime
    steps: dict[str, StepRecord]
    status: Status = Status.RUNNING
    result: Any = None
    error: str | None = None
    finished_at: datetime | None = None
    events: list[InstanceEvent] = field(default_factory=list)

    def views(self) -> dict[str, StepView]:
        """What the DAG rules read."""
        return {name: StepView(s.state, s.action, s.finished_seq) for name, s in self.steps.items()}

    def info(self, load: Callable[[Any], Any]) -> InstanceInfo:
        return InstanceInfo(
            instance_id=self.instance_id,
            workflow_id=self.workflow_id,
            version=self.version,
            status=self.status,
            inputs=load(self.inputs),
            result=self.result,
            error=self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
            steps=[s.info(load) for s in self.steps.values()],
        )


@dataclass
class WorkerRecord:
    worker_id: str
    host: str
    pid: int
    keys: list[tuple[str, str]]
    started_at: datetime
    last_heartbeat: datetime
    #: ``time.monotonic()`` of its last heartbeat or claim: it is dead 2 leases after.
    last_seen: float
    stopped_at: datetime | None = None

    def info(self, alive: bool, current_steps: list[str]) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            workflows=[f"{k[0]}@{k[1]}" for k in self.keys],
            started_at=self.started_at,
            last_heartbeat=self.last_heartbeat,
            stopped_at=self.stopped_at,
            alive=alive,
            current_steps=current_steps,
        )


class ReadyQueue:
    """Ready steps per (workflow_id, version), first queued first claimed (as SqlBroker orders by
    available_at). Entries of steps that are no longer QUEUED (claimed, cancelled) are skipped."""

    def __init__(self) -> None:
        self._heaps: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        self._seq = itertools.count(1)

    def push(self, key: tuple[str, str], instance_id: str, step_name: str) -> None:
        heapq.heappush(self._heaps.setdefault(key, []), (next(self._seq), instance_id, step_name))

    def pop_first(
        self, keys: Iterable[tuple[str, str]], is_queued: Callable[[str, str], bool]
    ) -> tuple[str, str] | None:
        """The (instance, step) queued first among these workflows, taken off the queue."""
        best: tuple[int, str, str] | None = None
        best_key = None
        for key in keys:
            heap = self._heaps.get(key)
            while heap and not is_queued(heap[0][1], heap[0][2]):
                heapq.heappop(heap)  # stale entry: cancelled or already claimed
            if heap and (best is None or heap[0] < best):
                best, best_key = heap[0], key
        if best is None or best_key is None:
            return None
        heapq.heappop(self._heaps[best_key])
        return best[1], best[2]
