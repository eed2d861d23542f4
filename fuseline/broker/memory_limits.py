"""Flow control in ``MemoryBroker``: which queued steps a claim passes over, and why.

Step and workflow ``ConcurrencyLimit`` and ``RateLimit`` are counted from
live state when a claim looks at a step: the steps RUNNING under a lease
that has not expired, the instances in progress, the claims of the last
window. Nothing is reserved or released, so nothing can leak when a worker
dies: its slot frees when its lease expires. A step held back stays QUEUED
in its place; the claim takes the next one it may.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from ..workflow.scheduling import ConcurrencyLimit, RateLimit
from .base import Reason
from .memory_records import InstanceRecord
from .scheduling import item_base


@dataclass(frozen=True)
class Hold:
    """Why a queued step may not be claimed now: ``count`` of ``limit`` are taken."""

    reason: str
    count: int
    limit: int
    #: ``instance/step`` of the steps holding a step limit's slots.
    holders: tuple[str, ...] = ()
    #: ``time.monotonic()`` when a rate limit's window lets one more start.
    until: float | None = None


class FlowControl:
    """The live state limits are counted from, and the claim times rate limits need."""

    def __init__(
        self,
        instances: Mapping[str, InstanceRecord],
        running: Set[tuple[str, str]],
        load: Callable[[Any], Any],
    ) -> None:
        self.instances = instances
        self.running = running
        self.load = load
        self._by_workflow: dict[str, list[InstanceRecord]] = {}
        #: (workflow_id, step) -> (claim time, instance id), oldest first, of rate-limited steps.
        self._starts: dict[tuple[str, str], deque[tuple[float, str]]] = {}

    def add(self, instance: InstanceRecord) -> None:
        self._by_workflow.setdefault(instance.workflow_id, []).append(instance)

    def note_claim(self, instance: InstanceRecord, step_name: str, now: float) -> None:
        """A claim: the instance is in progress from now on, and the claim counts in rate windows."""
        instance.claimed = True
        step_name = item_base(step_name)  # a Map's items count as their step
        if instance.plan.scheduling.steps[step_name].rate is not None:
            key = (instance.workflow_id, step_name)
            self._starts.setdefault(key, deque()).append((now, instance.instance_id))

    def gate(self, now: float) -> Gate:
        return Gate(self, now)

    def in_progress(self, workflow_id: str) -> list[InstanceRecord]:
        return [i for i in self._by_workflow.get(workflow_id, ()) if i.in_progress]

    def starts(self, workflow_id: str, step_name: str, since: float) -> deque[tuple[float, str]]:
        """The claims of that step after ``since``; older ones are forgotten."""
        window = self._starts.get((workflow_id, step_name), deque())
        while window and window[0][0] <= since:
            window.popleft()
        return window


class Gate:
    """The holds of one claim (or one explanation), each count taken once at ``now``."""

    def __init__(self, flow: FlowControl, now: float) -> None:
        self.flow = flow
        self.now = now
        self._counted: dict[tuple[str | None, ...], Hold | None] = {}

    def hold(self, instance: InstanceRecord, step_name: str) -> Hold | None:
        """What keeps the QUEUED step ``step_name`` of ``instance`` from being claimed now, if anything."""
        scheduling = instance.plan.scheduling
        step_name = item_base(step_name)  # a Map's items count as their step
        step, workflow_id = scheduling.steps[step_name], instance.workflow_id
        if (steps := step.concurrency) is not None:
            value = self._value(instance, steps)
            memo = ("step", workflow_id, step_name, value)
            hold = self._once(memo, lambda: self._running(workflow_id, step_name, steps, value))
            if hold is not None:
                return hold
        if (instances := scheduling.concurrency) is not None and not instance.in_progress:
            value = self._value(instance, instances)
            memo = ("workflow", workflow_id, value)
            hold = self._once(memo, lambda: self._started(workflow_id, instances, value))
            if hold is not None:
                return hold
        if (rate := step.rate) is not None:
            value = self._value(instance, rate)
            memo = ("rate", workflow_id, step_name, value)
            return self._once(memo, lambda: self._rated(workflow_id, step_name, rate, value))
        return None

    def _once(self, memo: tuple[str | None, ...], count: Callable[[], Hold | None]) -> Hold | None:
        if memo not in self._counted:
            self._counted[memo] = count()
        return self._counted[memo]

    def _value(self, instance: InstanceRecord, limit: ConcurrencyLimit | RateLimit) -> str | None:
        return instance.limit_value(limit.key, self.flow.load) if limit.key is not None else None

    def _same(self, instance_id: str, limit: ConcurrencyLimit | RateLimit, value: str | None) -> bool:
        return value is None or self._value(self.flow.instances[instance_id], limit) == value

    def _running(
        self, workflow_id: str, step_name: str, limit: ConcurrencyLimit, value: str | None
    ) -> Hold | None:
        """Full when ``limit.max`` steps of that name under a limit (any version that declares one,
        same key value) hold a live lease."""
        holders = []
        for instance_id, name in sorted(self.flow.running):
            instance = self.flow.instances[instance_id]
            deadline = instance.steps[name].lease_deadline
            if (
                item_base(name) == step_name
                and instance.workflow_id == workflow_id
                and instance.plan.scheduling.of(name).concurrency is not None
                and deadline is not None
                and deadline >= self.now
                and self._same(instance_id, limit, value)
            ):
                holders.append(f"{instance_id}/{name}")
        if len(holders) < limit.max:
            return None
        return Hold(Reason.CONCURRENCY_LIMIT, len(holders), limit.max, tuple(holders))

    def _started(self, workflow_id: str, limit: ConcurrencyLimit, value: str | None) -> Hold | None:
        """Full when ``limit.max`` instances of the workflow (same key value) are in progress."""
        started = [i for i in self.flow.in_progress(workflow_id) if self._same(i.instance_id, limit, value)]
        if len(started) < limit.max:
            return None
        return Hold(Reason.WORKFLOW_CONCURRENCY_LIMIT, len(started), limit.max)

    def _rated(self, workflow_id: str, step_name: str, limit: RateLimit, value: str | None) -> Hold | None:
        """Full when ``limit.n`` claims (same key value) fall in the last ``limit.per`` seconds."""
        window = self.flow.starts(workflow_id, step_name, self.now - limit.per)
        times = [t for t, instance_id in window if self._same(instance_id, limit, value)]
        if len(times) < limit.n:
            return None
        return Hold(Reason.RATE_LIMITED, len(times), limit.n, until=times[len(times) - limit.n] + limit.per)
