"""PostgreSQL's one-statement forms of the hottest operations, named like the Core statements
they stand in for (:mod:`.queries`).

Every step a worker runs costs a claim and a report, so on PostgreSQL these
skip the general machinery: each is one data-modifying CTE that updates the
step, queues its successors or finishes the instance, and appends the
events (a claim, a success and a dispatch append none: the rows hold them; see
:mod:`.history` and :mod:`.timeline`), run in autocommit mode (the statement is its own
transaction). They take the same locks in the same order as the general
path (the instance first, through the locking CTE the step update reads
before it touches a step row), so both paths can serve one
instance at once, and
``tests/sql/test_sql_statement_twins.py`` checks that each leaves the same
rows as its general twin.

Claims commit without waiting for the WAL flush: each sets
``synchronous_commit = off`` for its own transaction (``set_config(...,
true)``). If the server crashes before flushing one, the step is QUEUED again
after recovery and the worker's report is refused by the lease guard, so it
runs again; nothing is lost or accepted twice. Reports and dispatches are
durable, and flushing a report flushes the claims before it. The claim a
worker sends with its report shares the report's transaction, so it is
durable too, at no extra cost: one commit, one flush.

Claims also refuse a worker that is listed dead (no heartbeat for
``p_dead_after`` seconds, or stopped): they then claim nothing, and the
caller asks why. A claim by a living worker counts as its heartbeat.
"""

from __future__ import annotations

import re

from ...states import EventKind

_QUEUED = EventKind.QUEUED.value


def _compact(sql: str) -> str:
    """The statement without its comments and repeated whitespace.

    psycopg parses a query's placeholders once and caches the result only for queries of up to
    4,096 bytes (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``): a longer one is parsed
    again at every execution, which cost the hot path 0.4 ms of CPU per step. Indented, the
    claims are longer than that; compacted, they are well below it (a test checks).
    """
    return " ".join(re.sub(r"--[^\n]*", "", sql).split())


#: The claiming worker is alive: an uncorrelated condition, checked once per statement.
_WORKER_ALIVE = """EXISTS (SELECT 1 FROM fuseline_workers w
                            WHERE w.id = CAST(%(p_worker_id)s AS uuid) AND w.stopped_at IS NULL
                              AND w.last_heartbeat >= clock_timestamp()
                                                      - make_interval(secs => %(p_dead_after)s))"""


#: This transaction commits without waiting for the WAL flush (the setting lasts until its end).
#: Joined by the claim's UPDATE and the ``seen`` CTE, so it is evaluated before anything is written.
_NONDURABLE = "nondurable AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS setting)"

#: A claim is a sign of life: it counts as a heartbeat, written at most every ``p_seen_every``
#: seconds, so a worker loop without a heartbeat thread (the worker guide's) stays alive.
_WORKER_SEEN = """seen AS (
        UPDATE fuseline_workers SET last_heartbeat = clock_timestamp()
         WHERE id = CAST(%(p_worker_id)s AS uuid) AND stopped_at IS NULL
           AND last_heartbeat >= clock_timestamp() - make_interval(secs => %(p_dead_after)s)
           AND last_heartbeat < clock_timestamp() - make_interval(secs => %(p_seen_every)s){also}
    )"""


def _candidates(key: dict[str, str], limit: str, floor: str) -> list[str]:
    """The three ordered walks of the queued-steps index for one (workflow, version, queue):
    more urgent than the default priority, the default priority from the broker's floor on,
    less urgent. Each is an index range in queue order (urgency, then available_at), and each
    takes ``{limit}`` rows at most, skipping rows other claimers hold."""
    base = f"""FROM fuseline_steps
                 WHERE state = 'QUEUED' AND workflow_id = {key["workflow_id"]}
                   AND version = {key["version"]} AND queue = {key["queue"]}
                   AND available_at <= clock_timestamp()
                   AND {_WORKER_ALIVE}"""
    columns = "SELECT id, urgency, available_at"
    locked = f"LIMIT {limit} FOR UPDATE SKIP LOCKED"
    # Only the constants of this module are pasted in (S608 is about user input).
    return [
        f"{columns} {base} AND urgency < 0 ORDER BY urgency, available_at, id {locked}",
        f"""{columns} {base} AND urgency = 0 AND available_at >= COALESCE({floor}, '-infinity')
                 ORDER BY available_at, id {locked}""",
        f"{columns} {base} AND urgency > 0 ORDER BY urgency, available_at, id {locked}",
    ]


def _union(walks: list[str]) -> str:
    """The walks as one row source (a locking walk may be part of a UNION only as a subquery)."""
    return " UNION ALL ".join(f"(SELECT * FROM ({walk}) AS w{n})" for n, walk in enumerate(walks))  # noqa: S608


def _claim(*, many: bool = False, batch: bool = False, guard: str = "", durable: bool = False) -> str:
    """A claim statement: the QUEUED steps (of one workflow and queue, or of ``many``) first in
    queue order (the highest priority, then the one that became available first), marked
    RUNNING for this worker and logged, each returned with the instance inputs and the
    predecessors' results (as one JSON object).

    A step is searched by three index walks (see ``_candidates``): only the bulk, the
    default priority, is read from the broker's floor on (``p_floor`` / ``p_floors``; NULL
    reads from the oldest entry; see :mod:`.claimfloor`), so a step of another priority is
    never hidden below a floor. One step is picked by ``COALESCE`` of the three walks, which
    runs a later walk only when the earlier found nothing; a batch by ``id = ANY(ARRAY(...))``
    over the three, which runs the locking subqueries exactly once. Several keys are searched
    one at a time (a lateral subquery per key): ``(workflow_id, version, queue) IN (...)``
    cannot use the index's order and would sort every queued row.
    """
    limit = "%(p_limit)s" if batch else "1"
    if many:
        key = {"workflow_id": "k.workflow_id", "version": "k.version", "queue": "k.queue"}
        walks = _union(_candidates(key, limit, "k.floor"))
        pick = f"""SELECT q.id FROM unnest(CAST(%(p_workflow_ids)s AS text[]), CAST(%(p_versions)s AS text[]),
                                        CAST(%(p_queues)s AS text[]), CAST(%(p_floors)s AS timestamptz[]))
                                 AS k(workflow_id, version, queue, floor)
                     CROSS JOIN LATERAL ({walks}) AS q
                     ORDER BY q.urgency, q.available_at, q.id LIMIT {limit}"""  # noqa: S608
    else:
        key = {"workflow_id": "%(p_workflow_id)s", "version": "%(p_version)s", "queue": "%(p_queue)s"}
        walks = _candidates(key, limit, "CAST(%(p_floor)s AS timestamptz)")
        if batch:
            union = _union(walks)
            pick = f"SELECT q.id FROM ({union}) AS q ORDER BY q.urgency, q.available_at, q.id LIMIT {limit}"  # noqa: S608
        else:
            pick = "SELECT COALESCE(" + ", ".join(f"(SELECT id FROM ({walk}) AS w)" for walk in walks) + ")"  # noqa: S608
    picked = f"id = ANY(ARRAY({pick}))" if batch or many else f"id = ({pick})"
    # The picked rows are found again by id alone, with no "state = 'QUEUED'" beside it: that
    # would make the queued index (id its last column) a way to find them, and when the last
    # ANALYZE saw the queue empty, PostgreSQL took it and read the whole queued index for each
    # claim (a burst of 20,000 steps: 3.6 ms a claim, not 1.3; under an old snapshot, every
    # claimed step's dead entry as well). Nothing is lost: the pick locked each row (FOR
    # UPDATE) after checking it QUEUED in its latest version, and a locked row cannot change.
    # Each claimed step's inputs are read by its instance's primary key, one probe per step
    # (a subquery, not a join): estimated at ten rows, a batch's join was priced as a hash
    # over a scan of the whole instances table when it held a few thousand
    # (tests/sql/test_sql_plans_batch_claim.py).
    # A claim on its own commits without waiting for the flush; one that shares a report's
    # transaction (``durable``) must not change how that transaction commits.
    nondurable = "" if durable else _NONDURABLE + ","
    seen = _WORKER_SEEN.format(also="" if durable else "\n           AND EXISTS (SELECT 1 FROM nondurable)")
    return _compact(f"""
    WITH {nondurable}
    {seen},
    claimed AS (
        UPDATE fuseline_steps
           SET state = 'RUNNING', attempt = attempt + 1, worker_id = CAST(%(p_worker_id)s AS uuid),
               lease_expires_at = clock_timestamp() + make_interval(secs => %(p_lease_seconds)s),
               started_at = clock_timestamp()
         {"" if durable else "FROM nondurable"}
         WHERE {picked}{guard}
        RETURNING id, instance_id, workflow_id, version, name, attempt, inputs_from,
                  started_at, lease_expires_at, available_at, urgency, queue, item
    )
    SELECT c.instance_id, c.workflow_id, c.version, c.name, c.attempt, c.started_at,
           c.lease_expires_at,
           (SELECT i.inputs FROM fuseline_instances i WHERE i.id = c.instance_id) AS inputs,
           (SELECT '{{' || string_agg(to_json(p.name)::text || ':' || coalesce(p.result, 'null'), ',')
                       || '}}'
              FROM fuseline_steps p
             WHERE p.instance_id = c.instance_id
               AND p.name IN (SELECT json_array_elements_text(c.inputs_from::json))) AS results,
           c.available_at, c.urgency, c.queue, c.item
      FROM claimed c
     ORDER BY c.urgency, c.available_at, c.id
""")  # noqa: S608


#: Claim the step of one workflow that became available first.
step_claim_one_workflow = _claim()

#: The same claim among several workflows (parallel arrays of ids, versions and floors).
step_claim_many_workflows = _claim(many=True)

#: A worker's prefetch: up to ``p_limit`` steps of its workflow in one statement.
steps_claim_batch_one_workflow = _claim(batch=True)

#: The same among several workflows.
steps_claim_batch_many_workflows = _claim(many=True, batch=True)

#: Sent before a batch claim, in its transaction and round trip: the claim runs on the generic
#: plan of its prepared statement, never planned again. A batch's size is a parameter of its
#: LIMITs, which a generic plan prices at a tenth of the queued steps: with a backlog of some
#: thousands that priced it above a plan for this size plus the cost PostgreSQL puts on planning,
#: and every batch claim was planned again, 0.45 ms on top of 0.3 ms of running it (the generic
#: plan was kept or not by a hair: a join fewer tipped it). Its plans are checked under both
#: modes (tests/sql/test_sql_plans_*.py); the setting ends with the transaction.
generic_plan_for_this_transaction = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"

#: The claim that follows a report in the same transaction and round trip: taken only if
#: that report was accepted (a refused report claims nothing; a replay of an accepted one
#: does). Durable: it commits with the report, and must not make the report non-durable.
step_claim_after_report = _claim(
    durable=True,
    guard="""
           -- only if the report sent just before this claim was accepted
           AND EXISTS (SELECT 1 FROM fuseline_steps r
                        WHERE r.instance_id = CAST(%(p_instance_id)s AS uuid) AND r.name = %(p_name)s
                          AND r.state = 'SUCCEEDED' AND r.attempt = %(p_attempt)s
                          AND r.reported_by = CAST(%(p_worker_id)s AS uuid))""",
)


#: How a report's fence says "RUNNING": ``(state = 'RUNNING') IS TRUE`` means the same as
#: ``state = 'RUNNING'`` (the column is never NULL) but matches no index's predicate. With the
#: plain form the partial indexes of RUNNING steps (by worker, by lease) could find the step
#: too, and when the last ANALYZE saw few steps running PostgreSQL priced them below the unique
#: (instance_id, name) index and took the worker's: each report read every step its worker held
#: (a 100-slot worker: 100 rows), and under an old snapshot every one it had held since
#: (tests/sql/test_sql_plans_stale_statistics.py).
_HELD_RUNNING = "(state = 'RUNNING') IS TRUE"


#: The fenced success of the general path (``step_finish_if_held``), as the first CTEs of the
#: statements below: the instance is locked first, then the step the worker holds is updated.
#: The instance is found by its id alone, its workflow and version checked on the step row (which
#: carries them): on a table not analyzed yet, PostgreSQL priced "this id of this workflow" the
#: same through the workflow's index as through the primary key, took the workflow's, and read
#: every instance of the workflow per report (tests/sql/test_sql_plans_unanalyzed.py). For the
#: same reason the instance's status is read from the row locked here, not matched again where
#: the instance is ended.
_SUCCEED_IF_HELD = """
    held AS MATERIALIZED (
        SELECT id, status FROM fuseline_instances
         WHERE id = CAST(%(p_instance_id)s AS uuid){only}
           FOR NO KEY UPDATE
    ),
    done AS (
        UPDATE fuseline_steps
           SET state = 'SUCCEEDED', result = %(p_result)s, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
         WHERE instance_id = (SELECT id FROM held)
           AND workflow_id = %(p_workflow_id)s AND version = %(p_version)s
           AND name = %(p_name)s AND {running}
           AND worker_id = CAST(%(p_worker_id)s AS uuid) AND attempt = %(p_attempt)s
        RETURNING instance_id, attempt, finished_at
    )"""

#: A child instance's end also ends its parent's SubWorkflow step: the general path finalizes it.
_NOT_A_CHILD = " AND parent_instance_id IS NULL"

#: The history lines of the successors ``queued`` queued (a success writes none: its row holds
#: it, see :mod:`.timeline`).
_LOG_QUEUED = f"""INSERT INTO fuseline_events (instance_id, at, kind, step_name)
        SELECT instance_id, clock_timestamp(), '{_QUEUED}', name FROM queued"""  # noqa: S608

#: Accept a success and queue the successors that depend on this step alone; a fan-out wakes
#: idle workers (this worker takes one successor itself). The success writes no line (its row
#: holds it: :mod:`.timeline`); each successor queued does.
step_succeed_and_queue = _compact(f"""
    WITH {_SUCCEED_IF_HELD.format(only="", running=_HELD_RUNNING)},
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
        {_LOG_QUEUED}
    ),
    announced AS (
        SELECT pg_notify('fuseline_work', '') FROM (SELECT count(*) AS n FROM queued) q WHERE q.n > 1
    )
    SELECT attempt, (SELECT count(*) FROM announced) AS announced FROM done
""")  # noqa: S608

#: How many other unfinished items a Map item's success counts at most: at that many or
#: fewer, the reporter checks after its commit whether it was the last (see ``item_succeed``).
ITEMS_TAIL = 8

#: Accept a Map item's success without the instance lock, so the items of one map are accepted
#: side by side like separate instances. Returns the other items of its map not final yet (up
#: to ITEMS_TAIL + 1): those this statement sees. Items finishing at the same moment do not see
#: each other, so a reporter that sees ITEMS_TAIL or fewer checks again after it commits; the
#: last to commit then sees none and completes the map (``ShapeRules.complete_map``).
item_succeed = _compact(f"""
    WITH done AS (
        UPDATE fuseline_steps
           SET state = 'SUCCEEDED', result = %(p_result)s, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
         WHERE instance_id = CAST(%(p_instance_id)s AS uuid) AND name = %(p_name)s
           AND {_HELD_RUNNING} AND worker_id = CAST(%(p_worker_id)s AS uuid) AND attempt = %(p_attempt)s
        RETURNING instance_id, attempt
    )
    SELECT attempt,
           (SELECT count(*) FROM (SELECT 1 FROM fuseline_steps i
                                   WHERE i.instance_id = CAST(%(p_instance_id)s AS uuid)
                                     AND i.item_of = %(p_item_of)s AND i.name <> %(p_name)s
                                     AND i.state IN ('PENDING', 'QUEUED', 'RUNNING')
                                   LIMIT {ITEMS_TAIL + 1}) AS open) AS open_items
      FROM done
""")  # noqa: S608

#: Accept the success of the step that ends the instance, and end it with its result, at the
#: moment of the step's success (neither writes a line: their rows hold them, :mod:`.timeline`).
step_succeed_and_finish = _compact(f"""
    WITH {_SUCCEED_IF_HELD.format(only=_NOT_A_CHILD, running=_HELD_RUNNING)},
    finished AS (
        UPDATE fuseline_instances i
           SET status = 'SUCCEEDED', result = %(p_result)s,
               finished_at = done.finished_at, updated_at = done.finished_at
          FROM done
         WHERE i.id = done.instance_id AND (SELECT status FROM held) = 'RUNNING'
    )
    SELECT attempt FROM done
""")  # noqa: S608

#: A batch of successes (parallel arrays, one entry per report, numbered by ``p_ns``; the
#: successors to queue flattened into ``p_q_*`` arrays that point at their report's number).
#: The instances are locked first, in id order, so two batches never wait for each other in a
#: cycle (found by id alone, their status taken from the locked rows: see ``_SUCCEED_IF_HELD``).
#: Every report is matched by joins (hashed or probed through an index), never by a scan of the
#: batch per report: a generic plan estimates any batch at ten reports, and a per-report scan
#: made the statement cubic in the batch (see ``slotreports.MAX_BATCH``). Returns the numbers of
#: the reports accepted.
steps_succeed_batch = _compact(f"""
    WITH r AS MATERIALIZED (
        SELECT * FROM unnest(CAST(%(p_ns)s AS integer[]), CAST(%(p_instance_ids)s AS uuid[]),
                             CAST(%(p_workflow_ids)s AS text[]), CAST(%(p_versions)s AS text[]),
                             CAST(%(p_names)s AS text[]), CAST(%(p_attempts)s AS integer[]),
                             CAST(%(p_results)s AS text[]), CAST(%(p_finishes)s AS boolean[]),
                             CAST(%(p_items_of)s AS text[]))
               AS r(n, instance_id, workflow_id, version, name, attempt, result, finishes, item_of)
    ),
    locked AS MATERIALIZED (
        SELECT i.id, i.parent_instance_id, i.status
          FROM (SELECT DISTINCT instance_id FROM r WHERE item_of IS NULL) k
          JOIN fuseline_instances i ON i.id = k.instance_id
         ORDER BY i.id
           FOR NO KEY UPDATE OF i
    ),
    -- The reports this statement may accept: a Map item needs no instance lock (as in
    -- item_succeed), any other report its locked instance.
    acceptable AS MATERIALIZED (
        SELECT r.*, locked.status = 'RUNNING' AS instance_running
          FROM r LEFT JOIN locked ON locked.id = r.instance_id
         WHERE r.item_of IS NOT NULL
            OR (locked.id IS NOT NULL AND (NOT r.finishes OR locked.parent_instance_id IS NULL))
    ),
    done AS (
        UPDATE fuseline_steps s
           SET state = 'SUCCEEDED', result = r.result, error = NULL, action = NULL,
               reported_by = CAST(%(p_worker_id)s AS uuid), lease_expires_at = NULL,
               finished_at = clock_timestamp()
          FROM acceptable r
         WHERE s.instance_id = r.instance_id AND s.name = r.name
           AND s.workflow_id = r.workflow_id AND s.version = r.version
           -- The plain "RUNNING" (not _HELD_RUNNING): the worker's running steps, read once
           -- for the batch, are the way in that keeps PostgreSQL from hashing a scan of the
           -- whole table when the statistics make it look small.
           AND s.state = 'RUNNING' AND s.worker_id = CAST(%(p_worker_id)s AS uuid)
           AND s.attempt = r.attempt
        RETURNING r.n, s.instance_id, s.name, s.attempt, s.finished_at, r.result, r.finishes, r.item_of,
                  r.instance_running
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
               finished_at = done.finished_at, updated_at = done.finished_at
          FROM done
         WHERE done.finishes AND done.instance_running AND i.id = done.instance_id
    ),
    logged AS (
        {_LOG_QUEUED}
    ),
    -- Other workers may take some of the steps this batch queued.
    announced AS (
        SELECT pg_notify('fuseline_work', '') FROM (SELECT count(*) AS n FROM queued) q WHERE q.n > 1
    )
    SELECT n, (SELECT count(*) FROM announced),
           CASE WHEN item_of IS NOT NULL THEN
               (SELECT count(*) FROM (SELECT 1 FROM fuseline_steps i
                                       WHERE i.instance_id = done.instance_id
                                         AND i.item_of = done.item_of AND i.name <> done.name
                                         AND i.state IN ('PENDING', 'QUEUED', 'RUNNING')
                                       LIMIT {ITEMS_TAIL + 1}) AS open)
           END AS open_items
      FROM done
""")  # noqa: S608

#: Create instances (ids, inputs, urgencies, delays and times as parallel arrays) with all their
#: steps (roots QUEUED, available then; the rest PENDING), each step carrying its scheduling (queue,
#: limits: parallel arrays over the workflow's steps), and wake idle workers. A dispatch writes
#: no history line: the instance's row and its plan's roots tell it (:mod:`.timeline`).
instances_dispatch = _compact("""
    WITH i AS MATERIALIZED (
        SELECT * FROM unnest(CAST(%(p_ids)s AS uuid[]), CAST(%(p_inputs)s AS text[]),
                             CAST(%(p_urgencies)s AS integer[]), CAST(%(p_delays)s AS float8[]),
                             CAST(%(p_ats)s AS timestamptz[]))
               WITH ORDINALITY AS i(id, inputs, urgency, delay, at, n)
    ),
    created AS (
        INSERT INTO fuseline_instances (id, workflow_id, version, status, inputs, priority, concurrency_max,
                                        created_at, updated_at)
        SELECT i.id, %(p_workflow_id)s, %(p_version)s, 'RUNNING', i.inputs, -i.urgency,
               CAST(%(p_concurrency_max)s AS integer), clock_timestamp(), clock_timestamp()
          FROM i
         ORDER BY i.n
        RETURNING id
    ),
    stepped AS (
        INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, max_attempts,
                                    available_at, urgency, queue, gated, concurrency_max, rate_n, rate_per)
        SELECT i.id, %(p_workflow_id)s, %(p_version)s, s.name,
               CASE WHEN s.root THEN 'QUEUED' ELSE 'PENDING' END, s.max_attempts,
               CASE WHEN s.root THEN
                    coalesce(i.at, clock_timestamp() + make_interval(secs => coalesce(i.delay, 0)))
                    + make_interval(secs => coalesce(s.sleep, 0))
               END,
               i.urgency, s.queue, s.gated, s.concurrency, s.rate_n, s.rate_per
          FROM i
         CROSS JOIN unnest(CAST(%(p_names)s AS text[]), CAST(%(p_roots)s AS boolean[]),
                           CAST(%(p_max_attempts)s AS integer[]), CAST(%(p_queues)s AS text[]),
                           CAST(%(p_gated)s AS boolean[]), CAST(%(p_step_concurrency)s AS integer[]),
                           CAST(%(p_rate_n)s AS integer[]), CAST(%(p_rate_per)s AS float8[]),
                           CAST(%(p_sleeps)s AS float8[]))
                    WITH ORDINALITY AS s(name, root, max_attempts, queue, gated, concurrency, rate_n,
                                         rate_per, sleep, k)
         WHERE i.id IN (SELECT id FROM created)
         ORDER BY i.n, s.k
    ),
    announced AS (
        SELECT pg_notify('fuseline_work', '')
    )
    SELECT count(*) AS created, (SELECT count(*) FROM announced) AS announced FROM created
""")
