"""Statements that accept a report and apply the rules (``fuseline_steps``, ``fuseline_instances``).

Every transaction that evaluates joins or changes several steps of one
instance takes :attr:`ReportQueries.instance_lock` first, so they run one
after the other per instance and always lock the instance before its steps.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import ColumnElement, Select, Update, bindparam, func, select, true, update

from ....states import FINAL_STATES, Status
from ...scheduling import SIGNALS_QUEUE, TIMERS_QUEUE
from ..dialects import Dialect, dialect_of
from ..models import instances, steps

RUNNING = Status.RUNNING.value
PENDING = Status.PENDING.value


class ReportQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = dialect.now()
        #: The per-instance lock. FOR NO KEY UPDATE is the weakest row lock that still
        #: serialises these transactions: readers and foreign-key checks are not blocked.
        self.instance_lock: Select = (
            select(instances.c.workflow_id, instances.c.version, instances.c.status)
            .where(instances.c.id == bindparam("p_instance_id"))
            .with_for_update(key_share=True)
        )
        #: The fencing write: accepted only from the holder of the current lease of that attempt.
        self.step_finish_if_held: Update = self._finish_if_held(
            now, steps.c.attempt == bindparam("p_attempt")
        )
        #: The same write for reports without an attempt number: the one this worker holds.
        self.step_finish_if_held_any_attempt: Update = self._finish_if_held(now)
        #: A failure its RetryPolicy retries: back to QUEUED after ``p_delay`` seconds, no lease
        #: held meanwhile, the error kept; fenced like any report (holder and attempt).
        self.step_retry_if_held: Update = (
            update(steps)
            .where(*_held_by_reporter(), steps.c.attempt == bindparam("p_attempt"))
            .values(
                state=Status.QUEUED.value,
                available_at=dialect.now_plus(bindparam("p_delay")),
                retries=steps.c.retries + 1,
                error=bindparam("p_error"),
                reported_by=bindparam("p_worker_id"),
                worker_id=None,
                lease_expires_at=None,
            )
            .returning(steps.c.attempt, steps.c.retries, steps.c.available_at)
        )
        #: What a refused report is explained with.
        self.step_get: Select = select(
            steps.c.state,
            steps.c.worker_id,
            steps.c.reported_by,
            steps.c.attempt,
            steps.c.result,
            steps.c.retries,
        ).where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
        #: What the join rules read: every step's state, branch and finish time.
        self.steps_views: Select = select(
            steps.c.name, steps.c.state, steps.c.action, steps.c.finished_at
        ).where(steps.c.instance_id == bindparam("p_instance_id"))
        #: Queue a successor, once: only a PENDING step moves. A Sleep's clock starts now
        #: (``p_delay`` seconds; NULL for other steps).
        self.step_queue_if_pending: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state == PENDING,
            )
            .values(
                state=Status.QUEUED.value,
                inputs_from=bindparam("p_inputs_from"),
                available_at=dialect.now_plus(func.coalesce(bindparam("p_delay"), 0.0)),
            )
        )
        #: Skip or cancel the steps the rules decided on; only PENDING ones move.
        self.steps_close_if_pending: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name.in_(bindparam("p_names", expanding=True)),
                steps.c.state == PENDING,
            )
            .values(state=bindparam("p_state"), finished_at=now)
        )
        #: The failure an instance's error names: the first step that failed.
        self.step_first_failure: Select = (
            select(steps.c.name, steps.c.error)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.state == Status.FAILED.value)
            .order_by(steps.c.finished_at, steps.c.id)
            .limit(1)
        )
        #: Sleeps of a workflow whose time has come, locked so concurrent brokers split them.
        timers = (
            select(steps.c.id, steps.c.instance_id, steps.c.name)
            .where(
                steps.c.state == Status.QUEUED.value,
                steps.c.workflow_id == bindparam("p_workflow_id"),
                steps.c.version == bindparam("p_version"),
                steps.c.queue.in_((TIMERS_QUEUE, SIGNALS_QUEUE)),
                steps.c.available_at <= now,
            )
            .order_by(steps.c.available_at, steps.c.id)
            .limit(bindparam("p_limit"))
        )
        self.steps_due_timers: Select = (
            timers.with_for_update(skip_locked=True) if dialect.skip_locked else timers
        )
        #: The broker completes a Sleep itself (no worker ran it), if nothing moved it meanwhile.
        self.step_finish_timer: Update = (
            update(steps)
            .where(steps.c.id == bindparam("p_id"), steps.c.state == Status.QUEUED.value)
            .values(state=Status.SUCCEEDED.value, result="null", started_at=now, finished_at=now)
            .returning(steps.c.name)
        )
        #: Finalize exactly once: only a RUNNING instance moves to a final status. "Not final"
        #: rather than "= RUNNING" (an instance has no other unfinished status): PostgreSQL
        #: cannot read that through the status index, which a planner without statistics on
        #: the table (the first minute of a new database) found as cheap as the primary key
        #: and scanned every RUNNING instance with (tests/sql/test_sql_plans_unanalyzed.py).
        self.instance_finish: Update = (
            update(instances)
            .where(
                instances.c.id == bindparam("p_instance_id"),
                instances.c.status.not_in(sorted(s.value for s in FINAL_STATES)),
            )
            .values(
                status=bindparam("p_status"),
                result=bindparam("p_result"),
                error=bindparam("p_error"),
                finished_at=now,
                updated_at=now,
            )
        )

    @staticmethod
    def _finish_if_held(now: ColumnElement, *attempt: ColumnElement[bool]) -> Update:
        return (
            update(steps)
            .where(*_held_by_reporter(), *attempt)
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


def _held_by_reporter() -> tuple[ColumnElement[bool], ...]:
    """The fence of every report: the step (``p_instance_id``, ``p_name``) is RUNNING and held
    by the reporting worker (``p_worker_id``). "RUNNING" is said as ``(state = 'RUNNING') IS
    true``, which no partial index's predicate matches, so the step is found through the unique
    (instance_id, name) index and never through the worker's running steps (see
    ``pg_statements._HELD_RUNNING``)."""
    return (
        steps.c.instance_id == bindparam("p_instance_id"),
        steps.c.name == bindparam("p_name"),
        (steps.c.state == RUNNING).is_(true()),
        steps.c.worker_id == bindparam("p_worker_id"),
    )


@cache
def for_dialect(name: str) -> ReportQueries:
    return ReportQueries(dialect_of(name))
