"""What ``explain_instance`` reads to say why a step is not running (it never writes)."""

from __future__ import annotations

from functools import cache

from sqlalchemy import DateTime, Select, bindparam, func, select, type_coerce

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import instances, steps, workers


class ExplainQueries:
    def __init__(self, dialect: Dialect) -> None:
        now = type_coerce(dialect.now(), DateTime(timezone=True))
        self.instance: Select = select(instances, now.label("db_now")).where(
            instances.c.id == bindparam("p_instance_id")
        )
        #: A few of the steps holding a step ConcurrencyLimit now, to name them.
        self.steps_holding_limit: Select = (
            select(steps.c.instance_id, steps.c.name)
            .where(
                steps.c.state == Status.RUNNING.value,
                steps.c.workflow_id == bindparam("p_workflow_id"),
                func.coalesce(steps.c.item_of, steps.c.name) == bindparam("p_name"),
                steps.c.limit_key.is_not_distinct_from(bindparam("p_limit_key")),
                steps.c.lease_expires_at > dialect.now(),
            )
            .order_by(steps.c.id)
            .limit(10)
        )
        #: The workers alive now, with what they serve.
        self.workers_alive: Select = select(
            workers.c.id, workers.c.host, workers.c.workflows, workers.c.queues
        ).where(
            workers.c.stopped_at.is_(None),
            workers.c.last_heartbeat >= dialect.now_plus(-bindparam("p_dead_after")),
        )
        self.worker_host: Select = select(workers.c.host).where(workers.c.id == bindparam("p_worker_id"))


@cache
def for_dialect(name: str) -> ExplainQueries:
    return ExplainQueries(dialect_of(name))
