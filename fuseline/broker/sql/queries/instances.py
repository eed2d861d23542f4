"""Statements that create, read, cancel and retry instances (``fuseline_instances`` and their steps)."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    DateTime,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from ....states import UNFINISHED_STATES, Status
from ...base import InstancePage
from ...repairs import REPAIRABLE_STATES
from ...scheduling import CHILDREN_QUEUE, SIGNALS_QUEUE
from ..dialects import Dialect, dialect_of
from ..models import instances, steps

RUNNING = Status.RUNNING.value
#: What a step's retry clears: its outcome, the lease of its last attempt, its timestamps.
_CLEARED_BY_RETRY = (
    *("result", "error", "action", "inputs_from", "worker_id", "reported_by"),
    *("lease_expires_at", "started_at", "finished_at", "item_count", "child_instance_id"),
)


class InstanceQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = dialect.now()
        #: New instances; one whose key the workflow already has is not inserted (no row comes
        #: back: the caller then reads the existing one with ``instance_by_key``). Waits for a
        #: concurrent insert of the same key to commit or roll back, so two dispatchers of one
        #: key get one instance.
        self.instance_insert: Insert = (
            dialect.insert_ignoring_conflicts(instances)
            .values(status=RUNNING, created_at=now, updated_at=now)
            .returning(instances.c.id)
        )
        self.instance_by_key: Select = select(instances.c.id, instances.c.inputs).where(
            instances.c.workflow_id == bindparam("p_workflow_id"), instances.c.key == bindparam("p_key")
        )
        #: New steps: roots QUEUED, available at ``p_at`` or ``p_delay`` seconds from now (NULL:
        #: now), the rest PENDING with no availability yet (``p_queued`` says which).
        self.steps_insert: Insert = insert(steps).values(
            available_at=case(
                (
                    bindparam("p_queued"),
                    func.coalesce(
                        bindparam("p_at", type_=DateTime(timezone=True)),
                        dialect.now_plus(func.coalesce(bindparam("p_delay"), 0.0)),
                    ),
                ),
                else_=None,
            )
        )
        self.instance_get: Select = select(instances).where(instances.c.id == bindparam("p_instance_id"))
        self.instance_created_at: Select = select(instances.c.created_at).where(
            instances.c.id == bindparam("p_instance_id")
        )
        self.instance_exists: Select = select(instances.c.id).where(
            instances.c.id == bindparam("p_instance_id")
        )
        #: What an instance's history reads from its row (:mod:`..timeline`).
        self.instance_history: Select = select(
            instances.c.workflow_id,
            instances.c.version,
            instances.c.status,
            instances.c.created_at,
            instances.c.finished_at,
        ).where(instances.c.id == bindparam("p_instance_id"))
        #: Work in progress: a RUNNING instance with a step running or queued, other than one
        #: waiting for a signal or for a child instance (only something outside moves those).
        moving = (
            select(steps.c.id)
            .where(
                steps.c.instance_id == instances.c.id,
                steps.c.state.in_((Status.QUEUED.value, RUNNING)),
                steps.c.queue.not_in((SIGNALS_QUEUE, CHILDREN_QUEUE)),
            )
            .exists()
        )
        self.instance_any_running: Select = (
            select(instances.c.id).where(instances.c.status == RUNNING, moving).limit(1)
        )
        self.instance_any_running_of: Select = (
            select(instances.c.id)
            .where(
                instances.c.status == RUNNING,
                tuple_(instances.c.workflow_id, instances.c.version).in_(bindparam("p_keys", expanding=True)),
                moving,
            )
            .limit(1)
        )
        self.steps_of_instances: Select = (
            select(steps)
            .where(steps.c.instance_id.in_(bindparam("p_instance_ids", expanding=True)))
            .order_by(steps.c.id)
        )
        #: Cancel: every unfinished step ends CANCELLED (late reports are then refused).
        self.steps_cancel_unfinished: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.state.in_([s.value for s in UNFINISHED_STATES]),
            )
            .values(state=Status.CANCELLED.value, lease_expires_at=None, finished_at=now)
            .returning(steps.c.name, steps.c.attempt)
        )
        self.steps_broken: Select = select(steps.c.name).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.state.in_([Status.FAILED.value, Status.CANCELLED.value]),
        )
        #: Back to PENDING for a retry: ``attempt`` keeps growing (reports are fenced by it), the
        #: lost-worker and RetryPolicy budgets start afresh.
        self.step_reset_for_retry: Update = (
            update(steps)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
            .values(
                state=Status.PENDING.value,
                max_attempts=bindparam("p_budget"),
                lost=0,
                retries=0,
                **dict.fromkeys(_CLEARED_BY_RETRY),
            )
        )
        #: An operator ends a step not yet done, FAILED or CANCELLED (skip, set-output); its
        #: holder, if any, loses it: the attempt stays, so the holder's late report is refused.
        self.step_end_by_operator: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state.in_([s.value for s in REPAIRABLE_STATES]),
            )
            .values(
                state=bindparam("p_state"),
                result=bindparam("p_result"),
                action=bindparam("p_action"),
                error=None,
                worker_id=None,
                reported_by=None,
                lease_expires_at=None,
                finished_at=now,
            )
            .returning(steps.c.attempt)
        )
        self.instance_reopen: Update = (
            update(instances)
            .where(instances.c.id == bindparam("p_instance_id"))
            .values(status=RUNNING, result=None, error=None, finished_at=None, updated_at=now)
        )

    @staticmethod
    def instances_page(page: InstancePage, after: Any = None) -> Select:
        """Instances, newest first, matching the page's filters. ``after`` is the created_at of
        the instance ``page.after``: the page starts just below it in (created_at, id) order,
        so a deep page costs what the first does (the indexes lead with created_at)."""
        query = select(instances).order_by(instances.c.created_at.desc(), instances.c.id.desc())
        if page.status is not None:
            query = query.where(instances.c.status == page.status.value)
        if page.workflow_id is not None:
            query = query.where(instances.c.workflow_id == page.workflow_id)
        if page.since is not None:
            query = query.where(instances.c.created_at >= page.since)
        if page.until is not None:
            query = query.where(instances.c.created_at < page.until)
        if page.key is not None:
            query = query.where(instances.c.key == page.key)
        if page.after is not None:
            query = query.where(
                instances.c.created_at <= after,
                or_(
                    instances.c.created_at < after,
                    and_(instances.c.created_at == after, instances.c.id < page.after),
                ),
            )
        return query.limit(max(0, int(page.limit))).offset(max(0, int(page.offset)))


@cache
def for_dialect(name: str) -> InstanceQueries:
    return InstanceQueries(dialect_of(name))
