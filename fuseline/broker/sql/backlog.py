"""The backlog: the claimable steps per workflow and queue, and the live workers, read at once.

What a metrics scrape shows of the database (``fuseline_queue_depth``,
``fuseline_queue_oldest_age_seconds``, ``fuseline_workers_alive``), read by
the one statement :attr:`.queries.metrics.MetricsQueries.backlog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Engine

from .queries import metrics
from .rows import aware


class QueueBacklog(NamedTuple):
    """The steps of one workflow (every version) waiting in one queue, claimable now."""

    workflow_id: str
    queue: str
    #: How many are QUEUED with their time come (limits may still hold some back).
    depth: int
    #: Seconds since the oldest of them became claimable, by the database clock.
    oldest_age_seconds: float


@dataclass(frozen=True)
class Backlog:
    queues: tuple[QueueBacklog, ...]
    #: Workers not stopped whose last heartbeat (or claim) is recent enough for claims to pass.
    workers_alive: int


def read_backlog(engine: Engine, *, dead_after: float) -> Backlog:
    """One read of the backlog; a worker is alive when heard from within ``dead_after`` seconds.

    Database errors propagate (SQLAlchemy's): the caller decides what a scrape shows then.
    """
    statement = metrics.for_dialect(engine.dialect.name).backlog
    with engine.connect() as conn:
        rows = conn.execute(statement, {"p_dead_after": dead_after}).all()
    queues: list[QueueBacklog] = []
    alive = 0
    for row in rows:
        if row.workflow_id is None:
            alive = int(row.depth)
            continue
        oldest, now = aware(row.oldest), aware(row.db_now)
        age = (now - oldest).total_seconds() if oldest is not None and now is not None else 0.0
        queues.append(QueueBacklog(row.workflow_id, row.queue, int(row.depth), max(0.0, age)))
    return Backlog(tuple(queues), alive)
