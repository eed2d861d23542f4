"""``explain_instance``: why each unfinished step of an instance is not running now (or that it is).

One :class:`~fuseline.broker.base.StepExplanation` per PENDING, QUEUED or
RUNNING step, in workflow order, with a reason code (:class:`~fuseline.broker.base.Reason`)
and a sentence naming what it waits for. A QUEUED step that could be claimed
now is checked against the limits a claim would apply, counted the same way,
then against the workers alive now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row

from ...errors import UnknownInstance
from ...states import UNFINISHED_STATES, Status
from ..base import Reason, StepExplanation
from ..dag import WorkflowPlan
from ..ids import instance_uuid
from ..scheduling import item_base
from ..shapes import parked_reason
from .database import Database
from .plans import PlanCache
from .queries.claims import ClaimQueries
from .queries.explain import ExplainQueries
from .queries.instances import InstanceQueries
from .queries.shapes import ShapeQueries
from .queries.shapes import for_dialect as shape_queries
from .rows import aware


@dataclass
class Explainer:
    db: Database
    queries: ExplainQueries
    claims: ClaimQueries
    instances: InstanceQueries
    plans: PlanCache
    dead_after: float

    def explain(self, instance_id: str) -> list[StepExplanation]:
        instance_id = instance_uuid(instance_id)
        with self.db.transaction() as conn:
            instance = conn.execute(self.queries.instance, {"p_instance_id": instance_id}).first()
            if instance is None:
                raise UnknownInstance(instance_id)
            if instance.status != Status.RUNNING.value:
                return []
            plan = self.plans.get(conn, (instance.workflow_id, instance.version))
            rows = {
                r.name: r
                for r in conn.execute(self.instances.steps_of_instances, {"p_instance_ids": [instance_id]})
            }
            workers = conn.execute(self.queries.workers_alive, {"p_dead_after": self.dead_after}).all()
            shapes = shape_queries(conn.dialect.name)
            step = _StepReasons(conn, self.queries, self.claims, plan, instance, rows, workers, shapes)
            return [
                StepExplanation(name, Status(rows[name].state), *step.why(rows[name]))
                for name in plan.order
                if Status(rows[name].state) in UNFINISHED_STATES
            ]


@dataclass
class _StepReasons:
    conn: Connection
    queries: ExplainQueries
    claims: ClaimQueries
    plan: WorkflowPlan
    instance: Row[Any]
    rows: dict[str, Row[Any]]
    workers: list[Row[Any]]
    shapes: ShapeQueries

    @property
    def now(self) -> datetime:
        return aware(self.instance.db_now)  # type: ignore[return-value]

    def why(self, row: Row[Any]) -> tuple[str, str]:
        state = Status(row.state)
        if state is Status.PENDING:
            node = self.plan.nodes[row.name]
            waits = [
                p for p in self.plan.order if p in node.inbound and not Status(self.rows[p].state).is_final
            ]
            return Reason.WAITING, f"waiting for {', '.join(waits)}"
        if state is Status.RUNNING:
            host = self.conn.execute(self.queries.worker_host, {"p_worker_id": row.worker_id}).scalar()
            lease = _iso(row.lease_expires_at)
            return (
                Reason.RUNNING,
                f"on worker {row.worker_id} (host {host or 'unknown'}), lease until {lease}",
            )
        scheduling = self.plan.scheduling.steps[row.name]
        available = aware(row.available_at)
        if scheduling.sleep_seconds is not None:
            return Reason.SLEEPING, f"until {_iso(available)}"
        if scheduling.parked:
            waits = scheduling.wait_for
            timeout = _iso(available) if waits is not None and waits.timeout is not None else None
            child = str(row.child_instance_id) if row.child_instance_id else None
            open_items = None
            if scheduling.map is not None:
                where = {"p_instance_id": row.instance_id, "p_name": row.name}
                open_items = self.conn.execute(self.shapes.items_open_count, where).scalar_one()
            return parked_reason(scheduling, open_items, child, timeout)
        if available is not None and available > self.now:
            if row.retries:
                error = row.error.splitlines()[0] if row.error else "(none)"
                retry = f"retry {row.retries} of {scheduling.max_retries}"
                return Reason.RETRY_SCHEDULED, f"{retry} at {_iso(available)}; last error: {error}"
            return Reason.DELAYED, f"until {_iso(available)}"
        held = self._limit(row)
        if held is not None:
            return held
        return self._served(scheduling.queue)

    def _limit(self, row: Row[Any]) -> tuple[str, str] | None:
        limit = {
            "p_workflow_id": row.workflow_id,
            "p_name": item_base(row.name),
            "p_limit_key": row.limit_key,
        }
        if row.concurrency_max is not None:
            running = self.conn.execute(self.claims.steps_running_of_limit, limit).scalar_one()
            if running >= row.concurrency_max:
                holders = self.conn.execute(self.queries.steps_holding_limit, limit).all()
                named = ", ".join(f"{h.instance_id}/{h.name}" for h in holders)
                return Reason.CONCURRENCY_LIMIT, f"{running}/{row.concurrency_max} running: {named}"
        instance = self.instance
        if instance.concurrency_max is not None and instance.started_at is None:
            held = {"p_workflow_id": instance.workflow_id, "p_limit_key": instance.limit_key}
            count = self.conn.execute(self.claims.instances_in_progress_of_limit, held).scalar_one()
            if count >= instance.concurrency_max:
                return (
                    Reason.WORKFLOW_CONCURRENCY_LIMIT,
                    f"{count}/{instance.concurrency_max} instances in progress",
                )
        if row.rate_n is not None:
            count, oldest = self.conn.execute(
                self.claims.starts_in_window, {**limit, "p_per": row.rate_per}
            ).one()
            if count >= row.rate_n and oldest is not None:
                return Reason.RATE_LIMITED, f"until {_iso(_after(aware(oldest), row.rate_per))}"
        return None

    def _served(self, queue: str) -> tuple[str, str]:
        key = [self.instance.workflow_id, self.instance.version]
        for worker in self.workers:
            queues = json.loads(worker.queues) if worker.queues is not None else None
            if key in json.loads(worker.workflows) and (queues is None or queue in queues):
                return Reason.QUEUED, "claimable; waiting for a free worker"
        return Reason.NO_WORKER, f"no live worker serves workflow {key[0]}@{key[1]} in queue {queue!r}"


def _iso(value: datetime | None) -> str:
    return aware(value).isoformat() if value is not None else "-"  # type: ignore[union-attr]


def _after(start: datetime | None, seconds: float) -> datetime | None:
    return start + timedelta(seconds=seconds) if start is not None else None
