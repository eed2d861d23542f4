"""Statements of retention: deleting finished instances (with their steps, events and signals)
and the rows of long-stopped workers.

An instance *expires* when it is final (SUCCEEDED, FAILED, CANCELLED), finished more than
``p_age`` seconds ago by the database clock, and its parent (if it is a child) is not RUNNING.
A batch takes only expired instances with no child left, so children go before their parents
and ``db verify`` never finds a child whose parent is missing; a parent goes once its children
have. An instance with an unfinished, recent or kept descendant is therefore kept too.

Lock order is the reports' (:attr:`.reports.ReportQueries.instance_lock`): the instance rows
first (``FOR UPDATE SKIP LOCKED``: a row a report, cancel, retry or repair holds is skipped,
never waited for), then their steps. Claims lock only QUEUED steps, which a final instance has
none of, so a batch never blocks a claim. Events have no foreign key: they are deleted
explicitly, by instance. Every delete names its rows through a ``LIMIT``ed subquery, so one
transaction deletes a bounded number of rows.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    CTE,
    Delete,
    Float,
    Select,
    TextClause,
    and_,
    bindparam,
    delete,
    exists,
    func,
    not_,
    select,
    text,
    tuple_,
)

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import events, instances, signals, steps, workers

FINAL = (Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELLED.value)
#: The advisory lock one pruning batch at a time holds across every worker (PostgreSQL).
BATCH_LOCK_KEY = 0x66757370  # "fusp"


class RetentionQueries:
    def __init__(self, dialect: Dialect) -> None:
        cutoff = dialect.now_plus(-bindparam("p_age", type_=Float()))
        ids = bindparam("p_ids", expanding=True)
        parent, child = instances.alias("parent"), instances.alias("child")
        parent_running = exists().where(
            parent.c.id == instances.c.parent_instance_id, parent.c.status == Status.RUNNING.value
        )
        #: Final, finished before the cutoff, and not the child of a RUNNING instance.
        expired = and_(
            instances.c.status.in_(FINAL),
            instances.c.finished_at < cutoff,
            not_(parent_running),
        )
        has_child = exists().where(child.c.parent_instance_id == instances.c.id)
        # By ix_fuseline_instances_finished_at: the oldest first, never a scan of the recent ones.
        batch = (
            select(instances.c.id)
            .where(expired, not_(has_child))
            .order_by(instances.c.finished_at)
            .limit(bindparam("p_limit"))
        )
        #: Expired instances without children, oldest first, locked (skipping locked rows).
        self.instances_expired_lock: Select = (
            batch.with_for_update(skip_locked=True, of=instances) if dialect.skip_locked else batch
        )
        self.events_delete_of_instances: Delete = delete(events).where(
            events.c.id.in_(
                select(events.c.id).where(events.c.instance_id.in_(ids)).limit(bindparam("p_limit"))
            )
        )
        self.steps_delete_of_instances: Delete = delete(steps).where(
            steps.c.id.in_(select(steps.c.id).where(steps.c.instance_id.in_(ids)).limit(bindparam("p_limit")))
        )
        signal_keys = select(signals.c.instance_id, signals.c.name).where(signals.c.instance_id.in_(ids))
        self.signals_delete_of_instances: Delete = delete(signals).where(
            tuple_(signals.c.instance_id, signals.c.name).in_(signal_keys.limit(bindparam("p_limit")))
        )
        self.instances_delete: Delete = delete(instances).where(instances.c.id.in_(ids))

        worker_cutoff = dialect.now_plus(-bindparam("p_worker_age", type_=Float()))
        holds_a_step = exists().where(
            steps.c.worker_id == workers.c.id, steps.c.state == Status.RUNNING.value
        )
        #: Workers stopped (or silent, when killed) for longer than ``p_worker_age`` seconds that
        #: hold no step: no lease names them any more.
        worker_expired = and_(
            func.coalesce(workers.c.stopped_at, workers.c.last_heartbeat) < worker_cutoff,
            not_(holds_a_step),
        )
        expired_workers = select(workers.c.id).where(worker_expired).limit(bindparam("p_limit"))
        if dialect.skip_locked:
            expired_workers = expired_workers.with_for_update(skip_locked=True, of=workers)
        self.workers_delete_expired: Delete = delete(workers).where(workers.c.id.in_(expired_workers))

        # -- what a dry run counts: every instance a prune run to its end would delete ----------
        self.instances_expired_all: Select = _expired_all(expired)
        of_expired = self.instances_expired_all
        self.instances_count_expired: Select = select(func.count()).select_from(of_expired.subquery())
        self.steps_count_expired: Select = select(func.count()).where(steps.c.instance_id.in_(of_expired))
        self.events_count_expired: Select = select(func.count()).where(events.c.instance_id.in_(of_expired))
        self.signals_count_expired: Select = select(func.count()).where(signals.c.instance_id.in_(of_expired))
        self.workers_count_expired: Select = select(func.count()).where(worker_expired)

        #: PostgreSQL: one pruning batch at a time across all workers (false: another is running),
        #: and a batch that would wait for a lock gives up instead.
        self.batch_lock: TextClause | None = None
        self.batch_lock_timeout: TextClause | None = None
        if dialect.is_postgresql:
            self.batch_lock = text(f"SELECT pg_try_advisory_xact_lock({BATCH_LOCK_KEY})")
            self.batch_lock_timeout = text("SET LOCAL lock_timeout = '2s'")


def _expired_all(expired: object) -> Select:
    """The ids of every expired instance none of whose descendants is kept: batches delete the
    leaves first, so a run to the end deletes exactly these."""
    up = instances.alias("up")
    # The parents of kept children are kept, and so are their parents, up to the root.
    seed = select(instances.c.parent_instance_id.label("id")).where(
        instances.c.parent_instance_id.is_not(None),
        not_(expired),  # type: ignore[arg-type]
    )
    blocked: CTE = seed.cte("kept_ancestors", recursive=True)
    blocked = blocked.union(
        select(up.c.parent_instance_id).where(up.c.id == blocked.c.id, up.c.parent_instance_id.is_not(None))
    )
    return select(instances.c.id).where(expired, instances.c.id.not_in(select(blocked.c.id)))  # type: ignore[arg-type]


@cache
def for_dialect(name: str) -> RetentionQueries:
    return RetentionQueries(dialect_of(name))
