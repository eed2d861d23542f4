"""Creating instances: their rows, their steps' scheduling, idempotency keys.

Every step row carries what claims need to schedule it without reading the
definition: its instance's priority (as ``urgency``), its queue, whether a
limit gates it and that limit's numbers and key value. Roots are QUEUED,
available at once, after a delay, or at a time; a Sleep root waits its
seconds on top. A key the workflow already has returns the existing
instance when the inputs are equal and raises KeyConflict otherwise, in the
same transaction (``INSERT ... ON CONFLICT DO NOTHING`` waits for a
concurrent insert of the key, so two dispatchers get one instance).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

from sqlalchemy import Connection

from ...errors import KeyConflict
from ...workflow.schema import WorkflowSchema, canonical_json
from .. import codec
from ..dag import WorkflowPlan
from ..dispatching import Dispatch
from ..ids import new_id
from . import pg_statements
from .database import Database, PostgresDatabase
from .history import History
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.instances import InstanceQueries
from .shapes import ShapeRules


def limit_key_value(inputs: Mapping[str, Any], key: str | None) -> str | None:
    """The value of a limit's key input as canonical JSON (equal values, equal text), or None."""
    return canonical_json(inputs.get(key)) if key is not None else None


def step_rows(
    plan: WorkflowPlan, instance_id: str, inputs: Mapping[str, Any], dispatch: Dispatch
) -> list[dict]:
    """The step rows of a new instance, with the scheduling claims read (see the module doc)."""
    roots = set(plan.roots)
    scheduling = plan.scheduling
    workflow_limit = scheduling.concurrency
    at = dispatch.at.astimezone(timezone.utc) if dispatch.at is not None else None
    rows = []
    for name in plan.order:
        step = scheduling.steps[name]
        limit = step.concurrency or step.rate
        root = name in roots
        sleep = step.delay or 0.0  # a Sleep's pause, a WaitFor's timeout
        delay = (dispatch.delay or 0.0) + sleep if root and at is None else None
        rows.append(
            {
                "instance_id": instance_id,
                "workflow_id": plan.workflow_id,
                "version": plan.version,
                "name": name,
                "state": "QUEUED" if root else "PENDING",
                "max_attempts": plan.nodes[name].max_attempts,
                "urgency": -dispatch.priority,
                "queue": step.waits_in,
                "gated": limit is not None or (root and workflow_limit is not None),
                "concurrency_max": step.concurrency.max if step.concurrency else None,
                "rate_n": step.rate.n if step.rate else None,
                "rate_per": step.rate.per if step.rate else None,
                "limit_key": limit_key_value(inputs, limit.key) if limit is not None else None,
                "p_queued": root,
                "p_at": at + timedelta(seconds=sleep) if root and at is not None else None,
                "p_delay": delay,
            }
        )
    return rows


@dataclass
class OneStatementDispatch:
    """PostgreSQL: create instances, their steps and events in one statement (no keys, no keyed limits)."""

    db: PostgresDatabase
    #: Per plan, the arrays over its steps the statement reads, as PostgreSQL array literals: they
    #: are the same for every dispatch of a plan, so they are written once and sent as text. The
    #: driver adapting nine lists at every call was half the CPU of a one-by-one dispatch.
    _step_arrays: weakref.WeakKeyDictionary[WorkflowPlan, dict[str, str]] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    @staticmethod
    def applies(plan: WorkflowPlan, dispatches: Sequence[Dispatch]) -> bool:
        if plan.scheduling.shaped:
            return False  # a SubWorkflow root starts its child in the general path
        keyed = any(
            limit is not None and limit.key is not None
            for step in plan.scheduling.steps.values()
            for limit in (step.concurrency, step.rate)
        ) or (plan.scheduling.concurrency is not None and plan.scheduling.concurrency.key is not None)
        return not keyed and all(d.key is None for d in dispatches)

    def dispatch(
        self, plan: WorkflowPlan, ids: list[str], encoded: list[str], dispatches: Sequence[Dispatch]
    ) -> None:
        self.db.rows(
            pg_statements.instances_dispatch,
            {
                "p_workflow_id": plan.workflow_id,
                "p_version": plan.version,
                # Array literals too: adapting these lists was most of what the driver still spent.
                "p_ids": array_literal(ids),
                "p_inputs": array_literal(encoded),
                "p_urgencies": array_literal([-d.priority for d in dispatches]),
                "p_delays": array_literal([d.delay for d in dispatches]),
                "p_ats": array_literal([d.at.isoformat() if d.at is not None else None for d in dispatches]),
                "p_concurrency_max": plan.scheduling.concurrency.max if plan.scheduling.concurrency else None,
                **self.step_arrays(plan),
            },
        )

    def step_arrays(self, plan: WorkflowPlan) -> dict[str, str]:
        """The plan's steps in order, with what their rows carry (see ``step_rows``): one array
        literal per column."""
        cached = self._step_arrays.get(plan)
        if cached is None:
            rows = step_rows(plan, "-", {}, Dispatch())
            columns: dict[str, list[Any]] = {
                "p_names": [r["name"] for r in rows],
                "p_roots": [r["p_queued"] for r in rows],
                "p_max_attempts": [r["max_attempts"] for r in rows],
                "p_queues": [r["queue"] for r in rows],
                "p_gated": [r["gated"] for r in rows],
                "p_step_concurrency": [r["concurrency_max"] for r in rows],
                "p_rate_n": [r["rate_n"] for r in rows],
                "p_rate_per": [r["rate_per"] for r in rows],
                "p_sleeps": [plan.scheduling.steps[r["name"]].sleep_seconds for r in rows],
            }
            cached = {name: array_literal(values) for name, values in columns.items()}
            self._step_arrays[plan] = cached
        return cached


def array_literal(values: Sequence[str | int | float | bool | None]) -> str:
    """A one-dimensional PostgreSQL array literal: every element quoted (backslash and double
    quote escaped), NULL for None, t/f for booleans."""

    def element(value: str | int | float | bool | None) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "t" if value else "f"
        text = value if isinstance(value, str) else repr(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(element(value) for value in values) + "}"


@dataclass
class InstanceCreation:
    """Dispatching: the general path in one transaction, or PostgreSQL's one statement."""

    db: Database
    queries: InstanceQueries
    events: EventQueries
    plans: PlanCache
    one_statement: OneStatementDispatch | None
    #: Map, SubWorkflow and WaitFor steps (a SubWorkflow root starts its child at dispatch).
    shapes: ShapeRules

    def dispatch(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]:
        """Create one instance per dispatch, all in one transaction; their ids (an existing
        instance's for a key dispatched again with equal inputs)."""
        encoded = [codec.encode_inputs(d.inputs) for d in dispatches]
        ids = [new_id() for _ in encoded]
        plan = self.plans.cached(schema.key)
        fast = self.one_statement
        if (
            ids
            and fast is not None
            and plan is not None
            and plan.hash == schema.hash
            and fast.applies(plan, dispatches)
        ):
            fast.dispatch(plan, ids, encoded, dispatches)
            return ids
        with self.db.transaction() as conn:
            plans = self.plans.store(conn, [schema])
            if ids:
                ids = self._insert(conn, plans[schema.key], ids, encoded, dispatches)
        self.plans.remember(plans)
        return ids

    def dispatch_within(
        self, conn: Connection, plan: WorkflowPlan, dispatch: Dispatch, parent: tuple[str, str] | None = None
    ) -> str:
        """Create one instance in the caller's transaction (a schedule's tick: the instance and
        the schedule's move commit together; a SubWorkflow's child, whose ``parent`` is the
        instance and step that start it); its id, or for a key dispatched before with
        equal inputs the existing instance's (KeyConflict for other inputs)."""
        encoded = codec.encode_inputs(dispatch.inputs)
        return self._insert(conn, plan, [new_id()], [encoded], [dispatch], parent)[0]

    def _insert(
        self,
        conn: Connection,
        plan: WorkflowPlan,
        ids: list[str],
        encoded: list[str],
        dispatches: Sequence[Dispatch],
        parent: tuple[str, str] | None = None,
    ) -> list[str]:
        history = History()
        created: list[str] = []
        fresh = False  # an instance created, not found under its key: its roots are queued
        workflow_limit = plan.scheduling.concurrency
        for instance_id, text, dispatch in zip(ids, encoded, dispatches, strict=True):
            inputs = json.loads(text)
            row = {
                "id": instance_id,
                "workflow_id": plan.workflow_id,
                "version": plan.version,
                "inputs": text,
                "key": dispatch.key,
                "priority": dispatch.priority,
                "concurrency_max": workflow_limit.max if workflow_limit else None,
                "limit_key": limit_key_value(inputs, workflow_limit.key) if workflow_limit else None,
            }
            if conn.execute(self.queries.instance_insert, row).first() is None:
                created.append(self._existing(conn, plan, dispatch, inputs))
                continue
            created.append(instance_id)
            fresh = True
            rows = step_rows(plan, instance_id, inputs, dispatch)
            conn.execute(self.queries.steps_insert, rows)
            if parent is not None:
                conn.execute(
                    self.shapes.queries.instance_set_parent,
                    {"p_instance_id": instance_id, "p_parent_id": parent[0], "p_parent_step": parent[1]},
                )
            if plan.scheduling.shaped:  # a SubWorkflow root starts its child now
                self.shapes.start(
                    conn, instance_id, plan, [r["name"] for r in rows if r["p_queued"]], history
                )
        history.write(conn, self.events)
        if fresh:
            self.db.announce_work(conn)
        return created

    def _existing(self, conn: Connection, plan: WorkflowPlan, dispatch: Dispatch, inputs: Any) -> str:
        """The instance already dispatched under this key: its id, if it has these inputs."""
        found = conn.execute(
            self.queries.instance_by_key, {"p_workflow_id": plan.workflow_id, "p_key": dispatch.key}
        ).first()
        if found is None:  # not a key conflict: the id itself (a UUIDv7) collided, which cannot happen
            raise RuntimeError(f"could not create an instance of {plan.workflow_id!r} and none has its key")
        if codec.decode(found.inputs) != inputs:
            raise KeyConflict(plan.workflow_id, str(dispatch.key), str(found.id))
        return str(found.id)
