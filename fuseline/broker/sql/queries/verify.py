"""What ``fuseline db verify`` reads (it never writes): the facts each invariant is checked on."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    DateTime,
    Select,
    Subquery,
    bindparam,
    case,
    exists,
    func,
    not_,
    or_,
    select,
    type_coerce,
    union_all,
)

from ....states import UNFINISHED_STATES, EventKind, Status
from ..dialects import Dialect, dialect_of
from ..models import events, instances, signals, steps, workflows
from .events import claim_stored, step_success_logged


class VerifyQueries:
    def __init__(self, dialect: Dialect) -> None:
        self.now: Select = select(type_coerce(dialect.now(), DateTime(timezone=True)))
        self.steps_running: Select = select(
            steps.c.instance_id, steps.c.name, steps.c.worker_id, steps.c.lease_expires_at
        ).where(steps.c.state == Status.RUNNING.value)
        # Each retry and each repair reopens an instance: its steps may be queued and succeed
        # once more for each.
        reopened = (
            select(events.c.instance_id, func.count().label("retries"))
            .where(events.c.kind.in_([EventKind.RETRIED.value, EventKind.REPAIRED.value]))
            .group_by(events.c.instance_id)
            .subquery()
        )
        succeeded = _successes_per_step()
        #: Steps with more accepted successes than their instance was reopened (+1).
        self.successes_repeated: Select = (
            select(succeeded.c.instance_id, succeeded.c.step_name, succeeded.c.times)
            .select_from(succeeded.outerjoin(reopened, reopened.c.instance_id == succeeded.c.instance_id))
            .where(succeeded.c.times > 1 + func.coalesce(reopened.c.retries, 0))
        )
        queued = _times_per_step(EventKind.QUEUED)
        #: Steps queued more often than their instance was reopened (+1).
        self.steps_queued_twice: Select = (
            select(queued.c.instance_id, queued.c.step_name, queued.c.times, reopened.c.retries)
            .select_from(queued.outerjoin(reopened, reopened.c.instance_id == queued.c.instance_id))
            .where(queued.c.times > 1 + func.coalesce(reopened.c.retries, 0))
        )
        claim_rows = union_all(
            select(
                events.c.instance_id, events.c.step_name, events.c.attempt, events.c.at.label("claimed")
            ).where(events.c.kind == EventKind.CLAIMED.value),
            # The claims the events ending them keep (migration 0010), but those a ``claimed``
            # row holds already.
            select(events.c.instance_id, events.c.step_name, events.c.attempt, events.c.claimed_at)
            .where(events.c.claimed_at.is_not(None))
            .where(not_(claim_stored(events.c.instance_id, events.c.step_name, events.c.attempt))),
            # The claims SUCCEEDED rows keep, with the successes no event holds.
            select(steps.c.instance_id, steps.c.name, steps.c.attempt, steps.c.started_at).where(
                steps.c.state == Status.SUCCEEDED.value,
                steps.c.worker_id.is_not(None),
                steps.c.started_at.is_not(None),
                not_(step_success_logged()),
                not_(claim_stored(steps.c.instance_id, steps.c.name, steps.c.attempt)),
            ),
        ).subquery()
        #: Every claim recorded, per step in the order they were made.
        self.claims: Select = select(claim_rows).order_by(
            claim_rows.c.instance_id, claim_rows.c.step_name, claim_rows.c.claimed
        )
        self.steps_attempts: Select = select(steps.c.instance_id, steps.c.name, steps.c.attempt)
        unfinished = func.sum(case((steps.c.state.in_([s.value for s in UNFINISHED_STATES]), 1), else_=0))
        #: Per instance: its status and how many of its steps are unfinished.
        self.instances_open_steps: Select = (
            select(
                instances.c.id, instances.c.status, instances.c.workflow_id, instances.c.version, unfinished
            )
            .select_from(instances.join(steps, steps.c.instance_id == instances.c.id))
            .group_by(instances.c.id, instances.c.status, instances.c.workflow_id, instances.c.version)
        )
        self.workflow_definition: Select = select(workflows.c.definition).where(
            workflows.c.workflow_id == bindparam("p_workflow_id"),
            workflows.c.version == bindparam("p_version"),
        )
        #: Steps waiting (PENDING, QUEUED) that still name a holder or a lease.
        self.waiting_steps_holding: Select = select(steps.c.instance_id, steps.c.name, steps.c.state).where(
            steps.c.state.in_([Status.PENDING.value, Status.QUEUED.value]),
            or_(steps.c.worker_id.is_not(None), steps.c.lease_expires_at.is_not(None)),
        )
        limited = func.coalesce(steps.c.item_of, steps.c.name)  # a Map's items count as their step
        #: Step ConcurrencyLimits with more steps holding a live lease than they allow.
        self.limits_exceeded: Select = (
            select(
                steps.c.workflow_id,
                limited.label("name"),
                steps.c.limit_key,
                func.count(),
                func.max(steps.c.concurrency_max),
            )
            .where(
                steps.c.state == Status.RUNNING.value,
                steps.c.concurrency_max.is_not(None),
                steps.c.lease_expires_at > dialect.now(),
            )
            .group_by(steps.c.workflow_id, limited, steps.c.limit_key)
            .having(func.count() > func.max(steps.c.concurrency_max))
        )
        #: Failed steps, with how often a RetryPolicy retried them (checked against their policy).
        self.steps_failed: Select = select(
            steps.c.instance_id,
            steps.c.workflow_id,
            steps.c.version,
            steps.c.name,
            steps.c.retries,
            steps.c.error,
        ).where(steps.c.state == Status.FAILED.value)
        maps = steps.alias("maps")
        #: Map items whose Map step is not in their instance.
        self.items_orphaned: Select = (
            select(steps.c.instance_id, steps.c.name, steps.c.item_of)
            .select_from(
                steps.outerjoin(
                    maps, (maps.c.instance_id == steps.c.instance_id) & (maps.c.name == steps.c.item_of)
                )
            )
            .where(steps.c.item_of.is_not(None), maps.c.id.is_(None))
        )
        parents = steps.alias("parents")
        #: Child instances whose parent has no SubWorkflow step of that name that started a child.
        self.children_orphaned: Select = (
            select(instances.c.id, instances.c.parent_instance_id, instances.c.parent_step)
            .select_from(
                instances.outerjoin(
                    parents,
                    (parents.c.instance_id == instances.c.parent_instance_id)
                    & (parents.c.name == instances.c.parent_step),
                )
            )
            .where(
                instances.c.parent_instance_id.is_not(None),
                or_(parents.c.id.is_(None), parents.c.child_instance_id.is_(None)),
            )
        )
        #: Map steps that succeeded, with their result, to compare with their items.
        self.maps_succeeded: Select = select(steps.c.instance_id, steps.c.name, steps.c.result).where(
            steps.c.item_count.is_not(None), steps.c.state == Status.SUCCEEDED.value
        )
        self.items_per_map: Select = (
            select(steps.c.instance_id, steps.c.item_of, func.count())
            .where(steps.c.item_of.is_not(None))
            .group_by(steps.c.instance_id, steps.c.item_of)
        )
        self.steps_views: Select = select(
            steps.c.name, steps.c.state, steps.c.action, steps.c.finished_at
        ).where(steps.c.instance_id == bindparam("p_instance_id"))
        #: Rows whose instance is gone: retention deletes an instance's rows with it, and events
        #: (which have no foreign key) by hand. Per instance: how many.
        self.events_orphaned: Select = _orphans(events.c.instance_id)
        self.steps_orphaned: Select = _orphans(steps.c.instance_id)
        self.signals_orphaned: Select = _orphans(signals.c.instance_id)
        #: Per workflow and version: its instances whose definition is not stored (instances
        #: have no foreign key to it: migration 0011).
        stored = exists().where(
            workflows.c.workflow_id == instances.c.workflow_id, workflows.c.version == instances.c.version
        )
        self.instances_without_definition: Select = (
            select(instances.c.workflow_id, instances.c.version, func.count())
            .where(not_(stored))
            .group_by(instances.c.workflow_id, instances.c.version)
            .order_by(instances.c.workflow_id, instances.c.version)
        )


def _orphans(instance_id: Any) -> Select:
    gone = not_(exists().where(instances.c.id == instance_id))
    return select(instance_id, func.count()).where(gone).group_by(instance_id).order_by(instance_id)


def _times_per_step(kind: EventKind) -> Subquery:
    """(instance_id, step_name, times): how many ``kind`` lines each step has."""
    return (
        select(events.c.instance_id, events.c.step_name, func.count().label("times"))
        .where(events.c.kind == kind.value)
        .group_by(events.c.instance_id, events.c.step_name)
        .subquery()
    )


def _successes_per_step() -> Subquery:
    """(instance_id, step_name, times): how many successes each step has: its ``succeeded``
    lines, and the one its SUCCEEDED row holds if no line does (see :mod:`..timeline`)."""
    lines = select(events.c.instance_id, events.c.step_name).where(events.c.kind == EventKind.SUCCEEDED.value)
    held = select(steps.c.instance_id, steps.c.name).where(
        steps.c.state == Status.SUCCEEDED.value, not_(step_success_logged())
    )
    every = lines.union_all(held).subquery()
    return (
        select(every.c.instance_id, every.c.step_name, func.count().label("times"))
        .group_by(every.c.instance_id, every.c.step_name)
        .subquery()
    )


@cache
def for_dialect(name: str) -> VerifyQueries:
    return VerifyQueries(dialect_of(name))
