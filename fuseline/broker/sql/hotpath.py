"""The PostgreSQL hot path: claims, reports and dispatches in one statement each.

Every step a worker runs costs a claim and a report, so these statements
skip the general machinery: each is one data-modifying CTE that updates the
step, queues its successors or finishes the instance, and appends the events,
sent on a connection this thread keeps open, in autocommit mode (the
statement is its own transaction), and prepared by the server after a few
uses. They take the same locks in the same order as the general path
(the instance first, through the scalar subquery the step update evaluates
before it touches a step row), so both paths can serve one instance at once.

Claims run on a connection with ``synchronous_commit = off`` (see
:func:`.engine.create_claim_engine`); reports and dispatches are durable.
The claim statements differ only in which steps they may pick, so they are
built from one template (``_claim``); the others are written out whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ...errors import DatabaseError, DatabaseUnavailable

logger = logging.getLogger("fuseline.broker")


def _claim(*, many: bool = False, batch: bool = False, guard: str = "") -> str:
    """A claim statement: the QUEUED steps (of one workflow, or of ``many``) that became
    available first, marked RUNNING for this worker and logged, each returned with the instance
    inputs and the predecessors' results (as one JSON object).

    One step is picked by ``id = (SELECT ... LIMIT 1)``; a batch by ``id = ANY(ARRAY(...))``,
    which runs the locking subquery exactly once (an ``IN`` may be planned as a join that runs
    it again and claims more than the limit). Several workflows are searched one at a time
    (a lateral subquery per workflow, each an ordered walk of the queued-steps index): a
    ``(workflow_id, version) IN (...)`` condition cannot use that index's order and sorts every
    queued row instead. Each workflow is read from the broker's floor on (``p_floor`` or
    ``p_floors``; NULL reads from the oldest entry): see :mod:`.claimfloor`.
    """
    limit = "%(p_limit)s" if batch else "1"
    # Only the constants of this function are pasted in (S608 is about user input).
    if many:
        pick = f"""SELECT q.id FROM unnest(CAST(%(p_workflow_ids)s AS text[]),
                                        CAST(%(p_versions)s AS text[]),
                                        CAST(%(p_floors)s AS timestamptz[])) AS k(workflow_id, version, floor)
                     CROSS JOIN LATERAL (
                        SELECT id, available_at FROM fuseline_steps
                         WHERE state = 'QUEUED'
                           AND workflow_id = k.workflow_id AND version = k.version
                           AND available_at >= COALESCE(k.floor, '-infinity')
                           AND available_at <= clock_timestamp()
                         ORDER BY available_at, id LIMIT {limit}
                           FOR UPDATE SKIP LOCKED) AS q
                     ORDER BY q.available_at, q.id LIMIT {limit}"""  # noqa: S608
    else:
        pick = f"""SELECT id FROM fuseline_steps
                      WHERE state = 'QUEUED'
                        AND workflow_id = %(p_workflow_id)s AND version = %(p_version)s
                        AND available_at >= COALESCE(CAST(%(p_floor)s AS timestamptz), '-infinity')
                        AND available_at <= clock_timestamp()
                      ORDER BY available_at, id LIMIT {limit}
                        FOR UPDATE SKIP LOCKED"""  # noqa: S608
    picked = f"id = ANY(ARRAY({pick}))" if batch else f"id = ({pick})"
    return f"""
    WITH claimed AS (
        UPDATE fuseline_steps
           SET state = 'RUNNING', attempt = attempt + 1, worker_id = CAST(%(p_worker_id)s AS uuid),
               lease_expires_at = clock_timestamp() + make_interval(secs => %(p_lease_seconds)s),
               started_at = clock_timestamp()
         WHERE {picked}
           AND state = 'QUEUED'{guard}
        RETURNING id, instance_id, workflow_id, version, name, attempt, inputs_from,
                  started_at, lease_expires_at, available_at
    ),
    logged AS (
        INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
        SELECT instance_id, clock_timestamp(), 'claimed', name, attempt, CAST(%(p_worker_id)s AS uuid)
          FROM claimed
    )
    SELECT c.instance_id, c.workflow_id, c.version, c.name, c.attempt, c.started_at,
           c.lease_expires_at, i.inputs,
           (SELECT '{{' || string_agg(to_json(p.name)::text || ':' || coalesce(p.result, 'null'), ',')
                       || '}}'
              FROM fuseline_steps p
             WHERE p.instance_id = c.instance_id
               AND p.name IN (SELECT json_array_elements_text(c.inputs_from::json))) AS results,
           c.available_at
      FROM claimed c JOIN fuseline_instances i ON i.id = c.instance_id
     ORDER BY c.available_at, c.id
"""  # noqa: S608


#: Claim the step of one workflow that became available first.
STEP_CLAIM_ONE_WORKFLOW = _claim()

#: The claim that follows a report in the same round trip: taken only if
#: that report was accepted (a refused report claims nothing).
STEP_CLAIM_AFTER_REPORT = _claim(
    guard="""
           -- only if the report sent just before this claim was accepted
           AND EXISTS (SELECT 1 FROM fuseline_steps r
                        WHERE r.instance_id = CAST(%(p_instance_id)s AS uuid) AND r.name = %(p_name)s
                          AND r.state = 'SUCCEEDED' AND r.attempt = %(p_attempt)s
                          AND r.reported_by = CAST(%(p_worker_id)s AS uuid))""",
)

#: The same claim among several workflows (pairs of ids and versions).
STEP_CLAIM_MANY_WORKFLOWS = _claim(many=True)

#: A worker's prefetch: up to ``p_limit`` steps of its workflow in one statement.
STEPS_CLAIM_BATCH_ONE_WORKFLOW = _claim(batch=True)

#: The same among several workflows.
STEPS_CLAIM_BATCH_MANY_WORKFLOWS = _claim(many=True, batch=True)

#: Accept a success (fenced: holder and attempt) and queue the successors
#: that depend on this step alone; a fan-out wakes idle workers.
STEP_SUCCEED_AND_QUEUE = """
    WITH done AS (
        UPDATE fuseline_steps
           SET state = 'SUCCEEDED', result = %(p_result)s, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
         WHERE instance_id = (SELECT id FROM fuseline_instances
                               WHERE id = CAST(%(p_instance_id)s AS uuid)
                                 AND workflow_id = %(p_workflow_id)s AND version = %(p_version)s
                                 FOR NO KEY UPDATE)
           AND name = %(p_name)s AND state = 'RUNNING'
           AND worker_id = CAST(%(p_worker_id)s AS uuid) AND attempt = %(p_attempt)s
        RETURNING instance_id, attempt
    ),
    queued AS (
        UPDATE fuseline_steps s
           SET state = 'QUEUED', available_at = clock_timestamp(),
               inputs_from = CASE WHEN s.name = ANY(CAST(%(p_consumers)s AS text[]))
                                  THEN %(p_inputs_from)s END
          FROM done
         WHERE s.instance_id = done.instance_id
           AND s.name = ANY(CAST(%(p_queue)s AS text[])) AND s.state = 'PENDING'
        RETURNING s.instance_id, s.name
    ),
    logged AS (
        INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
        SELECT instance_id, clock_timestamp(), 'succeeded', CAST(%(p_name)s AS varchar), attempt,
               CAST(%(p_worker_id)s AS uuid)
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
           SET state = 'SUCCEEDED', result = %(p_result)s, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
         WHERE instance_id = (SELECT id FROM fuseline_instances
                               WHERE id = CAST(%(p_instance_id)s AS uuid)
                                 AND workflow_id = %(p_workflow_id)s AND version = %(p_version)s
                                 FOR NO KEY UPDATE)
           AND name = %(p_name)s AND state = 'RUNNING'
           AND worker_id = CAST(%(p_worker_id)s AS uuid) AND attempt = %(p_attempt)s
        RETURNING instance_id, attempt
    ),
    finished AS (
        UPDATE fuseline_instances i
           SET status = 'SUCCEEDED', result = %(p_result)s,
               finished_at = clock_timestamp(), updated_at = clock_timestamp()
          FROM done
         WHERE i.id = done.instance_id AND i.status = 'RUNNING'
        RETURNING i.id
    ),
    logged AS (
        INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
        SELECT instance_id, clock_timestamp(), 'succeeded', CAST(%(p_name)s AS varchar), attempt,
               CAST(%(p_worker_id)s AS uuid)
          FROM done
        UNION ALL
        SELECT id, clock_timestamp(), 'instance_succeeded', NULL, NULL, NULL FROM finished
    )
    SELECT attempt FROM done
"""

#: A batch of one-statement successes (parallel arrays, one entry per report, numbered by
#: ``p_ns``; the successors to queue flattened into ``p_q_*`` arrays that point at their
#: report's number). The instances are locked first, in id order, so two batches never wait
#: for each other in a cycle. Returns the numbers of the reports accepted.
STEPS_SUCCEED_BATCH = """
    WITH r AS MATERIALIZED (
        SELECT * FROM unnest(CAST(%(p_ns)s AS integer[]), CAST(%(p_instance_ids)s AS uuid[]),
                             CAST(%(p_workflow_ids)s AS text[]), CAST(%(p_versions)s AS text[]),
                             CAST(%(p_names)s AS text[]), CAST(%(p_attempts)s AS integer[]),
                             CAST(%(p_results)s AS text[]), CAST(%(p_finishes)s AS boolean[]))
               AS r(n, instance_id, workflow_id, version, name, attempt, result, finishes)
    ),
    locked AS MATERIALIZED (
        SELECT i.id FROM fuseline_instances i
         WHERE i.id IN (SELECT instance_id FROM r)
           AND (i.id, i.workflow_id, i.version) IN (SELECT instance_id, workflow_id, version FROM r)
         ORDER BY i.id
           FOR NO KEY UPDATE
    ),
    done AS (
        UPDATE fuseline_steps s
           SET state = 'SUCCEEDED', result = r.result, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
          FROM r
         WHERE s.instance_id = r.instance_id AND s.name = r.name
           AND r.instance_id IN (SELECT id FROM locked)
           AND s.state = 'RUNNING' AND s.worker_id = CAST(%(p_worker_id)s AS uuid)
           AND s.attempt = r.attempt
        RETURNING r.n, s.instance_id, s.name, s.attempt, r.result, r.finishes
    ),
    queued AS (
        UPDATE fuseline_steps s
           SET state = 'QUEUED', available_at = clock_timestamp(),
               inputs_from = CASE WHEN q.consumer THEN q.inputs_from END
          FROM done
          JOIN unnest(CAST(%(p_q_ns)s AS integer[]), CAST(%(p_q_names)s AS text[]),
                      CAST(%(p_q_consumers)s AS boolean[]), CAST(%(p_q_inputs_from)s AS text[]))
               AS q(n, name, consumer, inputs_from) ON q.n = done.n
         WHERE s.instance_id = done.instance_id AND s.name = q.name AND s.state = 'PENDING'
        RETURNING s.instance_id, s.name
    ),
    finished AS (
        UPDATE fuseline_instances i
           SET status = 'SUCCEEDED', result = done.result,
               finished_at = clock_timestamp(), updated_at = clock_timestamp()
          FROM done
         WHERE done.finishes AND i.id = done.instance_id AND i.status = 'RUNNING'
        RETURNING i.id
    ),
    logged AS (
        INSERT INTO fuseline_events (instance_id, at, kind, step_name, attempt, worker_id)
        SELECT instance_id, clock_timestamp(), 'succeeded', name, attempt, CAST(%(p_worker_id)s AS uuid)
          FROM done
        UNION ALL
        SELECT instance_id, clock_timestamp(), 'queued', name, NULL, NULL FROM queued
        UNION ALL
        SELECT id, clock_timestamp(), 'instance_succeeded', NULL, NULL, NULL FROM finished
    ),
    -- Other workers may take some of the steps this batch queued.
    announced AS (
        SELECT pg_notify('fuseline_work', '') FROM (SELECT count(*) AS n FROM queued) q WHERE q.n > 1
    )
    SELECT n, (SELECT count(*) FROM announced) FROM done
"""

#: Create instances (ids and inputs as parallel arrays) with all their
#: steps (roots QUEUED, the rest PENDING), log them, and wake idle workers.
INSTANCES_DISPATCH = """
    WITH created AS (
        INSERT INTO fuseline_instances (id, workflow_id, version, status, inputs,
                                        created_at, updated_at)
        SELECT i.id, %(p_workflow_id)s, %(p_version)s, 'RUNNING', i.inputs,
               clock_timestamp(), clock_timestamp()
          FROM unnest(CAST(%(p_ids)s AS uuid[]), CAST(%(p_inputs)s AS text[]))
               WITH ORDINALITY AS i(id, inputs, n)
         ORDER BY i.n
        RETURNING id
    ),
    stepped AS (
        INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, max_attempts,
                                    available_at)
        SELECT c.id, %(p_workflow_id)s, %(p_version)s, s.name,
               CASE WHEN s.root THEN 'QUEUED' ELSE 'PENDING' END, s.max_attempts,
               CASE WHEN s.root THEN clock_timestamp() END
          FROM unnest(CAST(%(p_ids)s AS uuid[])) WITH ORDINALITY AS c(id, n)
         CROSS JOIN unnest(CAST(%(p_names)s AS text[]), CAST(%(p_roots)s AS boolean[]),
                           CAST(%(p_max_attempts)s AS integer[]))
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


#: A claimed step: (instance_id, workflow_id, version, step, attempt, started, lease expires,
#: instance inputs, predecessors' results as a JSON object or None, available since).
ClaimRow = tuple[str, str, str, str, int, datetime, datetime, str, str | None, datetime]


class PostgresHotPath:
    """Runs the statements above on connections kept per thread."""

    def __init__(self, engine: Engine, claims_engine: Engine, scrub: Callable[[str], str]) -> None:
        self._engines = {"durable": engine, "claims": claims_engine}
        self._scrub = scrub
        self._local = threading.local()
        #: Every kept connection with the thread it belongs to.
        self._held: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()

    def _connection(self, kind: str) -> Any:
        fairy = getattr(self._local, kind, None)
        if fairy is None:
            self._discard_orphans()
            fairy = self._engines[kind].raw_connection()
            connection = fairy.driver_connection
            connection.rollback()
            connection.autocommit = True
            setattr(self._local, kind, fairy)
            with self._lock:
                self._held.append((threading.current_thread(), fairy))
        return fairy.driver_connection

    def _discard_orphans(self) -> None:
        """Close the connections of threads that have ended (a worker's short-lived helpers)."""
        with self._lock:
            orphans = [fairy for thread, fairy in self._held if not thread.is_alive()]
            self._held = [(thread, fairy) for thread, fairy in self._held if thread.is_alive()]
        for fairy in orphans:
            _discard(fairy)

    def _rows(self, kind: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Execute one statement and return its rows; a broken connection is dropped and the
        error reported."""
        try:
            return self._connection(kind).execute(sql, params).fetchall()
        except Exception as exc:
            self._drop(kind)
            raise self._error(exc) from None

    def _run(self, kind: str, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute one statement; its first row, if any."""
        rows = self._rows(kind, sql, params)
        return rows[0] if rows else None

    def _error(self, exc: Exception) -> DatabaseError:
        from .engine import is_transient

        message = f"database error: {self._scrub(str(exc))}"
        return DatabaseUnavailable(message) if is_transient(exc) else DatabaseError(message)

    def _drop(self, kind: str) -> None:
        fairy = getattr(self._local, kind, None)
        setattr(self._local, kind, None)
        if fairy is not None:
            with self._lock:
                self._held = [(thread, kept) for thread, kept in self._held if kept is not fairy]
            _discard(fairy)

    def close(self) -> None:
        """Discard every kept connection (they are in autocommit mode: not for the pool)."""
        with self._lock:
            held, self._held = self._held, []
        for _, fairy in held:
            _discard(fairy)
        self._local = threading.local()

    # -- statements --------------------------------------------------------------------------
    @staticmethod
    def _claim_params(
        worker_id: str,
        keys: Sequence[tuple[str, str]],
        floors: Sequence[datetime | None],
        lease_seconds: float,
    ) -> dict[str, Any]:
        """Parameters of the claim statements: one workflow, or parallel arrays for several."""
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_lease_seconds": lease_seconds}
        if len(keys) == 1:
            params.update(p_workflow_id=keys[0][0], p_version=keys[0][1], p_floor=floors[0])
        else:
            params.update(
                p_workflow_ids=[k[0] for k in keys], p_versions=[k[1] for k in keys], p_floors=list(floors)
            )
        return params

    def claim(
        self,
        worker_id: str,
        keys: Sequence[tuple[str, str]],
        floors: Sequence[datetime | None],
        lease_seconds: float,
    ) -> ClaimRow | None:
        """The first queued step of these workflows at or after their floors (None: from the start)."""
        sql = STEP_CLAIM_ONE_WORKFLOW if len(keys) == 1 else STEP_CLAIM_MANY_WORKFLOWS
        row = self._run("claims", sql, self._claim_params(worker_id, keys, floors, lease_seconds))
        if row is None:
            return None
        return (str(row[0]), *row[1:])  # type: ignore[return-value]

    def claim_batch(
        self,
        worker_id: str,
        keys: Sequence[tuple[str, str]],
        floors: Sequence[datetime | None],
        lease_seconds: float,
        limit: int,
    ) -> list[ClaimRow]:
        """Up to ``limit`` claims in one statement, in queue order."""
        sql = STEPS_CLAIM_BATCH_ONE_WORKFLOW if len(keys) == 1 else STEPS_CLAIM_BATCH_MANY_WORKFLOWS
        params = self._claim_params(worker_id, keys, floors, lease_seconds)
        params["p_limit"] = limit
        rows = self._rows("claims", sql, params)
        return [(str(row[0]), *row[1:]) for row in rows]  # type: ignore[misc]

    def succeed_batch(self, reports: Sequence[tuple[dict[str, Any], bool]]) -> list[bool]:
        """Several successes (the parameters of :meth:`succeed`, finishes) in one statement.

        Returns, per report, whether it was accepted; one durable commit for all.
        """
        batch: dict[str, list[Any]] = {
            key: []
            for key in (
                "p_ns", "p_instance_ids", "p_workflow_ids", "p_versions", "p_names", "p_attempts",
                "p_results", "p_finishes", "p_q_ns", "p_q_names", "p_q_consumers", "p_q_inputs_from",
            )
        }  # fmt: skip
        worker_id = None
        for n, (params, finishes) in enumerate(reports):
            worker_id = params["p_worker_id"]
            batch["p_ns"].append(n)
            batch["p_instance_ids"].append(params["p_instance_id"])
            batch["p_workflow_ids"].append(params["p_workflow_id"])
            batch["p_versions"].append(params["p_version"])
            batch["p_names"].append(params["p_name"])
            batch["p_attempts"].append(params["p_attempt"])
            batch["p_results"].append(params["p_result"])
            batch["p_finishes"].append(finishes)
            if not finishes:
                consumers = set(params["p_consumers"])
                for name in params["p_queue"]:
                    batch["p_q_ns"].append(n)
                    batch["p_q_names"].append(name)
                    batch["p_q_consumers"].append(name in consumers)
                    batch["p_q_inputs_from"].append(params["p_inputs_from"])
        rows = self._rows("durable", STEPS_SUCCEED_BATCH, {"p_worker_id": worker_id, **batch})
        accepted = {row[0] for row in rows}
        return [n in accepted for n in range(len(reports))]

    def succeed(self, params: dict[str, Any], *, finishes: bool) -> bool:
        """Accept a success; False if the worker does not hold the step (nothing changed)."""
        sql = STEP_SUCCEED_AND_FINISH if finishes else STEP_SUCCEED_AND_QUEUE
        return self._run("durable", sql, params) is not None

    def succeed_and_claim(
        self,
        params: dict[str, Any],
        *,
        finishes: bool,
        workflow: tuple[str, str],
        floor: datetime | None,
        lease_seconds: float,
    ) -> tuple[bool, ClaimRow | None]:
        """A success and the next claim of the same worker, pipelined in one round trip.

        The report commits durably first; the claim then runs in its own
        transaction without waiting for the WAL flush, and only if the report
        was accepted. Returns (accepted, claimed row or None).
        """
        sql = STEP_SUCCEED_AND_FINISH if finishes else STEP_SUCCEED_AND_QUEUE
        claim = {
            **params,
            "p_lease_seconds": lease_seconds,
            "p_workflow_id": workflow[0],
            "p_version": workflow[1],
            "p_floor": floor,
        }
        try:
            connection = self._connection("durable")
            with connection.pipeline():
                reported = connection.execute(sql, params)
                connection.execute("BEGIN")
                connection.execute("SET LOCAL synchronous_commit = off")
                claimed = connection.execute(STEP_CLAIM_AFTER_REPORT, claim)
                connection.execute("COMMIT")
            accepted = reported.fetchone() is not None
            row = claimed.fetchone()
        except Exception as exc:
            self._drop("durable")
            raise self._error(exc) from None
        if row is None:
            return accepted, None
        return accepted, (str(row[0]), *row[1:])  # type: ignore[return-value]

    def dispatch(self, params: dict[str, Any]) -> None:
        self._run("durable", INSTANCES_DISPATCH, params)


def _discard(fairy: Any) -> None:
    """Close a kept connection for good; one that is already broken has nothing to release."""
    try:
        fairy.invalidate()
    except Exception as exc:
        logger.debug("discarding a connection: %s", exc)
