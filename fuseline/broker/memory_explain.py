"""``MemoryBroker.explain_instance``: why each unfinished step of an instance is where it is.

One :class:`~fuseline.broker.base.StepExplanation` per PENDING, QUEUED or
RUNNING step, in workflow order, with a reason code (:class:`Reason`) and
a sentence naming what it waits for. A QUEUED step that may be claimed now
is checked against the limits the next claim would apply (the same
:class:`.memory_limits.Gate`), then against the live workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..states import UNFINISHED_STATES, Status
from .base import Reason, StepExplanation
from .memory_limits import Gate, Hold
from .memory_records import InstanceRecord, StepRecord, WorkerRecord
from .shapes import parked_reason


@dataclass(frozen=True)
class Moment:
    """One instant on both clocks, to show deadlines kept on the monotonic clock as times."""

    monotonic: float
    wall: datetime

    def show(self, deadline: float) -> str:
        return (self.wall + timedelta(seconds=deadline - self.monotonic)).isoformat()


@dataclass(frozen=True)
class Explainer:
    gate: Gate
    moment: Moment
    workers: Mapping[str, WorkerRecord]
    alive: Callable[[WorkerRecord], bool]

    def explain(self, instance: InstanceRecord) -> list[StepExplanation]:
        found = []
        for name in instance.plan.order:
            step = instance.steps[name]
            if step.state in UNFINISHED_STATES:
                reason, detail = self._why(instance, step)
                found.append(StepExplanation(name, step.state, reason, detail))
        return found

    def _why(self, instance: InstanceRecord, step: StepRecord) -> tuple[str, str]:
        if step.state is Status.PENDING:
            node = instance.plan.nodes[step.name]
            waits = [
                p for p in instance.plan.order if p in node.inbound and not instance.steps[p].state.is_final
            ]
            return Reason.WAITING, f"waiting for {', '.join(waits)}"
        if step.state is Status.RUNNING:
            worker = self.workers.get(step.worker_id or "")
            host = worker.host if worker is not None else "unknown"
            lease = self.moment.show(step.lease_deadline) if step.lease_deadline is not None else "-"
            return Reason.RUNNING, f"on worker {step.worker_id} (host {host}), lease until {lease}"
        scheduling = instance.plan.scheduling.steps[step.name]
        if scheduling.sleep_seconds is not None:
            return Reason.SLEEPING, f"until {self.moment.show(step.available_at)}"
        if scheduling.parked:
            waits = scheduling.wait_for
            timeout = self.moment.show(step.available_at) if waits and waits.timeout is not None else None
            return parked_reason(scheduling, instance.open_items.get(step.name), step.child_id, timeout)
        if step.available_at > self.moment.monotonic:
            return self._held_back(step, scheduling.max_retries)
        hold = self.gate.hold(instance, step.name)
        if hold is not None:
            return hold.reason, self._full(hold)
        key = (instance.workflow_id, instance.version)
        if not any(w.serves(key, scheduling.queue) and self.alive(w) for w in self.workers.values()):
            return Reason.NO_WORKER, (
                f"no live worker serves workflow {key[0]}@{key[1]} in queue {scheduling.queue!r}"
            )
        return Reason.QUEUED, "claimable; waiting for a free worker"

    def _held_back(self, step: StepRecord, max_retries: int) -> tuple[str, str]:
        """A QUEUED step whose time has not come: a policy retry's, or its dispatch's."""
        when = self.moment.show(step.available_at)
        if step.held_for == Reason.RETRY_SCHEDULED:
            error = (step.error or "").splitlines()[0] if step.error else "(none)"
            return (
                Reason.RETRY_SCHEDULED,
                f"retry {step.retries} of {max_retries} at {when}; last error: {error}",
            )
        return Reason.DELAYED, f"until {when}"

    def _full(self, hold: Hold) -> str:
        if hold.reason == Reason.CONCURRENCY_LIMIT:
            return f"{hold.count}/{hold.limit} running: {', '.join(hold.holders)}"
        if hold.reason == Reason.WORKFLOW_CONCURRENCY_LIMIT:
            return f"{hold.count}/{hold.limit} instances in progress"
        return f"until {self.moment.show(hold.until or self.moment.monotonic)}"
