"""Every SQL statement ``SqlBroker`` runs, named entity-first and built once per dialect.

Each statement says what it guarantees. Writes that depend on a lease are
guarded in their WHERE clause (state, holder, attempt) and their row count
or RETURNING rows are checked by the caller: a worker that lost its lease
changes nothing. Statements take parameters only; no SQL is built from
values.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    DateTime,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    type_coerce,
    update,
)

from ...states import Status
from .dialects import Dialect, dialect_of
from .listener import CHANNEL as WORK_CHANNEL
from .models import events, instances, steps, workers, workflows

RUNNING = Status.RUNNING.value
QUEUED = Status.QUEUED.value
PENDING = Status.PENDING.value
FAILED = Status.FAILED.value
CANCELLED = Status.CANCELLED.value
UNFINISHED = [PENDING, QUEUED, RUNNING]


class Queries:
    """The statements of one dialect. Bound parameters are prefixed ``p_``."""

    def __init__(self, dialect: Dialect) -> None:
        now = dialect.now()
        lease_end = dialect.now_plus(bindparam("p_lease_seconds"))
        self.dialect = dialect

        # -- workflows ------------------------------------------------------------------
        #: Store a definition unless one exists under the same key (then compare hashes).
        self.workflow_insert: Insert = dialect.insert_ignoring_conflicts(workflows)
        self.workflow_get: Select = select(workflows.c.schema_hash, workflows.c.definition).where(
            workflows.c.workflow_id == bindparam("p_workflow_id"),
            workflows.c.version == bindparam("p_version"),
        )

        # -- workers --------------------------------------------------------------------
        self.worker_insert: Insert = insert(workers).values(started_at=now, last_heartbeat=now)
        self.worker_get: Select = select(workers.c.workflows).where(workers.c.id == bindparam("p_worker_id"))
        #: Heartbeat; zero rows means the worker id is unknown.
        self.worker_heartbeat: Update = (
            update(workers).where(workers.c.id == bindparam("p_worker_id")).values(last_heartbeat=now)
        )
        self.worker_stop: Update = (
            update(workers).where(workers.c.id == bindparam("p_worker_id")).values(stopped_at=now)
        )
        self.workers_list: Select = select(
            workers, type_coerce(now, DateTime(timezone=True)).label("db_now")
        ).order_by(workers.c.started_at.desc(), workers.c.id.desc())
        self.steps_running_of_workers: Select = (
            select(steps.c.worker_id, steps.c.instance_id, steps.c.name)
            .where(steps.c.state == RUNNING, steps.c.worker_id.in_(bindparam("p_worker_ids", expanding=True)))
            .order_by(steps.c.id)
        )

        # -- instances ------------------------------------------------------------------
        self.instance_insert: Insert = insert(instances).values(
            status=RUNNING, created_at=now, updated_at=now
        )
        #: The per-instance lock: every transaction that evaluates joins or
        #: changes several steps of an instance takes it first (one lock order).
        #: FOR NO KEY UPDATE, not FOR UPDATE: it must not block the KEY SHARE
        #: lock that inserting an event (a foreign key to the instance) takes,
        #: or a claim or reaper holding a step's row lock and a report waiting
        #: for that row deadlock.
        self.instance_lock: Select = (
            select(instances.c.workflow_id, instances.c.version, instances.c.status)
            .where(instances.c.id == bindparam("p_instance_id"))
            .with_for_update(key_share=True)
        )
        self.instance_inputs: Select = select(instances.c.inputs).where(
            instances.c.id == bindparam("p_instance_id")
        )
        #: Finalize exactly once: only a RUNNING instance moves to a final status.
        self.instance_finish: Update = (
            update(instances)
            .where(instances.c.id == bindparam("p_instance_id"), instances.c.status == RUNNING)
            .values(
                status=bindparam("p_status"),
                result=bindparam("p_result"),
                error=bindparam("p_error"),
                finished_at=now,
                updated_at=now,
            )
        )
        self.instance_reopen: Update = (
            update(instances)
            .where(instances.c.id == bindparam("p_instance_id"))
            .values(status=RUNNING, result=None, error=None, finished_at=None, updated_at=now)
        )
        self.instance_get: Select = select(instances).where(instances.c.id == bindparam("p_instance_id"))
        self.instance_any_running: Select = (
            select(instances.c.id).where(instances.c.status == RUNNING).limit(1)
        )
        self.instance_any_running_of: Select = (
            select(instances.c.id)
            .where(
                instances.c.status == RUNNING,
                tuple_(instances.c.workflow_id, instances.c.version).in_(bindparam("p_keys", expanding=True)),
            )
            .limit(1)
        )

        # -- steps: creating and claiming -------------------------------------------------
        #: New steps: roots are QUEUED and available at once, the rest wait PENDING.
        self.steps_insert_queued: Insert = insert(steps).values(state=QUEUED, available_at=now)
        self.steps_insert_pending: Insert = insert(steps).values(state=PENDING)
        self.step_claim_one_workflow: Update = self._claim(
            and_(
                steps.c.workflow_id == bindparam("p_workflow_id"),
                steps.c.version == bindparam("p_version"),
            ),
            now,
            lease_end,
        )
        self.step_claim_many_workflows: Update = self._claim(
            tuple_(steps.c.workflow_id, steps.c.version).in_(bindparam("p_keys", expanding=True)),
            now,
            lease_end,
        )
        #: Results of named steps of an instance (predecessor results, outputs).
        self.step_results: Select = select(steps.c.name, steps.c.result).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name.in_(bindparam("p_names", expanding=True)),
        )

        # -- steps: reports and the rules ---------------------------------------------------
        #: The fencing write: accepted only from the holder of the current lease.
        self.step_finish_if_held: Update = self._finish_if_held(now, match_attempt=True)
        #: The same write for reports without an attempt number: the one this worker holds.
        self.step_finish_if_held_any_attempt: Update = self._finish_if_held(now, match_attempt=False)
        self.step_get: Select = select(
            steps.c.state, steps.c.worker_id, steps.c.reported_by, steps.c.attempt, steps.c.result
        ).where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
        #: What the join rules read: every step's state, branch and finish time.
        self.steps_views: Select = select(
            steps.c.name, steps.c.state, steps.c.action, steps.c.finished_at
        ).where(steps.c.instance_id == bindparam("p_instance_id"))
        #: Queue a successor, once: only a PENDING step moves.
        self.step_queue_if_pending: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state == PENDING,
            )
            .values(state=QUEUED, inputs_from=bindparam("p_inputs_from"), available_at=now)
        )
        #: Skip or cancel steps the rules decided on; only PENDING ones move.
        self.steps_close_if_pending: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name.in_(bindparam("p_names", expanding=True)),
                steps.c.state == PENDING,
            )
            .values(state=bindparam("p_state"), finished_at=now)
        )
        self.step_first_failure: Select = (
            select(steps.c.name, steps.c.error)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.state == FAILED)
            .order_by(steps.c.finished_at, steps.c.id)
            .limit(1)
        )
        self.steps_of_instances: Select = (
            select(steps)
            .where(steps.c.instance_id.in_(bindparam("p_instance_ids", expanding=True)))
            .order_by(steps.c.id)
        )

        # -- steps: leases ----------------------------------------------------------------
        #: Heartbeat: extend every lease the worker holds, returning them.
        self.steps_extend_leases: Update = (
            update(steps)
            .where(steps.c.worker_id == bindparam("p_worker_id"), steps.c.state == RUNNING)
            .values(lease_expires_at=lease_end)
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
        self.steps_expired_requeueable: Select = self._expired(
            steps.c.attempt < steps.c.max_attempts, lock=True
        )
        #: Expired leases on the last allowed attempt. Not locked here: each is
        #: failed in its own transaction that takes the instance lock first.
        self.steps_expired_final: Select = self._expired(steps.c.attempt >= steps.c.max_attempts, lock=False)
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
            .values(state=QUEUED, worker_id=None, lease_expires_at=None)
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
            .values(state=FAILED, error=bindparam("p_error"), lease_expires_at=None, finished_at=now)
            .returning(steps.c.name)
        )
        #: Give back the steps of a stopping worker; the attempt is refunded.
        self.steps_release_of_worker: Update = (
            update(steps)
            .where(steps.c.worker_id == bindparam("p_worker_id"), steps.c.state == RUNNING)
            .values(
                state=QUEUED,
                worker_id=None,
                lease_expires_at=None,
                available_at=now,
                max_attempts=steps.c.max_attempts + 1,
            )
            .returning(steps.c.instance_id, steps.c.name, steps.c.attempt)
        )

        # -- steps: cancel and retry ----------------------------------------------------------
        self.steps_cancel_unfinished: Update = (
            update(steps)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.state.in_(UNFINISHED))
            .values(state=CANCELLED, lease_expires_at=None, finished_at=now)
            .returning(steps.c.name, steps.c.attempt)
        )
        self.steps_broken: Select = select(steps.c.name).where(
            steps.c.instance_id == bindparam("p_instance_id"), steps.c.state.in_([FAILED, CANCELLED])
        )
        #: Back to PENDING for a retry; attempts keep growing, the budget starts afresh.
        self.step_reset_for_retry: Update = (
            update(steps)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
            .values(
                state=PENDING,
                max_attempts=steps.c.attempt + bindparam("p_budget"),
                result=None,
                error=None,
                action=None,
                inputs_from=None,
                worker_id=None,
                reported_by=None,
                lease_expires_at=None,
                started_at=None,
                finished_at=None,
            )
        )

        # -- wake-ups ---------------------------------------------------------------------
        #: Tell idle workers (LISTEN fuseline_work) that steps were queued; sent at commit.
        self.work_announce: Select | None = (
            select(func.pg_notify(WORK_CHANNEL, "")) if dialect.is_postgresql else None
        )

        # -- events -----------------------------------------------------------------------
        self.events_append: Insert = insert(events).values(at=now)
        self.events_of_instance: Select = (
            select(events).where(events.c.instance_id == bindparam("p_instance_id")).order_by(events.c.id)
        )

    @staticmethod
    def _finish_if_held(now, *, match_attempt: bool) -> Update:
        held = [
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name == bindparam("p_name"),
            steps.c.state == RUNNING,
            steps.c.worker_id == bindparam("p_worker_id"),
        ]
        if match_attempt:
            held.append(steps.c.attempt == bindparam("p_attempt"))
        return (
            update(steps)
            .where(*held)
            .values(
                state=bindparam("p_state"),
                result=bindparam("p_result"),
                error=bindparam("p_error"),
                action=bindparam("p_action"),
                reported_by=bindparam("p_worker_id"),
                lease_expires_at=None,
                finished_at=now,
            )
            .returning(steps.c.attempt)
        )

    def _claim(self, workflow_filter, now, lease_end) -> Update:
        """Claim the QUEUED step of the worker's workflows that became available first, in one statement.

        PostgreSQL skips rows another claimer holds (SKIP LOCKED), so workers
        never wait on each other and never get the same step; SQLite runs it
        inside ``BEGIN IMMEDIATE``, alone.
        """
        candidate = (
            select(steps.c.id)
            .where(steps.c.state == QUEUED, workflow_filter, steps.c.available_at <= now)
            .order_by(steps.c.available_at, steps.c.id)
            .limit(1)
        )
        if self.dialect.skip_locked:
            candidate = candidate.with_for_update(skip_locked=True)
        return (
            update(steps)
            .where(steps.c.id == candidate.scalar_subquery(), steps.c.state == QUEUED)
            .values(
                state=RUNNING,
                attempt=steps.c.attempt + 1,
                worker_id=bindparam("p_worker_id"),
                lease_expires_at=lease_end,
                started_at=now,
            )
            .returning(
                steps.c.instance_id,
                steps.c.workflow_id,
                steps.c.version,
                steps.c.name,
                steps.c.attempt,
                steps.c.inputs_from,
                steps.c.started_at,
                steps.c.lease_expires_at,
            )
        )

    def _expired(self, attempts_condition, *, lock: bool) -> Select:
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
def queries_for(dialect_name: str) -> Queries:
    return Queries(dialect_of(dialect_name))
