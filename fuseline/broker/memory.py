"""``MemoryBroker``: the reference broker, in one process's memory.

It implements the whole contract with one lock, so it is the executable
statement of the semantics that ``SqlBroker`` must match (both pass the same
contract suite). It is what ``Workflow.run`` uses, and what tests and
single-process tools can use; nothing survives the process.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import (
    InvalidTransition,
    LeaseLost,
    ReportConflict,
    ResultNotSerializable,
    ResultTooLarge,
    SchemaConflict,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
    UnknownWorkflow,
)
from ..states import Status
from ..workflow.schema import WorkflowSchema
from . import codec
from .base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_RESULT_BYTES,
    Broker,
    InstanceEvent,
    InstanceInfo,
    Lease,
    StepAssignment,
    StepInfo,
    StepReport,
    WorkerInfo,
)
from .dag import Progress, StepView, WorkflowPlan
from .ids import new_id
from .reports import NO_ERROR_TEXT, WORKER_LOST, reported_state, why_not_held


def _utcnow() -> datetime:
    """Wall-clock time for display fields; leases use the monotonic clock."""
    return datetime.now(timezone.utc)


@dataclass
class _Step:
    name: str
    max_attempts: int
    state: Status = Status.PENDING
    attempt: int = 0
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    lease_deadline: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    finished_seq: int | None = None
    inputs_from: list[str] = field(default_factory=list)
    action: str | None = None
    #: The worker whose report set the final state (None: reaper, cancel or the rules).
    reported_by: str | None = None


@dataclass
class _Instance:
    instance_id: str
    workflow_id: str
    version: str
    plan: WorkflowPlan
    inputs: Any
    created_at: datetime
    steps: dict[str, _Step]
    status: Status = Status.RUNNING
    result: Any = None
    error: str | None = None
    finished_at: datetime | None = None
    events: list[InstanceEvent] = field(default_factory=list)


@dataclass
class _Worker:
    worker_id: str
    host: str
    pid: int
    keys: list[tuple[str, str]]
    started_at: datetime
    last_heartbeat: datetime
    stopped_at: datetime | None = None


class MemoryBroker(Broker):
    """The broker contract in memory.

    ``store_json=False`` keeps results as Python objects instead of JSON
    text (``Workflow.run`` uses it so in-process runs may pass any object
    between steps); the default validates and copies through JSON exactly as
    a database would.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        store_json: bool = True,
    ) -> None:
        self.lease_seconds = float(lease_seconds)
        self.max_result_bytes = max_result_bytes
        self.store_json = store_json
        self._lock = threading.RLock()
        self._work_queued = threading.Condition(self._lock)
        self._plans: dict[tuple[str, str], WorkflowPlan] = {}
        self._instances: dict[str, _Instance] = {}
        self._workers: dict[str, _Worker] = {}
        self._queues: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        self._running: set[tuple[str, str]] = set()
        self._seq = itertools.count(1)

    # -- definitions -------------------------------------------------------------------
    def _store_schema(self, schema: WorkflowSchema) -> WorkflowPlan:
        plan = self._plans.get(schema.key)
        if plan is None:
            plan = WorkflowPlan(schema)
            self._plans[schema.key] = plan
            self._queues.setdefault(schema.key, [])
        elif plan.hash != schema.hash:
            raise SchemaConflict(schema.workflow_id, schema.version)
        return plan

    # -- workers -----------------------------------------------------------------------
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        with self._lock:
            self._check_schemas(schemas)
            for schema in schemas:
                self._store_schema(schema)

    def _check_schemas(self, schemas: Sequence[WorkflowSchema]) -> None:
        """Refuse the whole batch before storing any of it."""
        for schema in schemas:
            known = self._plans.get(schema.key)
            if known is not None and known.hash != schema.hash:
                raise SchemaConflict(schema.workflow_id, schema.version)

    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
    ) -> str:
        with self._lock:
            self.register_workflows(schemas)
            now = _utcnow()
            worker = _Worker(
                worker_id=new_id(),
                host=host or socket.gethostname(),
                pid=pid if pid is not None else os.getpid(),
                keys=[s.key for s in schemas],
                started_at=now,
                last_heartbeat=now,
            )
            self._workers[worker.worker_id] = worker
            return worker.worker_id

    def _worker(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise UnknownWorker(worker_id)
        return worker

    def deregister_worker(self, worker_id: str) -> None:
        with self._lock:
            worker = self._worker(worker_id)
            worker.stopped_at = _utcnow()
            for instance_id, name in sorted(self._running):
                instance = self._instances[instance_id]
                step = instance.steps[name]
                if step.worker_id == worker_id:
                    self._release(instance, step)

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        with self._lock:
            self._worker(worker_id)
            for assignment in assignments:
                instance = self._instances.get(str(assignment.instance_id))
                step = instance.steps.get(assignment.step_name) if instance is not None else None
                if (
                    instance is None
                    or step is None
                    or step.state is not Status.RUNNING
                    or step.worker_id != worker_id
                    or step.attempt != assignment.attempt
                ):
                    continue
                self._release(instance, step)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        with self._lock:
            worker = self._worker(worker_id)
            worker.last_heartbeat = _utcnow()
            deadline = time.monotonic() + self.lease_seconds
            expires_at = worker.last_heartbeat + timedelta(seconds=self.lease_seconds)
            leases = []
            for instance_id, name in sorted(self._running):
                step = self._instances[instance_id].steps[name]
                if step.worker_id == worker_id:
                    step.lease_deadline = deadline
                    leases.append(Lease(instance_id, name, step.attempt, expires_at))
            return leases

    # -- claiming ----------------------------------------------------------------------
    def get_step(self, worker_id: str) -> StepAssignment | None:
        with self._lock:
            worker = self._worker(worker_id)
            self._reap_expired()
            while True:
                best: tuple[int, str, str] | None = None
                best_key = None
                for key in worker.keys:
                    queue = self._queues.get(key)
                    while queue:
                        _seq, instance_id, name = queue[0]
                        if self._instances[instance_id].steps[name].state is Status.QUEUED:
                            break
                        heapq.heappop(queue)  # stale entry: cancelled or already claimed
                    if queue and (best is None or queue[0] < best):
                        best, best_key = queue[0], key
                if best is None or best_key is None:
                    return None
                heapq.heappop(self._queues[best_key])
                _, instance_id, name = best
                instance = self._instances[instance_id]
                return self._claim(instance, instance.steps[name], worker_id)

    def _claim(self, instance: _Instance, step: _Step, worker_id: str) -> StepAssignment:
        now = _utcnow()
        step.state = Status.RUNNING
        step.attempt += 1
        step.worker_id = worker_id
        step.lease_deadline = time.monotonic() + self.lease_seconds
        step.started_at = now
        self._running.add((instance.instance_id, step.name))
        self._event(instance, "claimed", step, worker_id=worker_id)
        results = {n: self._load(instance.steps[n].result) for n in step.inputs_from}
        return StepAssignment(
            workflow_id=instance.workflow_id,
            instance_id=instance.instance_id,
            step_name=step.name,
            payload={"workflow_inputs": self._load(instance.inputs), "results": results},
            assigned_at=now,
            expires_at=now + timedelta(seconds=self.lease_seconds),
            attempt=step.attempt,
            version=instance.version,
        )

    def _reap_expired(self) -> None:
        now = time.monotonic()
        for instance_id, name in sorted(self._running):
            instance = self._instances[instance_id]
            step = instance.steps[name]
            if step.lease_deadline is not None and step.lease_deadline < now:
                if step.attempt < step.max_attempts:
                    self._requeue(instance, step, "lease_expired")
                else:
                    self._running.discard((instance_id, name))
                    self._event(instance, "lease_expired", step, worker_id=step.worker_id)
                    self._finish(instance, step, Status.FAILED, None, WORKER_LOST)

    def _release(self, instance: _Instance, step: _Step) -> None:
        """Give a held step back to the queue; a graceful release does not use up an attempt."""
        step.max_attempts += 1
        self._requeue(instance, step, "released")

    def _requeue(self, instance: _Instance, step: _Step, kind: str) -> None:
        self._running.discard((instance.instance_id, step.name))
        self._event(instance, kind, step, worker_id=step.worker_id)
        step.state = Status.QUEUED
        step.worker_id = None
        step.lease_deadline = None
        self._push(instance, step)

    def _push(self, instance: _Instance, step: _Step) -> None:
        key = (instance.workflow_id, instance.version)
        # first queued, first claimed (as SqlBroker orders by available_at)
        heapq.heappush(self._queues[key], (next(self._seq), instance.instance_id, step.name))
        self._work_queued.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        with self._lock:
            return self._work_queued.wait(timeout)

    # -- reporting ---------------------------------------------------------------------
    def report_step(self, worker_id: str, report: StepReport) -> None:
        with self._lock:
            self._worker(worker_id)
            instance = self._instances.get(report.instance_id)
            if instance is None:
                raise UnknownInstance(report.instance_id)
            if report.workflow_id != instance.workflow_id:
                raise UnknownWorkflow(report.workflow_id)
            step = instance.steps.get(report.step_name)
            if step is None:
                raise UnknownStep(report.instance_id, report.step_name)
            state = reported_state(report)
            holds = step.worker_id == worker_id and report.attempt in (None, step.attempt)
            if step.state is not Status.RUNNING or not holds:
                self._check_replay(instance, step, worker_id, report, state)
                return
            result, error = None, report.error
            if state is Status.SUCCEEDED:
                try:
                    result = self._store(step.name, report.result)
                except (ResultNotSerializable, ResultTooLarge) as exc:
                    state, error = Status.FAILED, str(exc)
            elif state is Status.FAILED and not error:
                error = NO_ERROR_TEXT
            self._running.discard((instance.instance_id, step.name))
            step.reported_by = worker_id
            self._finish(instance, step, state, result, error)

    def _check_replay(
        self, instance: _Instance, step: _Step, worker_id: str, report: StepReport, state: Status
    ) -> None:
        """A report the lease guard refused: an exact replay is fine, anything else is not."""
        same_holder = step.reported_by == worker_id and report.attempt in (None, step.attempt)
        if same_holder:
            accepted = self._load(step.result)
            if step.state is state and (state is not Status.SUCCEEDED or accepted == report.result):
                return
            raise ReportConflict(
                f"step {step.name!r} of instance {instance.instance_id!r} already ended "
                f"{step.state} for this attempt; a different report was refused"
            )
        raise LeaseLost(
            instance.instance_id,
            step.name,
            why_not_held(step.state, step.worker_id, step.attempt, worker_id, report),
        )

    def _finish(
        self, instance: _Instance, step: _Step, state: Status, result: Any, error: str | None
    ) -> None:
        """Record a final state for a running step and move the instance on."""
        step.state = state
        step.result = result
        step.error = error
        step.lease_deadline = None
        step.finished_at = _utcnow()
        step.finished_seq = next(self._seq)
        if state is Status.SUCCEEDED:
            step.action = instance.plan.chosen_action(step.name, self._load(result))
        self._event(instance, state.value.lower(), step, worker_id=step.worker_id, detail=error)
        views = self._views(instance)
        progress = instance.plan.settle(views, instance.plan.successors(step.name))
        self._apply(instance, progress)
        self._finalize_if_done(instance, views)

    def _views(self, instance: _Instance) -> dict[str, StepView]:
        return {name: StepView(s.state, s.action, s.finished_seq) for name, s in instance.steps.items()}

    def _apply(self, instance: _Instance, progress: Progress) -> None:
        now = _utcnow()
        for name, inputs_from in progress.queued.items():
            step = instance.steps[name]
            step.state = Status.QUEUED
            step.inputs_from = inputs_from
            self._push(instance, step)
            self._event(instance, "queued", step)
        for names, state in ((progress.skipped, Status.SKIPPED), (progress.cancelled, Status.CANCELLED)):
            for name in names:
                step = instance.steps[name]
                step.state = state
                step.finished_at = now
                step.finished_seq = next(self._seq)
                self._event(instance, state.value.lower(), step)

    def _finalize_if_done(self, instance: _Instance, views: Mapping[str, StepView]) -> None:
        outcome = instance.plan.outcome(views)
        if outcome is None or instance.status is not Status.RUNNING:
            return
        instance.status = outcome
        instance.finished_at = _utcnow()
        if outcome is Status.SUCCEEDED:
            values = [self._load(instance.steps[o].result) for o in instance.plan.outputs]
            instance.result = values[0] if len(values) == 1 else values
        else:
            failed = [s for s in instance.steps.values() if s.state is Status.FAILED]
            first = min(failed, key=lambda s: s.finished_seq or 0)
            instance.error = f"step {first.name!r} failed: {first.error}"
        self._event(instance, f"instance_{outcome.value.lower()}", None, detail=instance.error)

    # -- instances ---------------------------------------------------------------------
    def dispatch_workflow(self, schema: WorkflowSchema, inputs: Mapping[str, Any] | None = None) -> str:
        inputs = inputs if inputs is not None else {}
        encoded = codec.encode_inputs(inputs) if self.store_json else codec.check_inputs(inputs)
        with self._lock:
            plan = self._store_schema(schema)
            instance = _Instance(
                instance_id=new_id(),
                workflow_id=schema.workflow_id,
                version=schema.version,
                plan=plan,
                inputs=encoded,
                created_at=_utcnow(),
                steps={name: _Step(name, plan.nodes[name].max_attempts) for name in plan.order},
            )
            self._instances[instance.instance_id] = instance
            self._event(instance, "dispatched", None)
            views = self._views(instance)
            self._apply(instance, plan.settle(views, plan.order))
            return instance.instance_id

    def _instance(self, instance_id: str) -> _Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise UnknownInstance(instance_id)
        return instance

    def get_instance(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            return self._info(self._instance(instance_id))

    def list_instances(
        self,
        status: Status | str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[InstanceInfo]:
        wanted = Status(status) if status is not None else None
        with self._lock:
            found = [
                i
                for i in reversed(self._instances.values())
                if (wanted is None or i.status is wanted)
                and (workflow_id is None or i.workflow_id == workflow_id)
            ]
            return [self._info(i) for i in found[offset : offset + limit]]

    def instance_events(self, instance_id: str) -> list[InstanceEvent]:
        with self._lock:
            return list(self._instance(instance_id).events)

    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        wanted = set(workflows) if workflows is not None else None
        with self._lock:
            return any(
                i.status is Status.RUNNING and (wanted is None or (i.workflow_id, i.version) in wanted)
                for i in self._instances.values()
            )

    def list_workers(self) -> list[WorkerInfo]:
        with self._lock:
            stale_after = timedelta(seconds=2 * self.lease_seconds)
            now = _utcnow()
            infos = []
            for w in reversed(self._workers.values()):
                current = [
                    f"{iid}/{name}"
                    for iid, name in sorted(self._running)
                    if self._instances[iid].steps[name].worker_id == w.worker_id
                ]
                infos.append(
                    WorkerInfo(
                        worker_id=w.worker_id,
                        host=w.host,
                        pid=w.pid,
                        workflows=[f"{k[0]}@{k[1]}" for k in w.keys],
                        started_at=w.started_at,
                        last_heartbeat=w.last_heartbeat,
                        stopped_at=w.stopped_at,
                        alive=w.stopped_at is None and now - w.last_heartbeat <= stale_after,
                        current_steps=current,
                    )
                )
            return infos

    def cancel_instance(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            instance = self._instance(instance_id)
            if instance.status is not Status.RUNNING:
                raise InvalidTransition(
                    f"instance {instance_id!r} is {instance.status}; only RUNNING instances can be cancelled"
                )
            now = _utcnow()
            for step in instance.steps.values():
                if not step.state.is_final:
                    self._running.discard((instance_id, step.name))
                    step.state = Status.CANCELLED
                    step.lease_deadline = None
                    step.finished_at = now
                    step.finished_seq = next(self._seq)
                    self._event(instance, "cancelled", step)
            instance.status = Status.CANCELLED
            instance.finished_at = now
            self._event(instance, "instance_cancelled", None)
            return self._info(instance)

    def retry_instance(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            instance = self._instance(instance_id)
            if instance.status not in (Status.FAILED, Status.CANCELLED):
                raise InvalidTransition(
                    f"instance {instance_id!r} is {instance.status}; only FAILED or CANCELLED "
                    "instances can be retried"
                )
            reset = []
            for step in instance.steps.values():
                if step.state in (Status.FAILED, Status.CANCELLED):
                    step.state = Status.PENDING
                    # attempts only grow (reports are fenced by them); the budget starts afresh
                    step.max_attempts = step.attempt + instance.plan.nodes[step.name].max_attempts
                    step.result = step.error = step.worker_id = step.reported_by = None
                    step.started_at = step.finished_at = step.finished_seq = None
                    step.action = None
                    step.inputs_from = []
                    reset.append(step.name)
            instance.status = Status.RUNNING
            instance.result = instance.error = instance.finished_at = None
            self._event(instance, "retried", None)
            views = self._views(instance)
            self._apply(instance, instance.plan.settle(views, reset))
            self._finalize_if_done(instance, views)
            return self._info(instance)

    # -- helpers -------------------------------------------------------------------------
    def _store(self, step_name: str, value: Any) -> Any:
        if not self.store_json:
            return value
        return codec.encode_result(step_name, value, self.max_result_bytes)

    def _load(self, stored: Any) -> Any:
        if not self.store_json or stored is None:
            return stored
        return codec.decode(stored)

    def _event(
        self,
        instance: _Instance,
        kind: str,
        step: _Step | None,
        *,
        worker_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        instance.events.append(
            InstanceEvent(
                at=_utcnow(),
                kind=kind,
                step_name=step.name if step else None,
                attempt=step.attempt if step else None,
                worker_id=worker_id,
                detail=detail,
            )
        )

    def _info(self, instance: _Instance) -> InstanceInfo:
        steps = [
            StepInfo(
                name=s.name,
                state=s.state,
                attempt=s.attempt,
                result=self._load(s.result),
                error=s.error,
                worker_id=s.worker_id,
                started_at=s.started_at,
                finished_at=s.finished_at,
                max_attempts=s.max_attempts,
            )
            for s in instance.steps.values()
        ]
        return InstanceInfo(
            instance_id=instance.instance_id,
            workflow_id=instance.workflow_id,
            version=instance.version,
            status=instance.status,
            inputs=self._load(instance.inputs),
            result=instance.result,
            error=instance.error,
            created_at=instance.created_at,
            finished_at=instance.finished_at,
            steps=steps,
        )
