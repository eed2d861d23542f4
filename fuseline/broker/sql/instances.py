"""Instances: dispatching them, reading them, cancelling and retrying them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row

from ...errors import InvalidTransition, UnknownInstance
from ...states import EventKind, Status
from ...workflow.schema import WorkflowSchema
from .. import codec
from ..base import InstanceEvent, InstanceInfo, InstancePage
from ..dag import WorkflowPlan
from ..ids import instance_uuid, new_id
from . import pg_statements
from .database import Database, PostgresDatabase
from .history import History
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.instances import InstanceQueries
from .queries.reports import ReportQueries
from .rows import aware, instance_info
from .rules import InstanceRules


@dataclass
class OneStatementDispatch:
    """PostgreSQL: create instances, their steps and events in one statement."""

    db: PostgresDatabase

    def dispatch(self, plan: WorkflowPlan, ids: list[str], encoded: list[str]) -> None:
        roots = set(plan.roots)
        self.db.rows(
            pg_statements.instances_dispatch,
            {
                "p_workflow_id": plan.workflow_id,
                "p_version": plan.version,
                "p_ids": ids,
                "p_inputs": encoded,
                "p_names": list(plan.order),
                "p_roots": [name in roots for name in plan.order],
                "p_max_attempts": [plan.nodes[name].max_attempts for name in plan.order],
            },
        )


@dataclass
class Instances:
    """Dispatching, reading, cancelling and retrying instances."""

    db: Database
    queries: InstanceQueries
    reports: ReportQueries
    events: EventQueries
    rules: InstanceRules
    plans: PlanCache
    #: PostgreSQL's one-statement dispatch; None where there is none.
    one_statement: OneStatementDispatch | None

    # -- dispatch ------------------------------------------------------------------------
    def dispatch(self, schema: WorkflowSchema, inputs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create one instance per inputs mapping, all in one transaction."""
        encoded = [codec.encode_inputs(i) for i in inputs]
        ids = [new_id() for _ in encoded]
        plan = self.plans.cached(schema.key)
        if ids and self.one_statement is not None and plan is not None and plan.hash == schema.hash:
            self.one_statement.dispatch(plan, ids, encoded)
            return ids
        with self.db.transaction() as conn:
            plans = self.plans.store(conn, [schema])
            if ids:
                self._insert(conn, plans[schema.key], ids, encoded)
        self.plans.remember(plans)
        return ids

    def _insert(self, conn: Connection, plan: WorkflowPlan, ids: list[str], encoded: list[str]) -> None:
        roots = set(plan.roots)
        history = History()
        instance_rows, queued_rows, pending_rows = [], [], []
        for instance_id, text in zip(ids, encoded, strict=True):
            instance_rows.append(
                {"id": instance_id, "workflow_id": plan.workflow_id, "version": plan.version, "inputs": text}
            )
            history.add(instance_id, EventKind.DISPATCHED)
            for name in plan.order:
                row = {
                    "instance_id": instance_id,
                    "workflow_id": plan.workflow_id,
                    "version": plan.version,
                    "name": name,
                    "max_attempts": plan.nodes[name].max_attempts,
                }
                if name in roots:
                    queued_rows.append(row)
                    history.add(instance_id, EventKind.QUEUED, name)
                else:
                    pending_rows.append(row)
        conn.execute(self.queries.instance_insert, instance_rows)
        conn.execute(self.queries.steps_insert_queued, queued_rows)
        if pending_rows:
            conn.execute(self.queries.steps_insert_pending, pending_rows)
        history.write(conn, self.events)
        self.db.announce_work(conn)

    # -- reads ---------------------------------------------------------------------------
    def get(self, instance_id: str) -> InstanceInfo:
        instance_id = instance_uuid(instance_id)
        with self.db.transaction() as conn:
            row = conn.execute(self.queries.instance_get, {"p_instance_id": instance_id}).first()
            if row is None:
                raise UnknownInstance(instance_id)
            step_rows = conn.execute(self.queries.steps_of_instances, {"p_instance_ids": [instance_id]}).all()
        return instance_info(row, step_rows)

    def list(self, page: InstancePage) -> list[InstanceInfo]:
        status = page.status.value if page.status is not None else None
        query = self.queries.instances_page(status, page.workflow_id, page.limit, page.offset)
        with self.db.transaction() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            step_rows = conn.execute(
                self.queries.steps_of_instances, {"p_instance_ids": [r.id for r in rows]}
            ).all()
        by_instance: dict[str, list[Row[Any]]] = {}
        for s in step_rows:
            by_instance.setdefault(s.instance_id, []).append(s)
        return [instance_info(r, by_instance.get(r.id, [])) for r in rows]

    def history(self, instance_id: str) -> list[InstanceEvent]:
        instance_id = instance_uuid(instance_id)
        with self.db.transaction() as conn:
            if conn.execute(self.queries.instance_exists, {"p_instance_id": instance_id}).first() is None:
                raise UnknownInstance(instance_id)
            rows = conn.execute(self.events.events_of_instance, {"p_instance_id": instance_id}).all()
        return [
            InstanceEvent(
                at=aware(r.at),  # type: ignore[arg-type]
                kind=r.kind,
                step_name=r.step_name,
                attempt=r.attempt,
                worker_id=r.worker_id,
                detail=r.detail,
            )
            for r in rows
        ]

    def any_running(self, workflows: Sequence[tuple[str, str]] | None) -> bool:
        query, params = self.queries.instance_any_running, {}
        if workflows is not None:
            if not workflows:
                return False
            query, params = self.queries.instance_any_running_of, {"p_keys": list(workflows)}
        with self.db.transaction() as conn:
            return conn.execute(query, params).first() is not None

    # -- cancel and retry ----------------------------------------------------------------
    def _lock(self, conn: Connection, instance_id: str, allowed: tuple[Status, ...], rule: str) -> Row[Any]:
        """Take the instance lock; UnknownInstance, or InvalidTransition (saying ``rule``) unless
        the instance is in one of the ``allowed`` states."""
        locked = conn.execute(self.reports.instance_lock, {"p_instance_id": instance_id}).first()
        if locked is None:
            raise UnknownInstance(instance_id)
        if Status(locked.status) not in allowed:
            raise InvalidTransition(f"instance {instance_id!r} is {locked.status}; {rule}")
        return locked

    def cancel(self, instance_id: str) -> InstanceInfo:
        instance_id = instance_uuid(instance_id)
        history = History()
        with self.db.transaction() as conn:
            self._lock(conn, instance_id, (Status.RUNNING,), "only RUNNING instances can be cancelled")
            cancelled = conn.execute(
                self.queries.steps_cancel_unfinished, {"p_instance_id": instance_id}
            ).all()
            conn.execute(
                self.reports.instance_finish,
                {
                    "p_instance_id": instance_id,
                    "p_status": Status.CANCELLED.value,
                    "p_result": None,
                    "p_error": None,
                },
            )
            for r in cancelled:
                history.add(instance_id, EventKind.CANCELLED, r.name, r.attempt)
            history.add(instance_id, EventKind.INSTANCE_CANCELLED)
            history.write(conn, self.events)
        return self.get(instance_id)

    def retry(self, instance_id: str) -> InstanceInfo:
        instance_id = instance_uuid(instance_id)
        history = History()
        with self.db.transaction() as conn:
            locked = self._lock(
                conn,
                instance_id,
                (Status.FAILED, Status.CANCELLED),
                "only FAILED or CANCELLED instances can be retried",
            )
            plan = self.plans.get(conn, (locked.workflow_id, locked.version))
            names = list(conn.execute(self.queries.steps_broken, {"p_instance_id": instance_id}).scalars())
            if names:
                conn.execute(
                    self.queries.step_reset_for_retry,
                    [
                        {"p_instance_id": instance_id, "p_name": n, "p_budget": plan.nodes[n].max_attempts}
                        for n in names
                    ],
                )
            conn.execute(self.queries.instance_reopen, {"p_instance_id": instance_id})
            history.add(instance_id, EventKind.RETRIED)
            order = {name: i for i, name in enumerate(plan.order)}
            self.rules.advance(conn, instance_id, plan, sorted(names, key=order.__getitem__), history)
            history.write(conn, self.events)
        return self.get(instance_id)
