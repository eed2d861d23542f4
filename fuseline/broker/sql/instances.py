"""Instances: reading them, cancelling and retrying them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Row

from ...errors import InvalidTransition, UnknownInstance
from ...states import EventKind, Status
from ..base import InstanceEvent, InstanceInfo, InstancePage
from ..dag import WorkflowPlan
from ..ids import instance_uuid
from .database import Database
from .history import History, record_running_claims, record_step_successes
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.instances import InstanceQueries
from .queries.reports import ReportQueries
from .rows import instance_info
from .rules import InstanceRules
from .timeline import timeline


@dataclass
class Instances:
    """Reading, cancelling and retrying instances (creating them: :mod:`.dispatching`)."""

    db: Database
    queries: InstanceQueries
    reports: ReportQueries
    events: EventQueries
    rules: InstanceRules
    plans: PlanCache

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
        after = None
        if page.after is not None:
            page = replace(page, after=instance_uuid(page.after))
        with self.db.transaction() as conn:
            if page.after is not None:
                after = conn.execute(self.queries.instance_created_at, {"p_instance_id": page.after}).scalar()
                if after is None:
                    raise UnknownInstance(page.after)
            rows = conn.execute(self.queries.instances_page(page, after)).all()
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
            if self.events.history_snapshot is not None:  # before the first read
                conn.execute(self.events.history_snapshot)
            if conn.execute(self.queries.instance_exists, {"p_instance_id": instance_id}).first() is None:
                raise UnknownInstance(instance_id)
            rows = conn.execute(self.events.steps_told_by_rows, {"p_instance_id": instance_id}).all()
            stored = conn.execute(self.events.events_of_instance, {"p_instance_id": instance_id}).all()
            instance = conn.execute(self.queries.instance_history, {"p_instance_id": instance_id}).one()
            plan = self.plans.get(conn, (instance.workflow_id, instance.version))
        return timeline(stored, rows, instance, plan.roots)

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
            record_running_claims(conn, self.events, instance_id)
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
            children: list[str] = []
            if self.rules.shapes is not None:
                self.rules.shapes.instance_ended(conn, instance_id, Status.CANCELLED, history)
                children = self.rules.shapes.children(conn, instance_id)
            history.write(conn, self.events)
        for child_id in children:  # each under its own lock, never while holding this one
            with suppress(InvalidTransition):  # it finished meanwhile
                self.cancel(child_id)
        return self.get(instance_id)

    def reset_steps(
        self, conn: Connection, instance_id: str, plan: WorkflowPlan, names: Sequence[str]
    ) -> None:
        """Steps back to PENDING for a retry (attempts kept): a Map's items go, so it fans out
        afresh; a SubWorkflow loses its child, so it starts a new one."""
        record_step_successes(conn, self.events, instance_id, list(names))
        maps = [n for n in names if plan.scheduling.steps[n].map is not None]
        if maps and self.rules.shapes is not None:
            conn.execute(
                self.rules.shapes.queries.items_delete, {"p_instance_id": instance_id, "p_names": maps}
            )
        if names:
            conn.execute(
                self.queries.step_reset_for_retry,
                [
                    {"p_instance_id": instance_id, "p_name": n, "p_budget": plan.nodes[n].max_attempts}
                    for n in names
                ],
            )

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
            broken = list(conn.execute(self.queries.steps_broken, {"p_instance_id": instance_id}).scalars())
            names = [n for n in broken if n in plan.nodes]  # a Map's items go: it fans out afresh
            self.reset_steps(conn, instance_id, plan, names)
            conn.execute(self.queries.instance_reopen, {"p_instance_id": instance_id})
            history.add(instance_id, EventKind.RETRIED)
            order = {name: i for i, name in enumerate(plan.order)}
            self.rules.advance(conn, instance_id, plan, sorted(names, key=order.__getitem__), history)
            history.write(conn, self.events)
        return self.get(instance_id)
