"""What ``MemoryBroker`` keeps: instances, steps and workers, and how each changes shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import LeaseLost, ReportConflict, SchemaConflict
from ..states import EventKind, Status
from ..workflow.schema import WorkflowSchema
from ..workflow.step import check_queue_name
from .base import InstanceEvent, InstanceInfo, StepInfo, StepReport, WorkerInfo
from .dag import StepView, WorkflowPlan
from .memory_queue import Entry
from .reports import why_not_held


def utcnow() -> datetime:
    """Wall-clock time for the timestamps MemoryBroker shows; its leases use the monotonic clock."""
    return datetime.now(timezone.utc)


@dataclass
class StepRecord:
    name: str
    max_attempts: int
    #: Creation order across the broker: the last tie-break of the queue order.
    created: int = 0
    state: Status = Status.PENDING
    #: Claims so far; only grows (reports are fenced by it).
    attempt: int = 0
    #: Claims given back unstarted: the step has run ``attempt - released`` times.
    released: int = 0
    #: Failures a RetryPolicy turned into another try (since the last ``retry_instance``).
    retries: int = 0
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    #: ``time.monotonic()`` when the lease runs out (None: not leased).
    lease_deadline: float | None = None
    #: ``time.monotonic()`` from which a QUEUED step may be claimed (its place in line).
    available_at: float = 0.0
    #: Why ``available_at`` was set in the future: ``Reason.DELAYED`` or ``Reason.RETRY_SCHEDULED``.
    held_for: str | None = None
    #: Which queue entry is current: entries made before the step was last queued are stale.
    token: int = 0
    #: (worker, attempt) of the failure last turned into a retry: a replay of it changes nothing.
    retried: tuple[str, int] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    finished_seq: int | None = None
    inputs_from: list[str] = field(default_factory=list)
    action: str | None = None
    #: The worker whose report set the final state (None: reaper, cancel or the rules).
    reported_by: str | None = None
    #: A Map item's value (as stored); the item is passed as the step's ``item`` parameter.
    item: Any = None
    #: A SubWorkflow step: the child instance it started.
    child_id: str | None = None

    @property
    def executions(self) -> int:
        return self.attempt - self.released

    @property
    def may_be_lost_again(self) -> bool:
        """Whether a lost lease queues it again: executions that did not end in a policy retry
        (lost workers, and the one in hand) stay below ``max_attempts``."""
        return self.executions - self.retries < self.max_attempts

    def held_by(self, worker_id: str, attempt: int | None) -> bool:
        """Whether this worker holds the lease of this attempt (None: whichever it holds)."""
        held = self.state is Status.RUNNING and self.worker_id == worker_id
        return held and attempt in (None, self.attempt)

    def enqueue(
        self, instance_id: str, priority: int, available_at: float, held_for: str | None, token: int
    ) -> Entry:
        """QUEUED, claimable from ``available_at``; returns its entry in the queue (older ones go stale)."""
        self.state = Status.QUEUED
        self.available_at, self.held_for, self.token = available_at, held_for, token
        return Entry(-priority, available_at, self.created, instance_id, self.name, token)

    def end(self, state: Status, finished_at: datetime, seq: int) -> None:
        """Move to a final state the rules or a cancel decided (no worker reported it)."""
        self.state = state
        self.lease_deadline = None
        self.finished_at = finished_at
        self.finished_seq = seq

    def reset(self, max_attempts: int) -> None:
        """PENDING again for ``retry_instance``: attempts only grow (reports are fenced by them),
        so both budgets start afresh from here."""
        self.state = Status.PENDING
        self.max_attempts = self.executions + max_attempts
        self.retries = 0
        self.result = self.error = self.worker_id = self.reported_by = self.retried = None
        self.started_at = self.finished_at = self.finished_seq = None
        self.action = self.held_for = None
        self.inputs_from = []

    def check_replay(
        self, instance_id: str, worker_id: str, report: StepReport, state: Status, accepted: Any
    ) -> None:
        """A report the lease guard refused: an exact replay of the one this step took (its result
        ``accepted``, or the failure that scheduled a retry) is fine, anything else is not."""
        attempt = report.attempt
        retried = self.retried or (None, None)
        if state is Status.FAILED and retried[0] == worker_id and attempt in (None, retried[1]):
            return  # the failure that scheduled a retry, sent again
        if self.reported_by == worker_id and attempt in (None, self.attempt):
            if self.state is state and (state is not Status.SUCCEEDED or accepted == report.result):
                return
            raise ReportConflict(
                f"step {self.name!r} of instance {instance_id!r} already ended "
                f"{self.state} for this attempt; a different report was refused"
            )
        raise LeaseLost(
            instance_id, self.name, why_not_held(self.state, self.worker_id, self.attempt, worker_id, report)
        )

    def info(self, load: Callable[[Any], Any]) -> StepInfo:
        """As users see it: ``attempt`` counts executions (claims given back are not)."""
        return StepInfo(
            self.name, self.state, self.executions, load(self.result), self.error, self.worker_id,
            self.started_at, self.finished_at, self.max_attempts, self.retries, self.child_id,
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
    key: str | None = None
    priority: int = 0
    #: Set by its first claim: from then until it finishes it counts against a workflow limit.
    claimed: bool = False
    status: Status = Status.RUNNING
    result: Any = None
    error: str | None = None
    finished_at: datetime | None = None
    events: list[InstanceEvent] = field(default_factory=list)
    #: A child instance: (parent instance, its SubWorkflow step).
    parent: tuple[str, str] | None = None
    #: Signals received: name -> data (as stored), kept until a WaitFor takes them.
    signals: dict[str, Any] = field(default_factory=dict)
    #: Map step -> its items not yet final (the last one completes the map).
    open_items: dict[str, int] = field(default_factory=dict)
    #: Input name -> its value as canonical JSON, for limits keyed by that input.
    _limit_values: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def in_progress(self) -> bool:
        return self.claimed and self.status is Status.RUNNING

    def limit_value(self, key: str, load: Callable[[Any], Any]) -> str:
        """The value of input ``key`` as canonical JSON: limits compare values as JSON."""
        if key not in self._limit_values:
            value = (load(self.inputs) or {}).get(key)
            self._limit_values[key] = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
        return self._limit_values[key]

    def log(
        self,
        kind: EventKind,
        step: StepRecord | None,
        at: datetime,
        worker_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one line to its history (the claim number of ``step`` as the attempt)."""
        attempt = step.attempt if step else None
        self.events.append(
            InstanceEvent(at, kind.value, step.name if step else None, attempt, worker_id, detail)
        )

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
            key=self.key,
            priority=self.priority,
            parent_instance_id=self.parent[0] if self.parent else None,
            parent_step=self.parent[1] if self.parent else None,
        )


def served_queues(queues: Sequence[str] | None) -> frozenset[str] | None:
    """The queues a worker registers for, checked (None: every queue of its workflows)."""
    if queues is None:
        return None
    if isinstance(queues, str):
        queues = [queues]
    return frozenset(check_queue_name(q) for q in queues)


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
    #: The queues it claims from (None: every queue of its workflows).
    queues: frozenset[str] | None = None
    stopped_at: datetime | None = None

    def serves(self, key: tuple[str, str], queue: str) -> bool:
        """Whether it claims steps of this (workflow_id, version) waiting in ``queue``."""
        return key in self.keys and (self.queues is None or queue in self.queues)

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


class PlanStore:
    """Workflow plans by (workflow_id, version); a changed schema under a known one is refused."""

    def __init__(self) -> None:
        self._plans: dict[tuple[str, str], WorkflowPlan] = {}

    def store(self, schema: WorkflowSchema) -> WorkflowPlan:
        plan = self._plans.get(schema.key)
        if plan is None:
            plan = self._plans[schema.key] = WorkflowPlan(schema)
        elif plan.hash != schema.hash:
            raise SchemaConflict(schema.workflow_id, schema.version)
        return plan

    def store_all(self, schemas: Sequence[WorkflowSchema]) -> None:
        """Store every schema, or (SchemaConflict) none of them."""
        for schema in schemas:
            known = self._plans.get(schema.key)
            if known is not None and known.hash != schema.hash:
                raise SchemaConflict(schema.workflow_id, schema.version)
        for schema in schemas:
            self.store(schema)
