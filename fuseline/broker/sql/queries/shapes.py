"""Statements for Map items, SubWorkflow children and signals (``fuseline_steps``,
``fuseline_instances``, ``fuseline_signals``).

Callers hold the instance lock (``ReportQueries.instance_lock``) of the instance
they change; a child's end also takes its parent's lock, always child first.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Delete, Insert, Select, Update, bindparam, delete, func, insert, select, update

from ....states import Status
from ...scheduling import MAPS_QUEUE, SIGNALS_QUEUE
from ..dialects import Dialect, dialect_of
from ..models import instances, signals, steps

QUEUED = Status.QUEUED.value
UNSTARTED = (Status.PENDING.value, Status.QUEUED.value)
UNFINISHED = (Status.PENDING.value, Status.QUEUED.value, Status.RUNNING.value)
BROKEN = (Status.FAILED.value, Status.CANCELLED.value)


class ShapeQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = dialect.now()
        #: The Map step's row, whose scheduling columns its items copy.
        self.step_row: Select = select(steps).where(
            steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name")
        )
        #: A Map's items, QUEUED at once (one multi-row insert).
        self.items_insert: Insert = insert(steps).values(available_at=now)
        #: How many items a Map fanned out.
        self.map_count: Update = (
            update(steps)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
            .values(item_count=bindparam("p_count"))
        )
        #: How many of a Map's items are not final yet (for explain).
        self.items_open_count: Select = select(func.count()).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.item_of == bindparam("p_name"),
            steps.c.state.in_(UNFINISHED),
        )
        open_item = (
            select(steps.c.id)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.item_of == bindparam("p_name"),
                steps.c.state.in_(UNFINISHED),
            )
            .limit(1)
        )
        #: Whether a Map still has an item not final (its partial index answers).
        self.items_open: Select = open_item
        #: The first of a Map's items that failed or was cancelled.
        self.items_failed: Select = (
            select(steps.c.name, steps.c.error)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.item_of == bindparam("p_name"),
                steps.c.state.in_(BROKEN),
            )
            .order_by(steps.c.finished_at, steps.c.id)
            .limit(1)
        )
        maps = steps.alias("maps")
        items = steps.alias("items")
        #: Maps of a workflow still waiting though none of their items is left: their last item's
        #: reporter died between its commit and its check (the timers complete them).
        self.maps_done: Select = (
            select(maps.c.instance_id, maps.c.name)
            .where(
                maps.c.workflow_id == bindparam("p_workflow_id"),
                maps.c.version == bindparam("p_version"),
                maps.c.state == QUEUED,
                maps.c.queue == MAPS_QUEUE,
                ~select(items.c.id)
                .where(
                    items.c.instance_id == maps.c.instance_id,
                    items.c.item_of == maps.c.name,
                    items.c.state.in_(UNFINISHED),
                )
                .exists(),
            )
            .limit(bindparam("p_limit"))
        )
        #: The items' results, in item order.
        self.items_results: Select = (
            select(steps.c.result)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.item_of == bindparam("p_name"))
            .order_by(steps.c.item_index)
        )
        #: A failed item cancels the items of its Map not started yet.
        self.items_cancel_unstarted: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.item_of == bindparam("p_name"),
                steps.c.state.in_(UNSTARTED),
            )
            .values(state=Status.CANCELLED.value, finished_at=now)
            .returning(steps.c.name, steps.c.attempt)
        )
        #: A retry fans out afresh: the items of the Maps it resets go.
        self.items_delete: Delete = delete(steps).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.item_of.in_(bindparam("p_names", expanding=True)),
        )
        #: The broker ends a step it holds parked (a Map, a SubWorkflow, a WaitFor), once.
        self.step_finish_parked: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state == QUEUED,
            )
            .values(
                state=bindparam("p_state"),
                result=bindparam("p_result"),
                error=bindparam("p_error"),
                started_at=now,
                finished_at=now,
            )
            .returning(steps.c.attempt)
        )
        self.step_set_child: Update = (
            update(steps)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
            .values(child_instance_id=bindparam("p_child_id"))
        )
        self.instance_set_parent: Update = (
            update(instances)
            .where(instances.c.id == bindparam("p_instance_id"))
            .values(parent_instance_id=bindparam("p_parent_id"), parent_step=bindparam("p_parent_step"))
        )
        self.instance_parent: Select = select(
            instances.c.parent_instance_id, instances.c.parent_step, instances.c.result, instances.c.error
        ).where(instances.c.id == bindparam("p_instance_id"))
        #: The SubWorkflow step waiting for this child (it may have been retried: a newer child).
        self.step_waiting_for_child: Select = select(steps.c.name).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name == bindparam("p_name"),
            steps.c.state == QUEUED,
            steps.c.child_instance_id == bindparam("p_child_id"),
        )
        self.children_running: Select = select(instances.c.id).where(
            instances.c.parent_instance_id == bindparam("p_instance_id"),
            instances.c.status == Status.RUNNING.value,
        )
        self.signal_get: Select = select(signals.c.data).where(
            signals.c.instance_id == bindparam("p_instance_id"), signals.c.name == bindparam("p_name")
        )
        self.signal_insert: Insert = insert(signals).values(created_at=now)
        #: The WaitFor steps of an instance waiting now.
        self.steps_waiting_for_signals: Select = select(steps.c.name).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.state == QUEUED,
            steps.c.queue == SIGNALS_QUEUE,
        )


@cache
def for_dialect(name: str) -> ShapeQueries:
    return ShapeQueries(dialect_of(name))
