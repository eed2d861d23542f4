"""Statements on leases: heartbeats renew them, the reaper takes back expired ones,
a stopping worker gives its steps back.

``lost`` counts the leases of a step that ran out. A step is queued again
after a lost lease while that count stays below ``max_attempts``, and fails
with "worker lost" once it reaches it: the lost-worker budget, apart from
RetryPolicy retries (``retries``) and claims given back unstarted
(``released``, a refund). ``attempt`` counts claims and only grows: reports
are fenced by it.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import ColumnElement, Select, Update, bindparam, select, tuple_, update

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import steps

RUNNING = Status.RUNNING.value


class LeaseQueries:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        now = dialect.now()
        lost_after = steps.c.lost + 1  # counting the lease that ran out
        #: Heartbeat: extend every lease the worker holds, returning them.
        self.steps_extend_leases: Update = (
            update(steps)
            .where(steps.c.worker_id == bindparam("p_worker_id"), steps.c.state == RUNNING)
            .values(lease_expires_at=dialect.now_plus(bindparam("p_lease_seconds")))
            .returning(steps.c.instance_id, steps.c.name, steps.c.attempt, steps.c.lease_expires_at)
        )
        #: The same for the steps handed to the worker only (``p_held``: instance, name, attempt).
        #: A claim that committed but whose reply never reached the worker (the connection
        #: dropped) is not renewed: it expires and is queued again, instead of staying RUNNING
        #: for as long as the worker that does not know it holds it keeps beating.
        self.steps_extend_held_leases: Update = self.steps_extend_leases.where(
            tuple_(steps.c.instance_id, steps.c.name, steps.c.attempt).in_(
                bindparam("p_held", expanding=True)
            )
        )
        #: Expired leases with attempts left, locked so concurrent reapers split the work.
        self.steps_expired_requeueable: Select = self._expired(lost_after < steps.c.max_attempts, lock=True)
        #: Expired leases on the last allowed attempt. Not locked here: each is
        #: failed in its own transaction that takes the instance lock first.
        self.steps_expired_final: Select = self._expired(lost_after >= steps.c.max_attempts, lock=False)
        #: Put locked, expired steps back in the queue (re-checked: a report may have won), at
        #: their old place in line (available_at is kept): work that was already started and
        #: lost is taken up again before the backlog queued after it.
        self.steps_requeue_expired: Update = (
            update(steps)
            .where(
                steps.c.id.in_(bindparam("p_ids", expanding=True)),
                steps.c.state == RUNNING,
                steps.c.lease_expires_at < now,
            )
            .values(state=Status.QUEUED.value, worker_id=None, lease_expires_at=None, lost=steps.c.lost + 1)
        )
        #: Fail a step whose last lease expired, if nothing else moved it meanwhile.
        self.step_fail_if_expired: Update = (
            update(steps)
            .where(
                steps.c.id == bindparam("p_id"),
                steps.c.state == RUNNING,
                steps.c.attempt == bindparam("p_attempt"),
                steps.c.lease_expires_at < now,
            )
            .values(
                state=Status.FAILED.value,
                error=bindparam("p_error"),
                lease_expires_at=None,
                finished_at=now,
                lost=steps.c.lost + 1,
            )
            .returning(steps.c.name)
        )
        #: Give back every step a stopping worker holds, to the end of the queue; refunded.
        self.steps_release_of_worker: Update = self._release(steps.c.worker_id == bindparam("p_worker_id"))
        #: Give back one claim of the worker (``p_instance_id``, ``p_name``, ``p_attempt``).
        self.step_release: Update = self._release(
            steps.c.worker_id == bindparam("p_worker_id"),
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name == bindparam("p_name"),
            steps.c.attempt == bindparam("p_attempt"),
        )

    def _release(self, *held: ColumnElement[bool]) -> Update:
        return (
            update(steps)
            .where(*held, steps.c.state == RUNNING)
            .values(
                state=Status.QUEUED.value,
                worker_id=None,
                lease_expires_at=None,
                available_at=self.dialect.now(),
                released=steps.c.released + 1,
            )
            .returning(steps.c.instance_id, steps.c.name, steps.c.attempt)
        )

    def _expired(self, attempts_condition: ColumnElement[bool], *, lock: bool) -> Select:
        query = (
            select(
                steps.c.id,
                steps.c.instance_id,
                steps.c.workflow_id,
                steps.c.version,
                steps.c.name,
                steps.c.attempt,
                steps.c.worker_id,
                steps.c.available_at,
                steps.c.queue,
            )
            .where(
                steps.c.state == RUNNING, steps.c.lease_expires_at < self.dialect.now(), attempts_condition
            )
            .order_by(steps.c.lease_expires_at)
            .limit(bindparam("p_limit"))
        )
        if lock and self.dialect.skip_locked:
            query = query.with_for_update(skip_locked=True)
        return query


@cache
def for_dialect(name: str) -> LeaseQueries:
    return LeaseQueries(dialect_of(name))
