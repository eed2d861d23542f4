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
    Integer,
    Select,
    String,
    Text,
    TextClause,
    Update,
    Uuid,
    and_,
    bindparam,
    func,
    insert,
    select,
    text,
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
        self.step_finish_if_held: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state == RUNNING,
                steps.c.worker_id == bindparam("p_worker_id"),
                steps.c.attempt == bindparam("p_attempt"),
            )
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
        #: The same write for reports without an attempt number: the one this worker holds.
        self.step_finish_if_held_any_attempt: Update = (
            update(steps)
            .where(
                steps.c.instance_id == bindparam("p_instance_id"),
                steps.c.name == bindparam("p_name"),
                steps.c.state == RUNNING,
                steps.c.worker_id == bindparam("p_worker_id"),
            )
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
        #: Expired leases with attempts left, locked so concurrent reapers split the work.
        self.steps_expired_requeueable: Select = self._expired(
            steps.c.attempt < steps.c.max_attempts, lock=True
        )
        #: Expired leases on the last allowed attempt. Not locked here: each is
        #: failed in its own transaction that takes the instance lock first.
        self.steps_expired_final: Select = self._expired(steps.c.attempt >= steps.c.max_attempts, lock=False)
        #: Put locked, expired steps back in the queue (re-checked: a report may have won).
        self.steps_requeue_expired: Update = (
            update(steps)
            .where(
                steps.c.id.in_(bindparam("p_ids", expanding=True)),
                steps.c.state == RUNNING,
                steps.c.lease_expires_at < now,
            )
            .values(state=QUEUED, worker_id=None, lease_expires_at=None, available_at=now)
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

    def _claim(self, workflow_filter, now, lease_end) -> Update:
        """Claim the oldest QUEUED step of the worker's workflows, in one statement.

        PostgreSQL skips rows another claimer holds (SKIP LOCKED), so workers
        never wait on each other and never get the same step; SQLite runs it
        inside ``BEGIN IMMEDIATE``, alone.
        """
        candidate = (
            select(steps.c.id)
            .where(steps.c.state == QUEUED, workflow_filter, steps.c.available_at <= now)
            .order_by(steps.c.id)
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
            select(steps.c.id, steps.c.instance_id, steps.c.name, steps.c.attempt, steps.c.worker_id)
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


class PostgresFastPaths:
    """PostgreSQL statements that do a whole claim or report in one round trip.

    Data-modifying CTEs let one statement update a step, queue its successors,
    finish the instance and append the events. They run in autocommit mode:
    the statement is its own transaction. Each takes the same locks in the
    same order as the general path (instance first, through the scalar
    subquery that the step update evaluates before touching any step row),
    so the two paths can serve the same instance at the same time. Each
    statement is written out whole, so what runs is what is read here.
    """

    #: Claim the oldest QUEUED step of one workflow, log it, and return the
    #: instance inputs and the predecessors' results (as one JSON object).
    STEP_CLAIM_ONE_WORKFLOW = """
        WITH claimed AS (
            UPDATE fuseline_steps
               SET state = 'RUNNING', attempt = attempt + 1, worker_id = CAST(:p_worker_id AS uuid),
                   lease_expires_at = clock_timestamp() + make_interval(secs => :p_lease_seconds),
                   started_at = clock_timestamp()
             WHERE id = (SELECT id FROM fuseline_steps
                          WHERE state = 'QUEUED'
                            AND workflow_id = :p_workflow_id AND version = :p_version
                            AND available_at <= clock_timestamp()
                          ORDER BY id LIMIT 1
                            FOR UPDATE SKIP LOCKED)
               AND state = 'QUEUED'
            RETURNING id, instance_id, workflow_id, version, name, attempt, inputs_from,
                      started_at, lease_expires_at
        ),
        logged AS (
            INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
            SELECT instance_id, clock_timestamp(), 'claimed', name, attempt, CAST(:p_worker_id AS uuid)
              FROM claimed
        )
        SELECT c.instance_id, c.workflow_id, c.version, c.name, c.attempt, c.started_at,
               c.lease_expires_at, i.inputs,
               (SELECT '{' || string_agg(to_json(p.name)::text || ':' || coalesce(p.result, 'null'), ',')
                           || '}'
                  FROM fuseline_steps p
                 WHERE p.instance_id = c.instance_id
                   AND p.name IN (SELECT json_array_elements_text(c.inputs_from::json))) AS results
          FROM claimed c JOIN fuseline_instances i ON i.id = c.instance_id
    """

    #: The same claim among several workflows (pairs of ids and versions).
    STEP_CLAIM_MANY_WORKFLOWS = """
        WITH claimed AS (
            UPDATE fuseline_steps
               SET state = 'RUNNING', attempt = attempt + 1, worker_id = CAST(:p_worker_id AS uuid),
                   lease_expires_at = clock_timestamp() + make_interval(secs => :p_lease_seconds),
                   started_at = clock_timestamp()
             WHERE id = (SELECT id FROM fuseline_steps
                          WHERE state = 'QUEUED'
                            AND (workflow_id, version) IN (
                                SELECT * FROM unnest(CAST(:p_workflow_ids AS text[]),
                                                     CAST(:p_versions AS text[])))
                            AND available_at <= clock_timestamp()
                          ORDER BY id LIMIT 1
                            FOR UPDATE SKIP LOCKED)
               AND state = 'QUEUED'
            RETURNING id, instance_id, workflow_id, version, name, attempt, inputs_from,
                      started_at, lease_expires_at
        ),
        logged AS (
            INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
            SELECT instance_id, clock_timestamp(), 'claimed', name, attempt, CAST(:p_worker_id AS uuid)
              FROM claimed
        )
        SELECT c.instance_id, c.workflow_id, c.version, c.name, c.attempt, c.started_at,
               c.lease_expires_at, i.inputs,
               (SELECT '{' || string_agg(to_json(p.name)::text || ':' || coalesce(p.result, 'null'), ',')
                           || '}'
                  FROM fuseline_steps p
                 WHERE p.instance_id = c.instance_id
                   AND p.name IN (SELECT json_array_elements_text(c.inputs_from::json))) AS results
          FROM claimed c JOIN fuseline_instances i ON i.id = c.instance_id
    """

    #: Accept a success (fenced: holder and attempt) and queue the successors
    #: that depend on this step alone.
    STEP_SUCCEED_AND_QUEUE = """
        WITH done AS (
            UPDATE fuseline_steps
               SET state = 'SUCCEEDED', result = :p_result, error = NULL, action = NULL,
                   reported_by = CAST(:p_worker_id AS uuid), lease_expires_at = NULL,
                   finished_at = clock_timestamp()
             WHERE instance_id = (SELECT id FROM fuseline_instances
                                   WHERE id = CAST(:p_instance_id AS uuid)
                                     AND workflow_id = :p_workflow_id AND version = :p_version
                                     FOR NO KEY UPDATE)
               AND name = :p_name AND state = 'RUNNING'
               AND worker_id = CAST(:p_worker_id AS uuid) AND attempt = :p_attempt
            RETURNING instance_id, attempt
        ),
        queued AS (
            UPDATE fuseline_steps s
               SET state = 'QUEUED', available_at = clock_timestamp(),
                   inputs_from = CASE WHEN s.name = ANY(CAST(:p_consumers AS text[]))
                                      THEN :p_inputs_from END
              FROM done
             WHERE s.instance_id = done.instance_id
               AND s.name = ANY(CAST(:p_queue AS text[])) AND s.state = 'PENDING'
            RETURNING s.instance_id, s.name
        ),
        logged AS (
            INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
            SELECT instance_id, clock_timestamp(), 'succeeded', CAST(:p_name AS varchar), attempt,
                   CAST(:p_worker_id AS uuid)
              FROM done
            UNION ALL
            SELECT instance_id, clock_timestamp(), 'queued', name, NULL, NULL FROM queued
        ),
        -- A fan-out: this worker takes one successor, idle workers are woken for the rest.
        announced AS (
            SELECT pg_notify('fuseline_work', '') FROM (SELECT count(*) AS n FROM queued) q WHERE q.n > 1
        )
        SELECT attempt, (SELECT count(*) FROM announced) AS announced FROM done
    """

    #: Accept the success of the step that ends the instance, and end it with its result.
    STEP_SUCCEED_AND_FINISH = """
        WITH done AS (
            UPDATE fuseline_steps
               SET state = 'SUCCEEDED', result = :p_result, error = NULL, action = NULL,
                   reported_by = CAST(:p_worker_id AS uuid), lease_expires_at = NULL,
                   finished_at = clock_timestamp()
             WHERE instance_id = (SELECT id FROM fuseline_instances
                                   WHERE id = CAST(:p_instance_id AS uuid)
                                     AND workflow_id = :p_workflow_id AND version = :p_version
                                     FOR NO KEY UPDATE)
               AND name = :p_name AND state = 'RUNNING'
               AND worker_id = CAST(:p_worker_id AS uuid) AND attempt = :p_attempt
            RETURNING instance_id, attempt
        ),
        finished AS (
            UPDATE fuseline_instances i
               SET status = 'SUCCEEDED', result = :p_result,
                   finished_at = clock_timestamp(), updated_at = clock_timestamp()
              FROM done
             WHERE i.id = done.instance_id AND i.status = 'RUNNING'
            RETURNING i.id
        ),
        logged AS (
            INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
            SELECT instance_id, clock_timestamp(), 'succeeded', CAST(:p_name AS varchar), attempt,
                   CAST(:p_worker_id AS uuid)
              FROM done
            UNION ALL
            SELECT id, clock_timestamp(), 'instance_succeeded', NULL, NULL, NULL FROM finished
        )
        SELECT attempt FROM done
    """

    #: Create instances (ids and inputs as parallel arrays) with all their
    #: steps (roots QUEUED, the rest PENDING), log them, and wake idle workers.
    INSTANCES_DISPATCH = """
        WITH created AS (
            INSERT INTO fuseline_instances (id, workflow_id, version, status, inputs,
                                            created_at, updated_at)
            SELECT i.id, :p_workflow_id, :p_version, 'RUNNING', i.inputs,
                   clock_timestamp(), clock_timestamp()
              FROM unnest(CAST(:p_ids AS uuid[]), CAST(:p_inputs AS text[]))
                   WITH ORDINALITY AS i(id, inputs, n)
             ORDER BY i.n
            RETURNING id
        ),
        stepped AS (
            INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, max_attempts,
                                        available_at)
            SELECT c.id, :p_workflow_id, :p_version, s.name,
                   CASE WHEN s.root THEN 'QUEUED' ELSE 'PENDING' END, s.max_attempts,
                   CASE WHEN s.root THEN clock_timestamp() END
              FROM unnest(CAST(:p_ids AS uuid[])) WITH ORDINALITY AS c(id, n)
             CROSS JOIN unnest(CAST(:p_names AS text[]), CAST(:p_roots AS boolean[]),
                               CAST(:p_max_attempts AS integer[]))
                        WITH ORDINALITY AS s(name, root, max_attempts, k)
             WHERE c.id IN (SELECT id FROM created)
             ORDER BY c.n, s.k
            RETURNING instance_id, name, state
        ),
        logged AS (
            INSERT INTO fuseline_events (instance_id, at, kind, step_name)
            SELECT id, clock_timestamp(), 'dispatched', NULL FROM created
            UNION ALL
            SELECT instance_id, clock_timestamp(), 'queued', name FROM stepped WHERE state = 'QUEUED'
        ),
        announced AS (
            SELECT pg_notify('fuseline_work', '')
        )
        SELECT count(*) AS created, (SELECT count(*) FROM announced) AS announced FROM created
    """

    def __init__(self) -> None:
        self.instances_dispatch = text(self.INSTANCES_DISPATCH)
        self.step_claim_one_workflow = self._claim(self.STEP_CLAIM_ONE_WORKFLOW)
        self.step_claim_many_workflows = self._claim(self.STEP_CLAIM_MANY_WORKFLOWS)
        self.step_succeed_and_queue = text(self.STEP_SUCCEED_AND_QUEUE)
        self.step_succeed_and_finish = text(self.STEP_SUCCEED_AND_FINISH)

    @staticmethod
    def _claim(sql: str) -> TextClause:
        return text(sql).columns(
            instance_id=Uuid(as_uuid=False),
            workflow_id=String(),
            version=String(),
            name=String(),
            attempt=Integer(),
            started_at=DateTime(timezone=True),
            lease_expires_at=DateTime(timezone=True),
            inputs=Text(),
            results=Text(),
        )


@cache
def postgres_fast_paths() -> PostgresFastPaths:
    return PostgresFastPaths()
