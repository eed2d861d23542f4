"""Statements that claim queued steps (``fuseline_steps``), check their limits, and read what a
claim hands out.

The general path, in one transaction: check that the worker is alive, read
the first candidates in queue order (:meth:`ClaimQueries.candidates`), and
for each, check its limits when a limit gates it (counted from live rows:
``steps_running_of_limit``, ``instances_in_progress_of_limit``,
``starts_in_window``), then claim it by id. PostgreSQL's one-statement twins
(for workers whose workflows have no limit) are in :mod:`..pg_statements`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sqlalchemy import (
    Delete,
    Insert,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import instances, starts, steps

QUEUED = Status.QUEUED.value
RUNNING = Status.RUNNING.value
Key = tuple[str, str, str]


class ClaimQueries:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        now = dialect.now()
        #: Claim one candidate, if it is still QUEUED (another claimer may have taken it meanwhile).
        self.step_claim: Update = (
            update(steps)
            .where(steps.c.id == bindparam("p_id"), steps.c.state == QUEUED)
            .values(
                state=RUNNING,
                attempt=steps.c.attempt + 1,
                worker_id=bindparam("p_worker_id"),
                lease_expires_at=dialect.now_plus(bindparam("p_lease_seconds")),
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
                steps.c.available_at,
                steps.c.urgency,
                steps.c.queue,
                steps.c.item,
            )
        )
        self.instance_inputs: Select = select(instances.c.inputs).where(
            instances.c.id == bindparam("p_instance_id")
        )
        #: An instance is in progress from its first claim on (a workflow ConcurrencyLimit counts it).
        self.instance_mark_started: Update = (
            update(instances)
            .where(instances.c.id == bindparam("p_instance_id"), instances.c.started_at.is_(None))
            .values(started_at=now)
        )
        #: Results of named steps of an instance (a claim's predecessors, an instance's outputs).
        self.step_results: Select = select(steps.c.name, steps.c.result).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name.in_(bindparam("p_names", expanding=True)),
        )
        same_limit_key = steps.c.limit_key.is_not_distinct_from(bindparam("p_limit_key"))
        limited_name = func.coalesce(steps.c.item_of, steps.c.name)  # a Map's items count as their step
        #: How many of a step (per key value) hold a live lease now: a step ConcurrencyLimit.
        self.steps_running_of_limit: Select = select(func.count()).where(
            steps.c.state == RUNNING,
            steps.c.concurrency_max.is_not(None),  # the steps under a limit (and its index)
            steps.c.workflow_id == bindparam("p_workflow_id"),
            limited_name == bindparam("p_name"),
            same_limit_key,
            steps.c.lease_expires_at > now,
        )
        #: The instances of a workflow (per key value) in progress: a workflow ConcurrencyLimit.
        self.instances_in_progress_of_limit: Select = select(func.count()).where(
            instances.c.status == RUNNING,
            instances.c.started_at.is_not(None),
            instances.c.workflow_id == bindparam("p_workflow_id"),
            instances.c.limit_key.is_not_distinct_from(bindparam("p_limit_key")),
        )
        #: Claims of a step (per key value) in the last ``p_per`` seconds, and the oldest of them.
        self.starts_in_window: Select = select(func.count(), func.min(starts.c.at)).where(
            starts.c.workflow_id == bindparam("p_workflow_id"),
            starts.c.step_name == bindparam("p_name"),
            starts.c.limit_key.is_not_distinct_from(bindparam("p_limit_key")),
            starts.c.at > dialect.now_plus(-bindparam("p_per")),
        )
        self.start_insert: Insert = insert(starts).values(at=now)
        #: Up to ``p_limit`` starts older than the longest window: no limit counts them any more.
        self.starts_prune: Delete = delete(starts).where(
            starts.c.id.in_(
                select(starts.c.id)
                .where(starts.c.at < dialect.now_plus(-bindparam("p_window")))
                .limit(bindparam("p_limit"))
            )
        )
        self._candidates: dict[int, Select] = {}

    def candidates(self, keys: Sequence[Key]) -> Select:
        """The first ``p_scan`` QUEUED, available steps of these (workflow, version, queue) keys in
        queue order, with what their limits need. One ordered index walk per key (``k0_*``,
        ``k1_*``... parameters), merged: an ``IN`` over the keys would sort every queued row."""
        query = self._candidates.get(len(keys))
        if query is None:
            walks = []
            for n in range(len(keys)):
                walk = (
                    select(
                        steps.c.id,
                        steps.c.instance_id,
                        steps.c.workflow_id,
                        steps.c.name,
                        steps.c.urgency,
                        steps.c.available_at,
                        steps.c.gated,
                        steps.c.concurrency_max,
                        steps.c.rate_n,
                        steps.c.rate_per,
                        steps.c.limit_key,
                    )
                    .where(
                        steps.c.state == QUEUED,
                        steps.c.workflow_id == bindparam(f"k{n}_workflow_id"),
                        steps.c.version == bindparam(f"k{n}_version"),
                        steps.c.queue == bindparam(f"k{n}_queue"),
                        steps.c.available_at <= self.dialect.now(),
                    )
                    .order_by(steps.c.urgency, steps.c.available_at, steps.c.id)
                    .limit(bindparam("p_scan"))
                )
                if self.dialect.skip_locked:
                    walk = walk.with_for_update(skip_locked=True, of=steps)
                walks.append(select(walk.subquery()))
            merged = walks[0].subquery() if len(walks) == 1 else union_all(*walks).subquery()
            step_columns = select(merged, instances.c.started_at.label("instance_started"))
            query = (
                step_columns.add_columns(
                    instances.c.concurrency_max.label("instance_concurrency_max"),
                    instances.c.limit_key.label("instance_limit_key"),
                )
                .join_from(merged, instances, instances.c.id == merged.c.instance_id)
                .order_by(merged.c.urgency, merged.c.available_at, merged.c.id)
                .limit(bindparam("p_scan"))
            )
            self._candidates[len(keys)] = query
        return query

    @staticmethod
    def candidate_params(keys: Sequence[Key], scan: int) -> dict[str, object]:
        params: dict[str, object] = {"p_scan": scan}
        for n, (workflow_id, version, queue) in enumerate(keys):
            params.update({f"k{n}_workflow_id": workflow_id, f"k{n}_version": version, f"k{n}_queue": queue})
        return params

    def limit_lock(self) -> Select | None:
        """Take a limit's lock for this transaction, or say it is taken (PostgreSQL); SQLite
        runs one writer at a time, so it needs none."""
        if not self.dialect.is_postgresql:
            return None
        return select(func.pg_try_advisory_xact_lock(func.hashtextextended(bindparam("p_lock"), literal(0))))


@cache
def for_dialect(name: str) -> ClaimQueries:
    return ClaimQueries(dialect_of(name))
