"""Checking the database's invariants: what must hold whatever crashed.

``verify(engine)`` reads the tables (it never writes) and lists every
violation of the guarantees fuseline makes:

- ``running_without_lease``: a RUNNING step with no holder or no lease;
- ``stale_lease``: a RUNNING step whose lease expired long ago (no broker reaped it);
- ``duplicate_success``: more than one accepted success for a step;
- ``queued_twice``: a step queued more often than its instance was retried (+1);
- ``unmet_dependencies``: a QUEUED or RUNNING step whose dependencies the
  rules do not consider met;
- ``attempts_not_monotone``: claims of a step whose attempt numbers do not grow,
  or a step whose attempt is below one it was claimed with;
- ``instance_not_finalized``: a RUNNING instance whose steps are all final;
- ``finished_with_unfinished_steps``: a final instance with steps still to run.

The chaos tests call it at the end of every run, and so can operators:
``fuseline db verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, DateTime, Engine, and_, case, func, select, type_coerce

from ...states import Status
from ...workflow.schema import WorkflowSchema
from ..dag import StepView, WorkflowPlan
from .dialects import dialect_of
from .models import events, instances, steps, workflows

_UNFINISHED = [Status.PENDING.value, Status.QUEUED.value, Status.RUNNING.value]


@dataclass(frozen=True)
class Violation:
    kind: str
    instance_id: str | None
    step_name: str | None
    detail: str

    def __str__(self) -> str:
        where = "/".join(x for x in (self.instance_id, self.step_name) if x)
        return f"{self.kind}: {where}: {self.detail}" if where else f"{self.kind}: {self.detail}"


def verify(engine: Engine, *, stale_after_seconds: float = 60.0) -> list[Violation]:
    """Every invariant violation in the database (an empty list when all hold)."""
    found: list[Violation] = []
    now_expr = dialect_of(engine.dialect.name).now()
    with engine.connect() as conn:
        now = _aware(conn.execute(select(type_coerce(now_expr, DateTime(timezone=True)))).scalar_one())
        running = conn.execute(
            select(steps.c.instance_id, steps.c.name, steps.c.worker_id, steps.c.lease_expires_at).where(
                steps.c.state == Status.RUNNING.value
            )
        ).all()
        for r in running:
            if r.worker_id is None or r.lease_expires_at is None:
                found.append(
                    Violation("running_without_lease", r.instance_id, r.name, "no holder or no lease")
                )
            elif _aware(r.lease_expires_at) < now - timedelta(seconds=stale_after_seconds):
                found.append(
                    Violation("stale_lease", r.instance_id, r.name, f"lease expired at {r.lease_expires_at}")
                )

        successes = conn.execute(
            select(events.c.instance_id, events.c.step_name, func.count())
            .where(events.c.kind == "succeeded")
            .group_by(events.c.instance_id, events.c.step_name)
            .having(func.count() > 1)
        ).all()
        found += [Violation("duplicate_success", r[0], r[1], f"{r[2]} accepted successes") for r in successes]

        retried = (
            select(events.c.instance_id, func.count().label("retries"))
            .where(events.c.kind == "retried")
            .group_by(events.c.instance_id)
            .subquery()
        )
        queued = (
            select(events.c.instance_id, events.c.step_name, func.count().label("times"))
            .where(events.c.kind == "queued")
            .group_by(events.c.instance_id, events.c.step_name)
            .subquery()
        )
        twice = conn.execute(
            select(queued.c.instance_id, queued.c.step_name, queued.c.times, retried.c.retries)
            .select_from(queued.outerjoin(retried, retried.c.instance_id == queued.c.instance_id))
            .where(queued.c.times > 1 + func.coalesce(retried.c.retries, 0))
        ).all()
        found += [
            Violation("queued_twice", r[0], r[1], f"queued {r[2]} times, retried {r[3] or 0} times")
            for r in twice
        ]

        claims = conn.execute(
            select(events.c.instance_id, events.c.step_name, events.c.attempt)
            .where(events.c.kind == "claimed")
            .order_by(events.c.instance_id, events.c.step_name, events.c.id)
        ).all()
        attempts = {
            (r.instance_id, r.name): r.attempt
            for r in conn.execute(select(steps.c.instance_id, steps.c.name, steps.c.attempt)).all()
        }
        last: dict[tuple[str, str], int] = {}
        for r in claims:
            key = (r.instance_id, r.step_name)
            if key in last and r.attempt <= last[key]:
                found.append(
                    Violation(
                        "attempts_not_monotone", *key, f"claimed as attempt {r.attempt} after {last[key]}"
                    )
                )
            last[key] = r.attempt
        for key, attempt in last.items():
            if attempts.get(key, attempt) < attempt:
                found.append(
                    Violation("attempts_not_monotone", *key, f"attempt {attempts[key]} < claimed {attempt}")
                )

        found += _check_instances(conn)
    return found


def _check_instances(conn: Connection) -> list[Violation]:
    found: list[Violation] = []
    unfinished = func.sum(case((steps.c.state.in_(_UNFINISHED), 1), else_=0))
    per_instance = conn.execute(
        select(instances.c.id, instances.c.status, func.count(steps.c.id), unfinished)
        .select_from(instances.join(steps, steps.c.instance_id == instances.c.id))
        .group_by(instances.c.id, instances.c.status)
    ).all()
    running_ids = []
    for instance_id, status, _total, open_steps in per_instance:
        if status == Status.RUNNING.value:
            if not open_steps:
                found.append(Violation("instance_not_finalized", instance_id, None, "every step is final"))
            else:
                running_ids.append(instance_id)
        elif open_steps:
            found.append(
                Violation(
                    "finished_with_unfinished_steps", instance_id, None, f"{status} with {open_steps} open"
                )
            )
    plans: dict[tuple[str, str], WorkflowPlan] = {}
    for instance_id in running_ids:
        row = conn.execute(
            select(instances.c.workflow_id, instances.c.version).where(instances.c.id == instance_id)
        ).one()
        key = (row.workflow_id, row.version)
        if key not in plans:
            definition = conn.execute(
                select(workflows.c.definition).where(
                    and_(workflows.c.workflow_id == key[0], workflows.c.version == key[1])
                )
            ).scalar_one()
            plans[key] = WorkflowPlan(WorkflowSchema.from_json(definition))
        plan = plans[key]
        rows = conn.execute(
            select(steps.c.name, steps.c.state, steps.c.action, steps.c.finished_at).where(
                steps.c.instance_id == instance_id
            )
        ).all()
        views = {r.name: StepView(Status(r.state), r.action, _aware(r.finished_at)) for r in rows}
        for name, view in views.items():
            if view.state not in (Status.QUEUED, Status.RUNNING):
                continue
            probe = {n: StepView(v.state, v.action, v.finished) for n, v in views.items()}
            probe[name] = StepView(Status.PENDING)
            if name not in plan.settle(probe, [name]).queued:
                found.append(
                    Violation(
                        "unmet_dependencies", instance_id, name, f"{view.state} before its dependencies"
                    )
                )
    return found


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC times; steps that have not finished have none (None)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)
