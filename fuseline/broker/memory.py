"""``MemoryBroker``: the reference broker, in one process's memory.

It implements the whole contract with one lock, so it is the executable
statement of the semantics that ``SqlBroker`` must match (both pass the same
contract suite). It is what ``Workflow.run`` uses, and what tests and
single-process tools can use; nothing survives the process. Leases and
liveness use ``time.monotonic()``; wall-clock time only fills the
timestamps users see.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
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
    WorkerExpired,
)
from ..states import BROKEN_STATES, EventKind, Status
from ..workflow.schema import WorkflowSchema
from . import codec
from .base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_RESULT_BYTES,
    Broker,
    InstanceEvent,
    InstanceInfo,
    InstancePage,
    Lease,
    StepAssignment,
    StepReport,
    WorkerInfo,
)
from .dag import Progress, StepView, WorkflowPlan
from .ids import new_id
from .memory_records import InstanceRecord, ReadyQueue, StepRecord, WorkerRecord
from .reports import NO_ERROR_TEXT, WORKER_LOST, reported_state, why_not_held


def _utcnow() -> datetime:
    """Wall-clock time for display fields; leases use the monotonic clock."""
    return datetime.now(timezone.utc)


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
        self._instances: dict[str, InstanceRecord] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._ready = ReadyQueue()
        self._running: set[tuple[str, str]] = set()
        self._finished_seq = itertools.count(1)

    # -- definitions -------------------------------------------------------------------
    def _store_schema(self, schema: WorkflowSchema) -> WorkflowPlan:
        plan = self._plans.get(schema.key)
        if plan is None:
            plan = self._plans[schema.key] = WorkflowPlan(schema)
        elif plan.hash != schema.hash:
            raise SchemaConflict(schema.workflow_id, schema.version)
        return plan

    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        with self._lock:
            for schema in schemas:  # refuse the whole batch before storing any of it
                known = self._plans.get(schema.key)
                if known is not None and known.hash != schema.hash:
                    raise SchemaConflict(schema.workflow_id, schema.version)
            for schema in schemas:
                self._store_schema(schema)

    # -- workers -----------------------------------------------------------------------
    def register_worker(
        self, schemas: Sequence[WorkflowSchema], *, host: str | None = None, pid: int | None = None
    ) -> str:
        with self._lock:
            self.register_workflows(schemas)
            now = _utcnow()
            worker = WorkerRecord(
                worker_id=new_id(),
                host=host or socket.gethostname(),
                pid=pid if pid is not None else os.getpid(),
                keys=[s.key for s in schemas],
                started_at=now,
                last_heartbeat=now,
                last_seen=time.monotonic(),
            )
            self._workers[worker.worker_id] = worker
            return worker.worker_id

    def _worker(self, worker_id: str) -> WorkerRecord:
        if worker_id not in self._workers:
            raise UnknownWorker(worker_id)
        return self._workers[worker_id]

    def _is_alive(self, worker: WorkerRecord) -> bool:
        """Not stopped, and seen (heartbeat or claim) within twice the lease."""
        return worker.stopped_at is None and time.monotonic() - worker.last_seen <= 2 * self.lease_seconds

    def _living(self, worker_id: str) -> WorkerRecord:
        """The worker, if it may claim and beat: a dead one must register again."""
        worker = self._worker(worker_id)
        if worker.stopped_at is not None:
            raise WorkerExpired(worker_id, "it was stopped")
        if not self._is_alive(worker):
            raise WorkerExpired(worker_id)
        worker.last_seen = time.monotonic()
        worker.last_heartbeat = _utcnow()
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
                    instance is not None
                    and step is not None
                    and step.state is Status.RUNNING
                    and step.worker_id == worker_id
                    and step.attempt == assignment.attempt
                ):
                    self._release(instance, step)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        with self._lock:
            self._living(worker_id)
            deadline = time.monotonic() + self.lease_seconds
            now = _utcnow()
            expires_at = now + timedelta(seconds=self.lease_seconds)
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
            worker = self._living(worker_id)
            self._reap_expired()
            taken = self._ready.pop_first(worker.keys, self._is_queued)
            if taken is None:
                return None
            instance = self._instances[taken[0]]
            return self._claim(instance, instance.steps[taken[1]], worker_id)

    def _is_queued(self, instance_id: str, step_name: str) -> bool:
        return self._instances[instance_id].steps[step_name].state is Status.QUEUED

    def _claim(self, instance: InstanceRecord, step: StepRecord, worker_id: str) -> StepAssignment:
        now = _utcnow()
        step.state = Status.RUNNING
        step.attempt += 1
        step.worker_id = worker_id
        step.lease_deadline = time.monotonic() + self.lease_seconds
        step.started_at = now
        self._running.add((instance.instance_id, step.name))
        self._event(instance, EventKind.CLAIMED, step, worker_id=worker_id)
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
                if step.executions < step.max_attempts:
                    self._requeue(instance, step, EventKind.LEASE_EXPIRED)
                else:
                    self._running.discard((instance_id, name))
                    self._event(instance, EventKind.LEASE_EXPIRED, step, worker_id=step.worker_id)
                    self._finish(instance, step, Status.FAILED, None, WORKER_LOST)

    def _release(self, instance: InstanceRecord, step: StepRecord) -> None:
        """Give a held step back to the queue; a graceful release does not use up an attempt."""
        step.released += 1
        self._requeue(instance, step, EventKind.RELEASED)

    def _requeue(self, instance: InstanceRecord, step: StepRecord, kind: EventKind) -> None:
        self._running.discard((instance.instance_id, step.name))
        self._event(instance, kind, step, worker_id=step.worker_id)
        step.state = Status.QUEUED
        step.worker_id = None
        step.lease_deadline = None
        self._push(instance, step)

    def _push(self, instance: InstanceRecord, step: StepRecord) -> None:
        self._ready.push((instance.workflow_id, instance.version), instance.instance_id, step.name)
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
        self, instance: InstanceRecord, step: StepRecord, worker_id: str, report: StepReport, state: Status
    ) -> None:
        """A report the lease guard refused: an exact replay is fine, anything else is not."""
        if step.reported_by == worker_id and report.attempt in (None, step.attempt):
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
        self, instance: InstanceRecord, step: StepRecord, state: Status, result: Any, error: str | None
    ) -> None:
        """Record a final state for a running step and move the instance on."""
        step.state = state
        step.result = result
        step.error = error
        step.lease_deadline = None
        step.finished_at = _utcnow()
        step.finished_seq = next(self._finished_seq)
        if state is Status.SUCCEEDED:
            step.action = instance.plan.chosen_action(step.name, self._load(result))
        self._event(instance, EventKind.of_step(state), step, worker_id=step.worker_id, detail=error)
        views = instance.views()
        self._apply(instance, instance.plan.settle(views, instance.plan.successors(step.name)))
        self._finalize_if_done(instance, views)

    def _apply(self, instance: InstanceRecord, progress: Progress) -> None:
        now = _utcnow()
        for name, inputs_from in progress.queued.items():
            step = instance.steps[name]
            step.state = Status.QUEUED
            step.inputs_from = inputs_from
            self._push(instance, step)
            self._event(instance, EventKind.QUEUED, step)
        for names, state in ((progress.skipped, Status.SKIPPED), (progress.cancelled, Status.CANCELLED)):
            for name in names:
                step = instance.steps[name]
                step.state = state
                step.finished_at = now
                step.finished_seq = next(self._finished_seq)
                self._event(instance, EventKind.of_step(state), step)

    def _finalize_if_done(self, instance: InstanceRecord, views: Mapping[str, StepView]) -> None:
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
        self._event(instance, EventKind.of_instance(outcome), None, detail=instance.error)

    # -- instances ---------------------------------------------------------------------
    def dispatch_workflow(self, schema: WorkflowSchema, inputs: Mapping[str, Any] | None = None) -> str:
        inputs = inputs if inputs is not None else {}
        encoded = codec.encode_inputs(inputs) if self.store_json else codec.check_inputs(inputs)
        with self._lock:
            plan = self._store_schema(schema)
            instance = InstanceRecord(
                instance_id=new_id(),
                workflow_id=schema.workflow_id,
                version=schema.version,
                plan=plan,
                inputs=encoded,
                created_at=_utcnow(),
                steps={name: StepRecord(name, plan.nodes[name].max_attempts) for name in plan.order},
            )
            self._instances[instance.instance_id] = instance
            self._event(instance, EventKind.DISPATCHED, None)
            self._apply(instance, plan.settle(instance.views(), plan.order))
            return instance.instance_id

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
            found = [
                i
                for i in reversed(self._instances.values())
                if (page.status is None or i.status is page.status)
                and (page.workflow_id is None or i.workflow_id == page.workflow_id)
            ]
            return [i.info(self._load) for i in found[page.offset : page.offset + page.limit]]

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
            held: dict[str, list[str]] = {}
            for instance_id, name in sorted(self._running):
                holder = self._instances[instance_id].steps[name].worker_id
                if holder is not None:
                    held.setdefault(holder, []).append(f"{instance_id}/{name}")
            return [
                w.info(self._is_alive(w), held.get(w.worker_id, [])) for w in reversed(self._workers.values())
            ]

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
                    step.finished_seq = next(self._finished_seq)
                    self._event(instance, EventKind.CANCELLED, step)
            instance.status = Status.CANCELLED
            instance.finished_at = now
            self._event(instance, EventKind.INSTANCE_CANCELLED, None)
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
            for step in instance.steps.values():
                if step.state in BROKEN_STATES:
                    step.state = Status.PENDING
                    # attempts only grow (reports are fenced by them); the budget starts afresh
                    step.max_attempts = step.executions + instance.plan.nodes[step.name].max_attempts
                    step.result = step.error = step.worker_id = step.reported_by = None
                    step.started_at = step.finished_at = step.finished_seq = None
                    step.action = None
                    step.inputs_from = []
                    reset.append(step.name)
            instance.status = Status.RUNNING
            instance.result = instance.error = instance.finished_at = None
            self._event(instance, EventKind.RETRIED, None)
            views = instance.views()
            self._apply(instance, instance.plan.settle(views, reset))
            self._finalize_if_done(instance, views)
            return instance.info(self._load)

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
        instance: InstanceRecord,
        kind: EventKind,
        step: StepRecord | None,
        *,
        worker_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        instance.events.append(
            InstanceEvent(
                at=_utcnow(),
                kind=kind.value,
                step_name=step.name if step else None,
                attempt=step.attempt if step else None,
                worker_id=worker_id,
                detail=detail,
            )
        )
