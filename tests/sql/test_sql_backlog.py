"""The backlog a metrics scrape reads: claimable steps per workflow and queue, live workers.

One statement (``MetricsQueries.backlog``) on both dialects; on PostgreSQL
it walks the partial index of QUEUED steps. ``QueueCollector`` reads it at
most once per cache period and says nothing, rather than something stale,
when the database cannot be read.
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from fuseline import FunctionStep, Map, Step, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.backlog import read_backlog
from fuseline.broker.sql.queries import metrics
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker
from fuseline.metrics import QueueCollector

QUEUED_INDEX = "ix_fuseline_steps_queued"


class Fast(Step):
    def run_step(self) -> int:
        return 1


class Slow(Step):
    def run_step(self) -> int:
        return 2


TWO_QUEUES = Workflow(outputs=[Fast(), Slow(queue="slow")], workflow_id="backlog-two-queues", version="1")


def items() -> list[int]:
    return [1, 2, 3]


def double(item: int) -> int:
    return 2 * item


MAPPED = Workflow(
    outputs=Map(FunctionStep(double), over=FunctionStep(items)), workflow_id="backlog-map", version="1"
)


def depths(broker: SqlBroker) -> dict[tuple[str, str], int]:
    return {(q.workflow_id, q.queue): q.depth for q in read_backlog(broker.engine, dead_after=60).queues}


def test_backlog_counts_steps_claimable_now_per_workflow_and_queue(broker: SqlBroker) -> None:
    for _ in range(3):
        TWO_QUEUES.dispatch(broker)
    TWO_QUEUES.dispatch(broker, delay=3600)  # not claimable yet: not counted

    backlog = read_backlog(broker.engine, dead_after=60)

    assert depths(broker) == {("backlog-two-queues", "default"): 3, ("backlog-two-queues", "slow"): 3}
    assert all(q.oldest_age_seconds >= 0 for q in backlog.queues)
    assert backlog.workers_alive == 0


def test_a_map_waiting_for_its_items_is_no_workers_work(broker: SqlBroker) -> None:
    MAPPED.dispatch(broker)
    worker = Worker(LocalBrokerClient(broker), [MAPPED])
    try:
        assert worker.work(max_steps=1) == 1  # ``items`` ran: three items queued, the map parked

        assert depths(broker) == {("backlog-map", "default"): 3}
        assert read_backlog(broker.engine, dead_after=60).workers_alive == 1
    finally:
        worker.close()
    assert read_backlog(broker.engine, dead_after=60).workers_alive == 0


def test_backlog_walks_the_partial_index_of_queued_steps(postgres_url: sa.URL) -> None:
    broker = SqlBroker(postgres_url)
    try:
        TWO_QUEUES.dispatch(broker)
        statement = metrics.for_dialect("postgresql").backlog.params(p_dead_after=60)
        sql = str(statement.compile(dialect=broker.engine.dialect, compile_kwargs={"literal_binds": True}))
        with broker.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")  # the index must be usable, not merely chosen
            plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + sql.replace("%%", "%")).scalars())
    finally:
        broker.close()
    assert f"Index Only Scan using {QUEUED_INDEX} on fuseline_steps" in plan


def test_collector_reads_once_per_cache_period_and_keeps_emptied_queues_at_zero(broker: SqlBroker) -> None:
    collector = QueueCollector(broker.engine, dead_after=60, cache_seconds=3600, queues=[("idle", "default")])
    registry = CollectorRegistry()
    registry.register(collector)
    assert collector.reads == 0  # registering reads nothing
    TWO_QUEUES.dispatch(broker)

    first = registry.get_sample_value(
        "fuseline_queue_depth", {"workflow": "backlog-two-queues", "queue": "slow"}
    )
    assert first == 1
    assert registry.get_sample_value("fuseline_queue_depth", {"workflow": "idle", "queue": "default"}) == 0
    TWO_QUEUES.dispatch(broker)
    cached = registry.get_sample_value(
        "fuseline_queue_depth", {"workflow": "backlog-two-queues", "queue": "slow"}
    )
    assert (cached, collector.reads) == (1, 1)

    collector.cache_seconds = 0
    worker = Worker(LocalBrokerClient(broker), [TWO_QUEUES])
    try:
        assert worker.work() == 4
    finally:
        worker.close()
    drained = registry.get_sample_value(
        "fuseline_queue_depth", {"workflow": "backlog-two-queues", "queue": "slow"}
    )
    age = registry.get_sample_value(
        "fuseline_queue_oldest_age_seconds", {"workflow": "backlog-two-queues", "queue": "slow"}
    )
    assert (drained, age) == (0, 0)
    assert collector.reads == 3  # without the cache, each of the two scrapes above read


def test_an_unreachable_database_leaves_the_gauges_out_of_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = QueueCollector("postgresql+psycopg://nobody@127.0.0.1:1/none", dead_after=60, cache_seconds=0)
    try:
        with caplog.at_level(logging.WARNING, logger="fuseline.metrics"):
            assert list(collector.collect()) == []
            assert list(collector.collect()) == []
    finally:
        collector.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("cannot read the queues for metrics")
