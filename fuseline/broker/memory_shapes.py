"""``MemoryBroker``'s part of Map, SubWorkflow and WaitFor: fan-out, children and signals.

A mixin over the broker's records, called with the broker's lock held, so
the decisions in :mod:`fuseline.broker.shapes` apply to one consistent state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidTransition, SignalConflict
from ..states import EventKind, Status
from ..workflow.schema import check_name
from . import codec
from .dispatching import Dispatch
from .ids import new_id
from .memory_records import InstanceRecord, StepRecord, utcnow
from .scheduling import ChildShape, MapShape, StepScheduling, item_base, item_index, item_name
from .shapes import child_failure, child_inputs, child_schema, item_failure, signal_refused, signal_timeout

if TYPE_CHECKING:
    from .dag import WorkflowPlan
    from .memory_queue import ReadyQueue
    from .memory_records import PlanStore


class MemoryShapes:
    """Map items, child instances and signals, on the records of a ``MemoryBroker``."""

    _instances: dict[str, InstanceRecord]
    _plans: PlanStore
    _ready: ReadyQueue
    _running: set[tuple[str, str]]
    store_json: bool
    _lock: Any
    _tokens: Any
    _created_seq: Any
    _finished_seq: Any
    _finish: Callable[..., None]
    _queue: Callable[..., None]
    _event: Callable[..., None]
    _store: Callable[[str, Any], Any]
    _load: Callable[[Any], Any]
    _instance: Callable[[str], InstanceRecord]

    # -- queue time ------------------------------------------------------------------
    def _park(
        self, instance: InstanceRecord, step: StepRecord, scheduling: StepScheduling, available_at: float
    ) -> bool:
        """Start what a Map, SubWorkflow or WaitFor step does when it is queued; False for others."""
        if step.name not in instance.plan.nodes:
            return False  # a Map item: queued like any step
        if scheduling.map is not None:
            self._fan_out(instance, step, scheduling.map, available_at)
            return True
        if scheduling.child is not None:
            self._start_child(instance, step, scheduling.child)
            return True
        if scheduling.wait_for is not None and scheduling.wait_for.signal in instance.signals:
            self._hold(instance, step)
            self._finish(instance, step, Status.SUCCEEDED, instance.signals[scheduling.wait_for.signal], None)
            return True
        return False

    def _hold(self, instance: InstanceRecord, step: StepRecord) -> None:
        """QUEUED where no worker claims: the broker moves it on."""
        step.enqueue(instance.instance_id, instance.priority, 0.0, None, next(self._tokens))

    def _fan_out(
        self, instance: InstanceRecord, step: StepRecord, shape: MapShape, available_at: float
    ) -> None:
        values = self._load(instance.steps[shape.over].result)
        self._hold(instance, step)
        if not values:
            self._finish(instance, step, Status.SUCCEEDED, self._store(step.name, []), None)
            return
        instance.open_items[step.name] = len(values)
        for index, value in enumerate(values):
            item = StepRecord(item_name(step.name, index), step.max_attempts, next(self._created_seq))
            item.item = self._store(item.name, value)
            item.inputs_from = list(step.inputs_from)
            instance.steps[item.name] = item
            self._queue(instance, item, available_at)
            self._event(instance, EventKind.QUEUED, item)

    def _item_ended(self, instance: InstanceRecord, item: StepRecord) -> None:
        """An item reached a final state: the last success completes the map, a failure fails it."""
        map_name = item_base(item.name)
        owner = instance.steps[map_name]
        if owner.state is not Status.QUEUED:
            return  # the map already failed or was cancelled
        if item.state in (Status.FAILED, Status.CANCELLED):
            for other in self._items_of(instance, map_name):
                if other.state in (Status.PENDING, Status.QUEUED):
                    other.end(Status.CANCELLED, utcnow(), next(self._finished_seq))
                    self._event(instance, EventKind.CANCELLED, other)
            index = item_index(item.name)
            self._finish(instance, owner, Status.FAILED, None, item_failure(index or 0, item.error))
            return
        instance.open_items[map_name] -= 1
        if instance.open_items[map_name] == 0:
            results = [self._load(s.result) for s in self._items_of(instance, map_name)]
            self._finish(instance, owner, Status.SUCCEEDED, self._store(map_name, results), None)

    @staticmethod
    def _items_of(instance: InstanceRecord, map_name: str) -> list[StepRecord]:
        prefix = map_name + "["
        items = [s for n, s in instance.steps.items() if n.startswith(prefix) and item_base(n) == map_name]
        return sorted(items, key=lambda s: item_index(s.name) or 0)

    def _forget_items(self, instance: InstanceRecord, map_name: str) -> None:
        """Drop a map's items (a retry fans out afresh)."""
        for item in self._items_of(instance, map_name):
            self._running.discard((instance.instance_id, item.name))
            del instance.steps[item.name]
        instance.open_items.pop(map_name, None)

    # -- children --------------------------------------------------------------------
    def _start_child(self, instance: InstanceRecord, step: StepRecord, shape: ChildShape) -> None:
        schema = child_schema(shape)
        results = {name: self._load(instance.steps[name].result) for name in step.inputs_from}
        inputs = child_inputs(shape, schema, self._load(instance.inputs) or {}, results)
        encoded = codec.encode_inputs(inputs) if self.store_json else codec.check_inputs(inputs)
        child_id = new_id()
        step.child_id = child_id
        self._hold(instance, step)
        plan: WorkflowPlan = self._plans.store(schema)
        self._create(plan, Dispatch(inputs), encoded, child_id, parent=(instance.instance_id, step.name))  # type: ignore[attr-defined]

    def _child_ended(self, child: InstanceRecord) -> None:
        """A child instance finished: its SubWorkflow step ends with it."""
        if child.parent is None:
            return
        parent = self._instances.get(child.parent[0])
        if parent is None or parent.status is not Status.RUNNING:
            return
        step = parent.steps[child.parent[1]]
        if step.state is not Status.QUEUED or step.child_id != child.instance_id:
            return
        if child.status is Status.SUCCEEDED:
            self._finish(parent, step, Status.SUCCEEDED, self._store(step.name, child.result), None)
        else:
            self._finish(
                parent, step, Status.FAILED, None, child_failure(child.instance_id, child.status, child.error)
            )

    def _cancel_children(self, instance: InstanceRecord) -> None:
        for step in instance.steps.values():
            child = self._instances.get(step.child_id) if step.child_id else None
            if child is not None and child.status is Status.RUNNING:
                self.cancel_instance(child.instance_id)  # type: ignore[attr-defined]

    # -- signals ---------------------------------------------------------------------
    def signal(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver signal ``name`` with ``data`` to a RUNNING instance, once."""
        check_name("signal name", name)
        stored = self._store(f"signal {name!r}", data)
        with self._lock:
            instance = self._instance(instance_id)
            if instance.status is not Status.RUNNING:
                raise InvalidTransition(signal_refused(instance_id, instance.status))
            if name in instance.signals:
                raise SignalConflict(instance_id, name)
            instance.signals[name] = stored
            self._event(instance, EventKind.SIGNALLED, None, detail=name)
            for step in list(instance.steps.values()):
                waits = instance.plan.scheduling.steps.get(step.name)
                shape = waits.wait_for if waits is not None else None
                if shape is not None and shape.signal == name and step.state is Status.QUEUED:
                    self._finish(instance, step, Status.SUCCEEDED, stored, None)

    def _time_up(self, instance: InstanceRecord, step: StepRecord) -> None:
        """A timer came due: a Sleep succeeds, a WaitFor without its signal fails."""
        shape = instance.plan.scheduling.steps[step.name].wait_for
        if shape is None:
            self._finish(instance, step, Status.SUCCEEDED, None, None)
        else:
            self._finish(instance, step, Status.FAILED, None, signal_timeout(shape))
