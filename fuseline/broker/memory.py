"""``MemoryBroker``: the reference broker, in one process's memory.

It implements the whole contract with one lock, so it is the executable
statement of the semantics that ``SqlBroker`` must match (both pass the same
contract suite). It is what ``Workflow.run`` uses, and what tests and
single-process tools can use; nothing survives the process. Leases,
liveness and every "not before" time use ``time.monotonic()``; wall-clock
time only fills the timestamps users see (and reads a dispatch's ``at``).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from ..errors import (
    ResultNotSerializable,
    ResultTooLarge,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
    UnknownWorkflow,
    WorkerExpired,
)
from ..states import EventKind, Status
from ..workflow.schema import WorkflowSchema
from . import codec
from .base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_RESULT_BYTES,
    Broker,
    Lease,
    Reason,
    StepAssignment,
    StepExplanation,
    StepReport,
)
from .dag import Progress, StepView, WorkflowPlan
from .dispatching import Dispatch
from .ids import new_id
from .memory_control import MemoryControl
from .memory_explain import Explainer, Moment
from .memory_keys import KeyIndex
from .memory_limits import FlowControl
from .memory_queue import Entry, ReadyQueue
from .memory_reads import MemoryReads
from .memory_records import InstanceRecord, PlanStore, StepRecord, WorkerRecord, served_queues, utcnow
from .memory_schedules import MemoryScheduling, ScheduleBook
from .memory_shapes import MemoryShapes
from .reports import NO_ERROR_TEXT, WORKER_LOST, reported_state
from .shapes import map_problem

_utcnow = utcnow  # wall-clock time for display fields; leases use the monotonic clock


class MemoryBroker(MemoryControl, MemoryShapes, MemoryReads, MemoryScheduling, Broker):
    """The broker contract in memory.

    ``store_json=False`` keeps results as Python objects instead of JSON
    text (``Workflow.run`` uses it so in-process runs may pass any object
    between steps); the default validates and copies through JSON exactly as
    a database would. ``broker_retries=False`` fails a step on its first
    reported failure instead of scheduling the retries its RetryPolicy allows:
    for ``Workflow.run``, which retries inside the running thread.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        store_json: bool = True,
        broker_retries: bool = True,
    ) -> None:
        self.lease_seconds = float(lease_seconds)
        self.max_result_bytes = max_result_bytes
        self.store_json = store_json
        self.broker_retries = broker_retries
        self._lock = threading.RLock()
        self._work_queued = threading.Condition(self._lock)
        self._plans = PlanStore()
        self._instances: dict[str, InstanceRecord] = {}
        self._keys = KeyIndex(lambda instance_id: self._instances[instance_id].inputs, self._load)
        self._workers: dict[str, WorkerRecord] = {}
        self._ready = ReadyQueue()
        self._running: set[tuple[str, str]] = set()
        self._flow = FlowControl(self._instances, self._running, self._load)
        self._schedules = ScheduleBook()
        self._finished_seq = itertools.count(1)
        self._created_seq = itertools.count(1)
        self._tokens = itertools.count(1)

    # -- definitions -------------------------------------------------------------------
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        with self._lock:
            self._plans.store_all(schemas)

    # -- workers -----------------------------------------------------------------------
    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> str:
        served = served_queues(queues)
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
                queues=served,
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
                if instance is not None and step is not None and step.held_by(worker_id, assignment.attempt):
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
            self._wake_sleepers()
            self.fire_schedules()
            now = time.monotonic()
            gate = self._flow.gate(now)

            def allowed(entry: Entry) -> bool:
                return gate.hold(self._instances[entry.instance_id], entry.step_name) is None

            taken = self._ready.take(worker.keys, worker.queues, now, self._is_current, allowed)
            if taken is None:
                return None
            instance = self._instances[taken.instance_id]
            return self._claim(instance, instance.steps[taken.step_name], worker_id)

    def _is_current(self, entry: Entry) -> bool:
        step = self._instances[entry.instance_id].steps[entry.step_name]
        return step.state is Status.QUEUED and step.token == entry.token

    def _claim(self, instance: InstanceRecord, step: StepRecord, worker_id: str) -> StepAssignment:
        now = _utcnow()
        step.state = Status.RUNNING
        step.attempt += 1
        step.worker_id = worker_id
        step.lease_deadline = time.monotonic() + self.lease_seconds
        step.started_at = now
        step.held_for = None
        self._running.add((instance.instance_id, step.name))
        self._flow.note_claim(instance, step.name, time.monotonic())
        self._event(instance, EventKind.CLAIMED, step, worker_id=worker_id)
        results = {n: self._load(instance.steps[n].result) for n in step.inputs_from}
        payload = {"workflow_inputs": self._load(instance.inputs), "results": results}
        if step.name not in instance.plan.nodes:
            payload["item"] = self._load(step.item)  # a Map item
        return StepAssignment(
            workflow_id=instance.workflow_id,
            instance_id=instance.instance_id,
            step_name=step.name,
            payload=payload,
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
                if step.may_be_lost_again:  # back at its old place in line
                    self._requeue(instance, step, EventKind.LEASE_EXPIRED, step.available_at)
                else:
                    self._running.discard((instance_id, name))
                    self._event(instance, EventKind.LEASE_EXPIRED, step, worker_id=step.worker_id)
                    self._finish(instance, step, Status.FAILED, None, WORKER_LOST)

    def _wake_sleepers(self) -> None:
        """Complete the Sleep and WaitFor steps whose time has come; every claim does it, as it reaps."""
        for entry in self._ready.due_timers(time.monotonic(), self._is_current):
            instance = self._instances[entry.instance_id]
            self._time_up(instance, instance.steps[entry.step_name])

    def _release(self, instance: InstanceRecord, step: StepRecord) -> None:
        """Give a held step back to the end of the queue; a graceful release does not use up an attempt."""
        step.released += 1
        self._requeue(instance, step, EventKind.RELEASED, time.monotonic())

    def _requeue(
        self,
        instance: InstanceRecord,
        step: StepRecord,
        kind: EventKind,
        available_at: float,
        held_for: str | None = None,
        detail: str | None = None,
    ) -> None:
        """A RUNNING step QUEUED again, its lease and worker cleared (``kind`` says why)."""
        self._running.discard((instance.instance_id, step.name))
        self._event(instance, kind, step, worker_id=step.worker_id, detail=detail)
        step.worker_id = None
        step.lease_deadline = None
        self._queue(instance, step, available_at, held_for)

    def _queue(
        self, instance: InstanceRecord, step: StepRecord, available_at: float, held_for: str | None = None
    ) -> None:
        """QUEUED, claimable from ``available_at`` (a Sleep: completed ``sleep_seconds`` later;
        a Map, SubWorkflow or WaitFor: started by the broker, see ``MemoryShapes``)."""
        scheduling = instance.plan.scheduling.of(step.name)
        if self._park(instance, step, scheduling, available_at):
            return
        delay = scheduling.delay if step.name in instance.plan.nodes else None
        token = next(self._tokens)
        entry = step.enqueue(
            instance.instance_id, instance.priority, available_at + (delay or 0.0), held_for, token
        )
        if delay is not None:  # a Sleep, a WaitFor's timeout (a century without one)
            self._ready.push_timer(entry)
        else:
            self._ready.push((instance.workflow_id, instance.version), scheduling.queue, entry)
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
            if not step.held_by(worker_id, report.attempt):
                step.check_replay(instance.instance_id, worker_id, report, state, self._load(step.result))
                return
            result, error = None, report.error
            if state is Status.SUCCEEDED:
                try:
                    result = self._store(step.name, report.result)
                except (ResultNotSerializable, ResultTooLarge) as exc:  # refused: no retry
                    state, error = Status.FAILED, str(exc)
                if state is Status.SUCCEEDED and (
                    problem := map_problem(instance.plan, step.name, report.result)
                ):
                    state, result, error = Status.FAILED, None, problem
            elif state is Status.FAILED:
                error = error or NO_ERROR_TEXT
                if self._retry_later(instance, step, worker_id, error):
                    return
            self._running.discard((instance.instance_id, step.name))
            step.reported_by = worker_id
            self._finish(instance, step, state, result, error)

    def _retry_later(self, instance: InstanceRecord, step: StepRecord, worker_id: str, error: str) -> bool:
        """A reported failure its RetryPolicy allows another try: QUEUED again after the policy's delay,
        the instance untouched. Returns False when the failure stands."""
        retry = instance.plan.scheduling.of(step.name).retry
        if not self.broker_retries or retry is None or step.retries >= retry.max_retries:
            return False
        step.retries += 1
        step.error = error
        step.retried = (worker_id, step.attempt)
        available_at = time.monotonic() + retry.delay(step.retries)
        self._requeue(instance, step, EventKind.RETRY_SCHEDULED, available_at, Reason.RETRY_SCHEDULED, error)
        return True

    def _finish(
        self, instance: InstanceRecord, step: StepRecord, state: Status, result: Any, error: str | None
    ) -> None:
        """Record a final state for a running (or sleeping) step and move the instance on."""
        step.state = state
        step.result = result
        step.error = error
        step.lease_deadline = None
        step.finished_at = _utcnow()
        step.finished_seq = next(self._finished_seq)
        if state is Status.SUCCEEDED:
            step.action = instance.plan.chosen_action(step.name, self._load(result))
        self._event(instance, EventKind.of_step(state), step, worker_id=step.worker_id, detail=error)
        if step.name not in instance.plan.nodes:
            self._item_ended(instance, step)
            return
        views = instance.views()
        self._apply(instance, instance.plan.settle(views, instance.plan.successors(step.name)))
        self._finalize_if_done(instance, views)

    def _apply(
        self, instance: InstanceRecord, progress: Progress, start: tuple[float, str | None] | None = None
    ) -> None:
        """Write down what the rules decided; queued steps are claimable from ``start`` (default now)."""
        available_at, held_for = start or (time.monotonic(), None)
        for name, inputs_from in progress.queued.items():
            step = instance.steps[name]
            step.inputs_from = inputs_from
            self._queue(instance, step, available_at, held_for)
            self._event(instance, EventKind.QUEUED, step)
        now = _utcnow()
        for names, state in ((progress.skipped, Status.SKIPPED), (progress.cancelled, Status.CANCELLED)):
            for name in names:
                step = instance.steps[name]
                step.end(state, now, next(self._finished_seq))
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
        self._child_ended(instance)

    # -- instances ---------------------------------------------------------------------
    def dispatch_instances(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]:
        encode = codec.encode_inputs if self.store_json else codec.check_inputs
        encoded = [encode(d.inputs) for d in dispatches]
        with self._lock:
            ids = self._keys.ids_for(schema.workflow_id, dispatches, encoded)
            plan = self._plans.store(schema)
            for dispatch, inputs, instance_id in zip(dispatches, encoded, ids, strict=True):
                if instance_id not in self._instances:  # not a key dispatched before
                    self._create(plan, dispatch, inputs, instance_id)
            return ids

    def _create(
        self,
        plan: WorkflowPlan,
        dispatch: Dispatch,
        inputs: Any,
        instance_id: str,
        parent: tuple[str, str] | None = None,
    ) -> None:
        instance = InstanceRecord(
            instance_id=instance_id,
            workflow_id=plan.workflow_id,
            version=plan.version,
            plan=plan,
            inputs=inputs,
            created_at=_utcnow(),
            steps={n: StepRecord(n, plan.nodes[n].max_attempts, next(self._created_seq)) for n in plan.order},
            key=dispatch.key,
            priority=dispatch.priority,
            parent=parent,
        )
        self._instances[instance_id] = instance
        self._keys.remember(plan.workflow_id, dispatch.key, instance_id)
        self._flow.add(instance)
        self._event(instance, EventKind.DISPATCHED, None)
        self._apply(instance, plan.settle(instance.views(), plan.order), self._start_of(dispatch))

    @staticmethod
    def _start_of(dispatch: Dispatch) -> tuple[float, str | None]:
        """When a dispatch's first steps become claimable (monotonic), and why if not at once."""
        delay = dispatch.delay or 0.0
        if dispatch.at is not None:
            now = _utcnow()
            delay = (dispatch.at - now).total_seconds()
        return time.monotonic() + max(0.0, delay), (Reason.DELAYED if delay > 0 else None)

    def explain_instance(self, instance_id: str) -> list[StepExplanation]:
        with self._lock:
            instance = self._instance(instance_id)
            now = _utcnow()
            moment = Moment(time.monotonic(), now)
            explainer = Explainer(self._flow.gate(moment.monotonic), moment, self._workers, self._is_alive)
            return explainer.explain(instance)

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
        instance.log(kind, step, at=_utcnow(), worker_id=worker_id, detail=detail)
