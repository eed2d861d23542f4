"""Statements on registered workers (``fuseline_workers``).

A worker is *alive* while it is not stopped and its last heartbeat is less
than ``p_dead_after`` seconds old (twice the lease). A dead worker's leases
have lapsed, so its claims and heartbeats are refused until it registers
again: a heartbeat must not bring it back to life behind the reaper's back.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import DateTime, Insert, Select, Update, and_, bindparam, insert, select, type_coerce, update

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import steps, workers


class WorkerQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = dialect.now()
        #: Whether the worker ``p_worker_id`` is alive, as a condition other statements can embed.
        self.alive = and_(
            workers.c.id == bindparam("p_worker_id"),
            workers.c.stopped_at.is_(None),
            workers.c.last_heartbeat >= dialect.now_plus(-bindparam("p_dead_after")),
        )
        self.worker_insert: Insert = insert(workers).values(started_at=now, last_heartbeat=now)
        #: What a worker runs, and (``db_now``) when it last sent a heartbeat, to tell dead from unknown.
        self.worker_get: Select = select(
            workers.c.workflows,
            workers.c.queues,
            workers.c.stopped_at,
            workers.c.last_heartbeat,
            type_coerce(now, DateTime(timezone=True)).label("db_now"),
        ).where(workers.c.id == bindparam("p_worker_id"))
        #: Heartbeat of a living worker; zero rows: unknown, stopped or dead (see ``worker_get``).
        self.worker_heartbeat: Update = update(workers).where(self.alive).values(last_heartbeat=now)
        self.worker_is_alive: Select = select(workers.c.id).where(self.alive)
        #: A claim counts as a heartbeat, written at most every ``p_seen_every`` seconds: a worker
        #: loop without a heartbeat thread (the worker guide's) stays alive while it claims.
        self.worker_seen: Update = (
            update(workers)
            .where(self.alive, workers.c.last_heartbeat < dialect.now_plus(-bindparam("p_seen_every")))
            .values(last_heartbeat=now)
        )
        self.worker_stop: Update = (
            update(workers).where(workers.c.id == bindparam("p_worker_id")).values(stopped_at=now)
        )
        self.workers_list: Select = select(
            workers, type_coerce(now, DateTime(timezone=True)).label("db_now")
        ).order_by(workers.c.started_at.desc(), workers.c.id.desc())
        #: Every step held right now, with its holder: bounded by how many steps run at once,
        #: whatever the number of workers ever registered.
        self.steps_running: Select = (
            select(steps.c.worker_id, steps.c.instance_id, steps.c.name)
            .where(steps.c.state == Status.RUNNING.value, steps.c.worker_id.is_not(None))
            .order_by(steps.c.id)
        )


@cache
def for_dialect(name: str) -> WorkerQueries:
    return WorkerQueries(dialect_of(name))
