"""``SqlBroker``'s part of Map, SubWorkflow and WaitFor: fan-out, children and signals.

The rules (:class:`~.rules.InstanceRules`) call :meth:`ShapeRules.start` for a
shaped step they queue and :meth:`ShapeRules.step_ended` routes a Map item's end
here, all in the caller's transaction, under its instance lock. A child's end
locks its parent after itself; nothing locks a child while holding its parent
(a parent's cancel reaches its children in transactions of their own), so the
two never wait for each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from ...errors import InvalidTransition, SignalConflict, UnknownInstance
from ...states import EventKind, Status
from .. import codec
from ..dag import WorkflowPlan
from ..dispatching import Dispatch
from ..scheduling import ChildShape, MapShape, item_base, item_index, item_name
from ..shapes import child_failure, child_inputs, child_schema, item_failure, signal_refused
from .database import Database
from .history import History
from .plans import PlanCache
from .queries.claims import ClaimQueries
from .queries.events import EventQueries
from .queries.reports import ReportQueries
from .queries.shapes import ShapeQueries

if TYPE_CHECKING:
    from .dispatching import InstanceCreation
    from .rules import InstanceRules


@dataclass
class ShapeRules:
    queries: ShapeQueries
    reports: ReportQueries
    claims: ClaimQueries
    plans: PlanCache
    max_result_bytes: int
    #: Wired after construction (they call back into this class).
    rules: InstanceRules = field(init=False)
    creation: InstanceCreation = field(init=False)

    # -- queue time ------------------------------------------------------------------
    def start(
        self, conn: Connection, instance_id: str, plan: WorkflowPlan, names: Iterable[str], history: History
    ) -> None:
        """Begin what the shaped steps among ``names``, just QUEUED, do."""
        for name in names:
            scheduling = plan.scheduling.steps[name]
            if scheduling.map is not None:
                self._fan_out(conn, instance_id, plan, name, scheduling.map, history)
            elif scheduling.child is not None:
                self._start_child(conn, instance_id, name, scheduling.child)
            elif scheduling.wait_for is not None:
                params = {"p_instance_id": instance_id, "p_name": scheduling.wait_for.signal}
                kept = conn.execute(self.queries.signal_get, params).first()
                if kept is not None:
                    self.finish(conn, instance_id, plan, name, Status.SUCCEEDED, kept.data, None, history)

    def _fan_out(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        name: str,
        shape: MapShape,
        history: History,
    ) -> None:
        found = conn.execute(
            self.claims.step_results, {"p_instance_id": instance_id, "p_names": [shape.over]}
        ).first()
        values = codec.decode(found.result) if found is not None and found.result else []
        if not values:
            self.finish(conn, instance_id, plan, name, Status.SUCCEEDED, "[]", None, history)
            return
        owner = conn.execute(self.queries.step_row, {"p_instance_id": instance_id, "p_name": name}).one()
        queue = plan.scheduling.steps[name].queue
        rows = [
            {
                "instance_id": instance_id,
                "workflow_id": owner.workflow_id,
                "version": owner.version,
                "name": item_name(name, index),
                "state": Status.QUEUED.value,
                "max_attempts": owner.max_attempts,
                "urgency": owner.urgency,
                "queue": queue,
                "gated": owner.gated,
                "concurrency_max": owner.concurrency_max,
                "rate_n": owner.rate_n,
                "rate_per": owner.rate_per,
                "limit_key": owner.limit_key,
                "inputs_from": owner.inputs_from,
                "item": codec.encode_result(item_name(name, index), value, self.max_result_bytes),
                "item_of": name,
                "item_index": index,
            }
            for index, value in enumerate(values)
        ]
        conn.execute(self.queries.items_insert, rows)
        conn.execute(
            self.queries.map_count, {"p_instance_id": instance_id, "p_name": name, "p_count": len(rows)}
        )
        for row in rows:
            history.add(instance_id, EventKind.QUEUED, row["name"])
        self.rules.announce_work(conn)

    def _start_child(self, conn: Connection, instance_id: str, name: str, shape: ChildShape) -> None:
        schema = child_schema(shape)
        plan = self.plans.store(conn, [schema])[schema.key]
        parent_inputs = codec.decode(
            conn.execute(self.claims.instance_inputs, {"p_instance_id": instance_id}).scalar_one()
        )
        step = conn.execute(self.queries.step_row, {"p_instance_id": instance_id, "p_name": name}).one()
        consumed = codec.decode(step.inputs_from) if step.inputs_from else []
        results: dict[str, Any] = {}
        if consumed:
            found = conn.execute(
                self.claims.step_results, {"p_instance_id": instance_id, "p_names": consumed}
            )
            results = {r.name: codec.decode(r.result) if r.result else None for r in found}
        inputs = child_inputs(shape, schema, parent_inputs or {}, results)
        child_id = self.creation.dispatch_within(conn, plan, Dispatch(inputs), parent=(instance_id, name))
        conn.execute(
            self.queries.step_set_child,
            {"p_instance_id": instance_id, "p_name": name, "p_child_id": child_id},
        )

    # -- ends ------------------------------------------------------------------------
    def finish(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        name: str,
        state: Status,
        result: str | None,
        error: str | None,
        history: History,
    ) -> bool:
        """End a parked step (the broker's own doing) and move the instance on; False if it
        was not waiting any more."""
        params = {
            "p_instance_id": instance_id,
            "p_name": name,
            "p_state": state.value,
            "p_result": result,
            "p_error": error,
        }
        ended = conn.execute(self.queries.step_finish_parked, params).first()
        if ended is None:
            return False
        history.add(instance_id, EventKind.of_step(state), name, ended.attempt, detail=error)
        self.rules.step_ended(conn, instance_id, plan, name, state, error, history)
        return True

    def item_ended(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        item: str,
        state: Status,
        error: str | None,
        history: History,
    ) -> None:
        """A Map item is final: a failure fails the map, the last success completes it. An item
        still running in another transaction counts as open: its reporter completes the map."""
        owner = item_base(item)
        if state in (Status.SUCCEEDED, Status.SKIPPED):
            if conn.execute(self.queries.items_open, {"p_instance_id": instance_id, "p_name": owner}).first():
                return
            self._complete_map(conn, instance_id, plan, owner, history)
            return
        where = {"p_instance_id": instance_id, "p_name": owner}
        for row in conn.execute(self.queries.items_cancel_unstarted, where).all():
            history.add(instance_id, EventKind.CANCELLED, row.name, row.attempt)
        failure = item_failure(item_index(item) or 0, error)
        self.finish(conn, instance_id, plan, owner, Status.FAILED, None, failure, history)

    def complete_map(self, db: Database, events: EventQueries, instance_id: str, owner: str) -> bool:
        """After an item's success was committed without the instance lock: complete its map if
        no item is left (the last reporter to commit sees none). False if it was not the last."""
        where = {"p_instance_id": instance_id, "p_name": owner}
        with db.transaction() as conn:
            if conn.execute(self.queries.items_open, where).first():
                return False
            locked = conn.execute(self.reports.instance_lock, where).first()
            if locked is None or Status(locked.status) is not Status.RUNNING:
                return False
            plan = self.plans.get(conn, (locked.workflow_id, locked.version))
            history = History()
            done = self._complete_map(conn, instance_id, plan, owner, history)
            history.write(conn, events)
        return done

    def _complete_map(
        self, conn: Connection, instance_id: str, plan: WorkflowPlan, owner: str, history: History
    ) -> bool:
        """No item of the map is left (caller holds the instance lock): end it with the results
        in item order, or FAILED naming the first item that failed."""
        where = {"p_instance_id": instance_id, "p_name": owner}
        broken = conn.execute(self.queries.items_failed, where).first()
        if broken is not None:
            failure = item_failure(item_index(broken.name) or 0, broken.error)
            return self.finish(conn, instance_id, plan, owner, Status.FAILED, None, failure, history)
        texts = conn.execute(self.queries.items_results, where).scalars().all()
        result = "[" + ",".join(t or "null" for t in texts) + "]"
        if len(result.encode()) > self.max_result_bytes:
            size, limit = len(result.encode()), self.max_result_bytes
            error = f"the results of its items take {size:,} bytes; the limit is {limit:,}"
            return self.finish(conn, instance_id, plan, owner, Status.FAILED, None, error, history)
        return self.finish(conn, instance_id, plan, owner, Status.SUCCEEDED, result, None, history)

    def instance_ended(self, conn: Connection, instance_id: str, status: Status, history: History) -> None:
        """A child instance finished: its SubWorkflow step ends with it (parent locked after child)."""
        child = conn.execute(self.queries.instance_parent, {"p_instance_id": instance_id}).first()
        if child is None or child.parent_instance_id is None:
            return
        parent_id = str(child.parent_instance_id)
        locked = conn.execute(self.reports.instance_lock, {"p_instance_id": parent_id}).first()
        if locked is None or Status(locked.status) is not Status.RUNNING:
            return
        params = {"p_instance_id": parent_id, "p_name": child.parent_step, "p_child_id": instance_id}
        if conn.execute(self.queries.step_waiting_for_child, params).first() is None:
            return  # retried meanwhile: a newer child is the one it waits for
        plan = self.plans.get(conn, (locked.workflow_id, locked.version))
        if status is Status.SUCCEEDED:
            result, error, state = child.result or "null", None, Status.SUCCEEDED
        else:
            result, error, state = None, child_failure(instance_id, status, child.error), Status.FAILED
        self.finish(conn, parent_id, plan, child.parent_step, state, result, error, history)

    def children(self, conn: Connection, instance_id: str) -> list[str]:
        """Its child instances still running (a cancel reaches them one by one)."""
        return [
            str(i)
            for i in conn.execute(self.queries.children_running, {"p_instance_id": instance_id}).scalars()
        ]

    # -- signals ---------------------------------------------------------------------
    def signal(self, conn: Connection, instance_id: str, name: str, data: str, history: History) -> None:
        """Record signal ``name`` (once) and complete the WaitFor steps waiting for it."""
        locked = conn.execute(self.reports.instance_lock, {"p_instance_id": instance_id}).first()
        if locked is None:
            raise UnknownInstance(instance_id)
        if Status(locked.status) is not Status.RUNNING:
            raise InvalidTransition(signal_refused(instance_id, Status(locked.status)))
        if conn.execute(self.queries.signal_get, {"p_instance_id": instance_id, "p_name": name}).first():
            raise SignalConflict(instance_id, name)
        conn.execute(self.queries.signal_insert, {"instance_id": instance_id, "name": name, "data": data})
        history.add(instance_id, EventKind.SIGNALLED, detail=name)
        plan = self.plans.get(conn, (locked.workflow_id, locked.version))
        waiting = conn.execute(
            self.queries.steps_waiting_for_signals, {"p_instance_id": instance_id}
        ).scalars()
        for step in list(waiting):
            shape = plan.scheduling.steps[step].wait_for
            if shape is not None and shape.signal == name:
                self.finish(conn, instance_id, plan, step, Status.SUCCEEDED, data, None, history)
