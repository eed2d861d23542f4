"""Statements of metrics: what waits in the queues and how many workers live, in one read.

``backlog`` is the one statement a metrics scrape runs (at most once per
cache period, see :class:`fuseline.metrics.QueueCollector`). Its first part
walks only the partial index ``ix_fuseline_steps_queued`` (``state =
'QUEUED'``; it holds ``workflow_id``, ``queue`` and ``available_at``, so
PostgreSQL answers with an index-only scan): its cost follows the number of
queued steps, never the history of finished ones. The state is written as
a literal so that a generic plan, prepared once, still matches the index's
predicate. Steps parked in the broker's own queues (Sleep, WaitFor, a Map or
SubWorkflow waiting for its items or child) are no worker's work and are
left out. The second part counts live workers with the rule every claim
applies (:attr:`.workers.WorkerQueries.alive`): not stopped, a heartbeat
less than ``p_dead_after`` seconds old.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    CompoundSelect,
    DateTime,
    Float,
    Integer,
    String,
    bindparam,
    func,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
)

from ....states import Status
from ...scheduling import PARKED_QUEUES
from ..dialects import Dialect, dialect_of
from ..models import steps, workers


class MetricsQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = type_coerce(dialect.now(), DateTime(timezone=True))
        queued = literal_column(f"'{Status.QUEUED.value}'")
        #: Per (workflow, queue): the QUEUED steps claimable now and when the oldest became so,
        #: then one row (workflow and queue NULL) whose ``depth`` is the number of live workers.
        self.backlog: CompoundSelect = union_all(
            select(
                steps.c.workflow_id.label("workflow_id"),
                steps.c.queue.label("queue"),
                func.count().label("depth"),
                func.min(steps.c.available_at).label("oldest"),
                now.label("db_now"),
            )
            .where(
                steps.c.state == queued,
                steps.c.available_at <= dialect.now(),
                steps.c.queue.not_in(sorted(PARKED_QUEUES)),
            )
            .group_by(steps.c.workflow_id, steps.c.queue),
            select(
                type_coerce(null(), String()),
                type_coerce(null(), String()),
                type_coerce(func.count(), Integer()),
                type_coerce(null(), DateTime(timezone=True)),
                now,
            ).where(
                workers.c.stopped_at.is_(None),
                workers.c.last_heartbeat >= dialect.now_plus(-bindparam("p_dead_after", type_=Float())),
            ),
        )


@cache
def for_dialect(name: str) -> MetricsQueries:
    return MetricsQueries(dialect_of(name))
