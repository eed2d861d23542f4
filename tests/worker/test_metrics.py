"""``WorkerMetrics``: every step a worker starts ends in one outcome, counted as the broker decided.

A real :class:`Worker` on a real MemoryBroker, counting in a registry of the
test's own; the numbers are compared with what the broker recorded. The
end-to-end test over HTTP with real worker processes is
``tests/cli/test_cli_metrics.py``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fuseline import Computed, Condition, Depends, FunctionStep, Map, Status, Step, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker
from fuseline.errors import WorkerExpired
from fuseline.metrics import QueueCollector, WorkerMetrics
from fuseline.metrics.steps import MeteredClient
from fuseline.policies import RetryPolicy
from tests.contract import workflows as wf
from tests.worker.faults import FaultyClient

OUTCOMES = ("started", "succeeded", "skipped", "failed", "retried", "lost")


class Load(Step):
    def run_step(self, x: int) -> int:
        return x


load = Load()


class Judge(Step):
    """Fails for odd inputs: no retry."""

    def run_step(self, value: Computed[int] = Depends(load)) -> int:
        if value % 2:
            raise ValueError(f"{value} is odd")
        return value


ABOVE_2 = Condition(lambda v: v > 2, "> 2")


class Big(Step):
    """Runs only for inputs above 2 (SKIPPED by the worker otherwise)."""

    def run_step(self, value: Computed[int] = Depends(load, condition=ABOVE_2)) -> int:
        return value


JUDGED = Workflow(outputs=[Judge(), Big()], workflow_id="metrics-judged", version="1")


class Flap(Step):
    """Always fails; the broker retries it twice."""

    def run_step(self) -> None:
        raise RuntimeError("flapping")


FLAPPING = Workflow(
    outputs=Flap(policies=[RetryPolicy(max_retries=2)]), workflow_id="metrics-flap", version="1"
)


def items(n: int) -> list[int]:
    return list(range(n))


def square(item: int) -> int:
    return item * item


SQUARES = Workflow(
    outputs=Map(FunctionStep(square), over=FunctionStep(items)), workflow_id="metrics-map", version="1"
)

#: The broker a Cancelling step cancels its own instance on.
BROKERS: list[MemoryBroker] = []


class Cancelling(Step):
    """Cancels its own instance while it runs (the only one running), so its report is refused."""

    def run_step(self) -> str:
        broker = BROKERS[0]
        for info in broker.list_instances(Status.RUNNING, "metrics-cancelled"):
            broker.cancel_instance(info.instance_id)
        return "too late"


CANCELLED = Workflow(outputs=Cancelling(), workflow_id="metrics-cancelled", version="1")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def broker() -> Iterator[MemoryBroker]:
    broker = MemoryBroker()
    BROKERS[:] = [broker]
    yield broker
    BROKERS.clear()


def counts(registry: CollectorRegistry, workflow: str, step: str) -> dict[str, int]:
    """The outcomes counted for one step (0 for those never counted)."""
    found = {
        outcome: registry.get_sample_value(
            "fuseline_steps_total", {"workflow": workflow, "step": step, "outcome": outcome}
        )
        for outcome in OUTCOMES
    }
    return {outcome: int(value or 0) for outcome, value in found.items()}


def drain(broker: MemoryBroker, registry: CollectorRegistry, *flows: Workflow, **options: Any) -> int:
    worker = Worker(LocalBrokerClient(broker), list(flows), observer=WorkerMetrics(registry), **options)
    try:
        return worker.work()
    finally:
        worker.close()


@pytest.mark.parametrize("prefetch", [1, 4])
def test_each_run_is_counted_once_with_the_outcome_the_broker_recorded(
    broker: MemoryBroker, registry: CollectorRegistry, prefetch: int
) -> None:
    ids = [JUDGED.dispatch(broker, {"x": x}) for x in range(6)]

    ran = drain(broker, registry, JUDGED, prefetch=prefetch)

    failed = [i for i in ids if broker.get_instance(i).step("judge").state is Status.FAILED]
    assert len(failed) == 3
    assert counts(registry, "metrics-judged", "load") == {
        **dict.fromkeys(OUTCOMES, 0),
        "started": 6,
        "succeeded": 6,
    }
    judge = counts(registry, "metrics-judged", "judge")
    assert (judge["started"], judge["succeeded"], judge["failed"]) == (6, 3, 3)
    big = counts(registry, "metrics-judged", "big")
    # A failed Judge cancels Big where it has not run yet; each Big that ran is counted once.
    ran_big = sum(broker.get_instance(i).step("big").state in (Status.SUCCEEDED, Status.SKIPPED) for i in ids)
    assert big["started"] == big["succeeded"] + big["skipped"] == ran_big
    assert big["skipped"] == sum(broker.get_instance(i).step("big").state is Status.SKIPPED for i in ids)
    durations = registry.get_sample_value(
        "fuseline_step_duration_seconds_count", {"workflow": "metrics-judged", "step": "load"}
    )
    assert durations == 6
    started = sum(counts(registry, "metrics-judged", s)["started"] for s in ("load", "judge", "big"))
    assert started == ran
    claims = registry.get_sample_value("fuseline_claim_seconds_count", {})
    reports = registry.get_sample_value("fuseline_report_seconds_count", {}) or 0
    assert claims is not None and claims >= 1
    if prefetch == 1:  # every report travels with the next claim
        assert reports == 0 and claims == ran + 1
    else:
        assert reports >= 1


def test_failures_the_broker_retries_count_as_retried_and_the_last_as_failed(
    broker: MemoryBroker, registry: CollectorRegistry
) -> None:
    ids = [FLAPPING.dispatch(broker, {}) for _ in range(2)]

    drain(broker, registry, FLAPPING)

    assert [broker.get_instance(i).status for i in ids] == [Status.FAILED] * 2
    flap = counts(registry, "metrics-flap", "flap")
    assert flap == {**dict.fromkeys(OUTCOMES, 0), "started": 6, "retried": 4, "failed": 2}


def test_map_items_are_counted_under_the_map_name(broker: MemoryBroker, registry: CollectorRegistry) -> None:
    SQUARES.dispatch(broker, {"n": 5})

    drain(broker, registry, SQUARES)

    assert counts(registry, "metrics-map", "square")["succeeded"] == 5
    names = {s.labels["step"] for m in registry.collect() for s in m.samples if "step" in s.labels}
    assert names == {"items", "square"}


@pytest.mark.parametrize("prefetch", [1, 2])
def test_a_refused_report_counts_as_lost(
    broker: MemoryBroker, registry: CollectorRegistry, prefetch: int
) -> None:
    instance = CANCELLED.dispatch(broker, {})

    drain(broker, registry, CANCELLED, prefetch=prefetch)

    assert broker.get_instance(instance).status is Status.CANCELLED
    cancelling = counts(registry, "metrics-cancelled", "cancelling")
    assert cancelling == {**dict.fromkeys(OUTCOMES, 0), "started": 1, "lost": 1}


def test_without_an_observer_the_worker_talks_to_its_client_directly(broker: MemoryBroker) -> None:
    client = LocalBrokerClient(broker)
    plain = Worker(client, [JUDGED])
    metered = Worker(client, [JUDGED], observer=WorkerMetrics(CollectorRegistry()))
    try:
        assert plain.client is client
        assert isinstance(metered.client, MeteredClient) and metered.client.inner is client
        assert metered.client.lease_seconds == client.lease_seconds
    finally:
        plain.close()
        metered.close()


def test_the_grafana_dashboard_queries_only_series_fuseline_exports(
    broker: MemoryBroker, registry: CollectorRegistry
) -> None:
    FLAPPING.dispatch(broker, {})
    drain(broker, registry, FLAPPING)
    collector = QueueCollector("sqlite://", dead_after=60)  # never read: describe() only
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name for family in collector.describe()}
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())

    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"fuseline_[a-z_]+", target["expr"])
    }

    assert queried - exported == set()
    assert {"fuseline_steps_total", "fuseline_queue_depth", "fuseline_workers_alive"} <= queried


def test_a_result_dropped_because_the_lease_was_lost_counts_as_lost(registry: CollectorRegistry) -> None:
    """The heartbeat is refused (the worker listed dead): the step in hand is dropped, then run
    again under the worker's new id once its lease lapses."""
    wf.reset()
    broker = MemoryBroker(lease_seconds=1.0)
    instance = wf.SLEEPY.dispatch(broker, {"seconds": 0.3})
    client = FaultyClient(broker, keep_alive=[WorkerExpired])
    worker = Worker(client, [wf.SLEEPY], heartbeat_interval=0.05, observer=WorkerMetrics(registry))
    deadline = time.monotonic() + 30
    try:
        worker.work(
            block=True,
            poll_interval=0.05,
            until=lambda: not broker.has_running_instances() or time.monotonic() > deadline,
        )
    finally:
        worker.close()

    assert broker.get_instance(instance).status is Status.SUCCEEDED
    sleepy = counts(registry, "contract-sleepy", "sleepy")
    assert sleepy == {**dict.fromkeys(OUTCOMES, 0), "started": 2, "lost": 1, "succeeded": 1}
