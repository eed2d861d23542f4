"""Checking the database's invariants: what must hold whatever crashed.

``verify(engine)`` reads the tables (it never writes) and lists every
violation of the guarantees fuseline makes:

- ``running_without_lease``: a RUNNING step with no holder or no lease;
- ``stale_lease``: a RUNNING step whose lease expired long ago (no broker reaped it);
- ``duplicate_success``: more accepted successes for a step than its instance was reopened
  by a retry or a repair (+1);
- ``queued_twice``: a step queued more often than its instance was reopened (+1);
- ``unmet_dependencies``: a QUEUED or RUNNING step whose dependencies the
  rules do not consider met;
- ``attempts_not_monotone``: claims of a step whose attempt numbers do not grow,
  or a step whose attempt is below one it was claimed with;
- ``instance_not_finalized``: a RUNNING instance whose steps are all final;
- ``finished_with_unfinished_steps``: a final instance with steps still to run;
- ``waiting_step_holds_lease``: a PENDING or QUEUED step (a retry waiting its delay, say)
  that still names a holder or a lease;
- ``limit_exceeded``: more steps under a ConcurrencyLimit holding a live lease than it allows;
- ``retry_lost``: a step FAILED by its worker while its RetryPolicy still had retries left;
- ``item_without_map``: a Map item whose Map step is not in its instance;
- ``child_without_parent_step``: a child instance whose parent has no SubWorkflow step that
  started a child under that name;
- ``map_items_mismatch``: a Map that succeeded with a result of another length than its items;
- ``orphaned_event``, ``orphaned_step``, ``orphaned_signal``: rows of an instance that does not
  exist (retention deletes an instance together with all of them);
- ``instance_without_definition``: instances of a workflow version whose definition is not
  stored (fuseline deletes no definition; one per workflow version, with how many).

The chaos tests call it at the end of every run, and so can operators:
``fuseline db verify``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Engine, text

from ...states import Status
from ...workflow.schema import WorkflowSchema
from ..dag import StepView, WorkflowPlan
from ..reports import WORKER_LOST
from .queries.verify import VerifyQueries, for_dialect
from .rows import aware


@dataclass(frozen=True)
class Violation:
    kind: str
    instance_id: str | None
    step_name: str | None
    detail: str

    def __str__(self) -> str:
        where = "/".join(x for x in (self.instance_id, self.step_name) if x)
        return f"{self.kind}: {where}: {self.detail}" if where else f"{self.kind}: {self.detail}"


#: ``db verify`` reads every table, which takes a while on a big database: the role's
#: ``statement_timeout`` (meant for the workers' short transactions) does not apply to it. Its
#: ``lock_timeout`` still does: verify takes only the locks any read takes, and waits for a lock
#: only behind a migration, where failing with the server's message is the better answer.
_NO_STATEMENT_TIMEOUT = text("SET LOCAL statement_timeout = 0")


def verify(engine: Engine, *, stale_after_seconds: float = 60.0) -> list[Violation]:
    """Every invariant violation in the database (an empty list when all hold).

    On PostgreSQL it runs in one transaction without a statement timeout, whatever the role's.
    """
    q = for_dialect(engine.dialect.name)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(_NO_STATEMENT_TIMEOUT)
        return [
            *_check_leases(conn, q, stale_after_seconds),
            *_check_acceptance(conn, q),
            *_check_attempts(conn, q),
            *_check_instances(conn, q),
            *_check_flow_control(conn, q),
            *_check_shapes(conn, q),
            *_check_orphans(conn, q),
        ]


def _check_leases(conn: Connection, q: VerifyQueries, stale_after_seconds: float) -> list[Violation]:
    now = aware(conn.execute(q.now).scalar_one())
    found = []
    for r in conn.execute(q.steps_running).all():
        if r.worker_id is None or r.lease_expires_at is None:
            found.append(Violation("running_without_lease", r.instance_id, r.name, "no holder or no lease"))
        elif aware(r.lease_expires_at) < now - timedelta(seconds=stale_after_seconds):  # type: ignore[operator]
            found.append(
                Violation("stale_lease", r.instance_id, r.name, f"lease expired at {r.lease_expires_at}")
            )
    return found


def _check_acceptance(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found = [
        Violation("duplicate_success", r[0], r[1], f"{r[2]} accepted successes")
        for r in conn.execute(q.successes_repeated).all()
    ]
    found += [
        Violation("queued_twice", r[0], r[1], f"queued {r[2]} times, reopened {r[3] or 0} times")
        for r in conn.execute(q.steps_queued_twice).all()
    ]
    return found


def _check_attempts(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found = []
    # Claims first: attempts only grow, so on a live database a claim made after this read
    # cannot look like a step whose attempt went down.
    claims = conn.execute(q.claims).all()
    attempts = {(r.instance_id, r.name): r.attempt for r in conn.execute(q.steps_attempts).all()}
    last: dict[tuple[str, str], int] = {}
    for r in claims:
        key = (r.instance_id, r.step_name)
        if key in last and r.attempt <= last[key]:
            found.append(
                Violation("attempts_not_monotone", *key, f"claimed as attempt {r.attempt} after {last[key]}")
            )
        last[key] = r.attempt
    for key, attempt in last.items():
        if attempts.get(key, attempt) < attempt:
            found.append(
                Violation("attempts_not_monotone", *key, f"attempt {attempts[key]} < claimed {attempt}")
            )
    return found


def _check_flow_control(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found = [
        Violation("waiting_step_holds_lease", r.instance_id, r.name, f"{r.state} with a holder or a lease")
        for r in conn.execute(q.waiting_steps_holding).all()
    ]
    found += [
        Violation("limit_exceeded", None, r[1], f"workflow {r[0]} key {r[2]}: {r[3]} running, limit {r[4]}")
        for r in conn.execute(q.limits_exceeded).all()
    ]
    plans: dict[tuple[str, str], WorkflowPlan | None] = {}
    for r in conn.execute(q.steps_failed).all():
        if r.error and (r.error.startswith(WORKER_LOST) or any(m in r.error for m in _REFUSED_RESULTS)):
            continue  # a lost worker or a result the broker refused: not a failure RetryPolicy retries
        plan = _plan_of(conn, q, plans, r.workflow_id, r.version)
        if plan is None:
            continue  # reported by _check_orphans
        allowed = plan.scheduling.steps[r.name].max_retries
        if r.retries < allowed:
            found.append(
                Violation(
                    "retry_lost", r.instance_id, r.name, f"failed after {r.retries} of {allowed} retries"
                )
            )
    return found


#: What the messages of results the broker refused say (ResultNotSerializable, ResultTooLarge).
_REFUSED_RESULTS = ("that is not JSON-serialisable", "bytes of JSON, more than the limit")


def _check_instances(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found: list[Violation] = []
    plans: dict[tuple[str, str], WorkflowPlan | None] = {}
    for instance_id, status, workflow_id, version, open_steps in conn.execute(q.instances_open_steps).all():
        if status != Status.RUNNING.value:
            if open_steps:
                found.append(
                    Violation(
                        "finished_with_unfinished_steps",
                        instance_id,
                        None,
                        f"{status} with {open_steps} open",
                    )
                )
            continue
        if not open_steps:
            found.append(Violation("instance_not_finalized", instance_id, None, "every step is final"))
            continue
        plan = _plan_of(conn, q, plans, workflow_id, version)
        if plan is not None:  # else reported by _check_orphans
            found += _unmet_dependencies(conn, q, plan, instance_id)
    return found


def _plan_of(
    conn: Connection,
    q: VerifyQueries,
    plans: dict[tuple[str, str], WorkflowPlan | None],
    workflow_id: str,
    version: str,
) -> WorkflowPlan | None:
    """The plan of a stored definition, read once per check into ``plans``; None if it is not stored."""
    key = (workflow_id, version)
    if key not in plans:
        definition = conn.execute(
            q.workflow_definition, {"p_workflow_id": workflow_id, "p_version": version}
        ).scalar_one_or_none()
        plans[key] = WorkflowPlan(WorkflowSchema.from_json(definition)) if definition is not None else None
    return plans[key]


def _unmet_dependencies(
    conn: Connection, q: VerifyQueries, plan: WorkflowPlan, instance_id: str
) -> list[Violation]:
    """QUEUED or RUNNING steps the rules would not have queued from the states of the others."""
    rows = conn.execute(q.steps_views, {"p_instance_id": instance_id}).all()
    views = {r.name: StepView(Status(r.state), r.action, aware(r.finished_at)) for r in rows}
    found = []
    for name, view in views.items():
        if view.state not in (Status.QUEUED, Status.RUNNING) or name not in plan.nodes:
            continue  # a Map item is queued by its map's fan-out, not by the rules
        probe = {n: StepView(v.state, v.action, v.finished) for n, v in views.items()}
        probe[name] = StepView(Status.PENDING)
        if name not in plan.settle(probe, [name]).queued:
            found.append(
                Violation("unmet_dependencies", instance_id, name, f"{view.state} before its dependencies")
            )
    return found


def _check_shapes(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found = [
        Violation("item_without_map", str(i), name, f"its Map step {owner!r} is missing")
        for i, name, owner in conn.execute(q.items_orphaned).all()
    ]
    found += [
        Violation(
            "child_without_parent_step", str(i), None, f"parent {parent} has no SubWorkflow step {step!r}"
        )
        for i, parent, step in conn.execute(q.children_orphaned).all()
    ]
    counts = {(str(i), owner): n for i, owner, n in conn.execute(q.items_per_map).all()}
    for instance_id, name, result in conn.execute(q.maps_succeeded).all():
        length = len(json.loads(result)) if result else 0
        items = counts.get((str(instance_id), name), 0)
        if length != items:
            found.append(
                Violation("map_items_mismatch", str(instance_id), name, f"{length} results for {items} items")
            )
    return found


def _check_orphans(conn: Connection, q: VerifyQueries) -> list[Violation]:
    found = []
    for kind, statement, what in (
        ("orphaned_event", q.events_orphaned, "events"),
        ("orphaned_step", q.steps_orphaned, "steps"),
        ("orphaned_signal", q.signals_orphaned, "signals"),
    ):
        found += [
            Violation(kind, str(i), None, f"{n} {what} of an instance that does not exist")
            for i, n in conn.execute(statement).all()
        ]
    found += [
        Violation(
            "instance_without_definition",
            None,
            None,
            f"{n} instance(s) of {workflow_id!r} version {version!r}, whose definition is not stored",
        )
        for workflow_id, version, n in conn.execute(q.instances_without_definition).all()
    ]
    return found
