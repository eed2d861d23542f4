"""Join race, full version (RELIABILITY item 5): B and C report at the same moment, many times.

Each round dispatches one diamond (A -> {B, C} -> D, with an AND join or an
OR join at D); A is claimed and reported, then B and C are claimed by two
workers on two ``SqlBroker`` instances (two connection pools) and reported
by two threads released together by a barrier. Even rounds use
``report_step``, odd rounds ``report_and_claim`` (what the worker loop
calls), so the join is decided either way. Pass, every round: D is queued
exactly once, and only after both (AND) or one (OR) of B and C succeeded;
it is claimed once and its result is the AND sum or the value of the first
of B and C to be accepted; the instance ends once; no exception (an
IntegrityError, a deadlock) reaches a caller. ``verify()`` holds at the end.
The scaled-down join race of :mod:`tests.sql.test_sql_join_race` runs
worker processes; this one aims the race precisely, many times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fuseline import Status, StepReport, Workflow
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import assert_invariants
from tests.chaos.scale import JOIN_RACES, pick, report

pytestmark = pytest.mark.slow

BARRIER_TIMEOUT_SECONDS = 30


def success(assignment: StepAssignment, result: Any) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=result,
        attempt=assignment.attempt,
        version=assignment.version,
    )


def value_of(assignment: StepAssignment) -> int:
    """What the step computes from its payload (the join diamonds of tests.chaos.flows)."""
    inputs, results = assignment.payload["workflow_inputs"], assignment.payload["results"]
    name = assignment.step_name
    if name == "a":
        return inputs["n"]
    if name == "b":
        return results["a"] * 2
    if name == "c":
        return results["a"] + 1
    return sum(results.values())  # d: the AND sum, or the one value the OR join received


class Racer(threading.Thread):
    """Reports the step handed to it when the barrier opens; keeps every outcome and error."""

    def __init__(self, broker: SqlBroker, worker_id: str, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.broker, self.worker_id, self.barrier = broker, worker_id, barrier
        self.task: tuple[StepAssignment, bool] | None = None
        self.claimed_next: StepAssignment | None = None
        self.errors: list[BaseException] = []
        #: perf_counter() when the last report was sent and when its answer came back.
        self.span = (0.0, 0.0)
        self.go = threading.Event()
        self.done = threading.Event()
        self.stop = False

    def run(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            if self.stop:
                return
            try:
                assert self.task is not None
                assignment, and_claim = self.task
                report_ = success(assignment, value_of(assignment))
                self.barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
                sent = time.perf_counter()
                if and_claim:
                    self.claimed_next = self.broker.report_and_claim(self.worker_id, report_)
                else:
                    self.broker.report_step(self.worker_id, report_)
                    self.claimed_next = None
                self.span = (sent, time.perf_counter())
            except BaseException as exc:
                self.errors.append(exc)
            finally:
                self.done.set()


@pytest.fixture
def brokers(chaos_postgres: ChaosDatabase) -> Iterator[list[SqlBroker]]:
    opened = [SqlBroker(chaos_postgres.url, listen=False) for _ in range(3)]
    yield opened
    for broker in opened:
        broker.close()


@pytest.mark.timeout(pick(300, 1800))
@pytest.mark.parametrize("kind", ["and", "or"])
def test_b_and_c_reporting_at_once_queue_d_exactly_once(
    kind: str, chaos_postgres: ChaosDatabase, brokers: list[SqlBroker]
) -> None:
    workflow: Workflow = flows.join_and if kind == "and" else flows.join_or
    schema = workflow.to_schema()
    main = brokers[0]
    main_worker = main.register_worker([schema])
    barrier = threading.Barrier(2)
    racers = [Racer(broker, broker.register_worker([schema]), barrier) for broker in brokers[1:]]
    for racer in racers:
        racer.start()
    began = time.perf_counter()
    d_claimed_by_racer = 0
    overlapping = 0
    try:
        for round_ in range(JOIN_RACES):
            n = round_
            instance_id = main.dispatch_workflow(schema, {"n": n})
            a = main.get_step(main_worker)
            assert a is not None and (a.instance_id, a.step_name) == (instance_id, "a"), a
            main.report_step(main_worker, success(a, value_of(a)))
            first = racers[0].broker.get_step(racers[0].worker_id)
            second = racers[1].broker.get_step(racers[1].worker_id)
            assert first is not None and second is not None, (first, second)
            assert {first.step_name, second.step_name} == {"b", "c"}, (first, second)
            assert {first.instance_id, second.instance_id} == {instance_id}
            and_claim = round_ % 2 == 1
            for racer, assignment in zip(racers, (first, second), strict=True):
                racer.task = (assignment, and_claim)
                racer.done.clear()
                racer.go.set()
            for racer in racers:
                assert racer.done.wait(BARRIER_TIMEOUT_SECONDS), f"round {round_}: a reporter hung"
            errors = [e for racer in racers for e in racer.errors]
            assert not errors, f"round {round_} ({kind}): an error reached a caller: {errors!r}"
            (start_1, end_1), (start_2, end_2) = (r.span for r in racers)
            overlapping += start_1 < end_2 and start_2 < end_1

            got_d = [r.claimed_next for r in racers if r.claimed_next is not None]
            assert len(got_d) <= 1, f"round {round_}: D handed out twice: {got_d}"
            if got_d:
                d_claimed_by_racer += 1
                d, owner = got_d[0], next(r for r in racers if r.claimed_next is not None)
                owner.broker.report_step(owner.worker_id, success(d, value_of(d)))
            else:
                d = main.get_step(main_worker)
                assert d is not None and (d.instance_id, d.step_name) == (instance_id, "d"), d
                main.report_step(main_worker, success(d, value_of(d)))
            assert main.get_step(main_worker) is None, f"round {round_}: something else was queued"
            check_round(main, instance_id, kind, n)
    finally:
        for racer in racers:
            racer.stop = True
            racer.go.set()
        for racer in racers:
            racer.join(timeout=10)
    seconds = time.perf_counter() - began
    assert_invariants(chaos_postgres.engine)
    # The race was run: in most rounds the two reports were in flight at the same time.
    assert overlapping >= JOIN_RACES // 2, f"only {overlapping} of {JOIN_RACES} rounds raced"
    report(
        f"join_race_{kind}",
        {
            "rounds": JOIN_RACES,
            "rounds_with_both_reports_in_flight": overlapping,
            "d_claimed_in_the_report_round_trip": d_claimed_by_racer,
            "seconds": round(seconds, 2),
        },
    )


def check_round(broker: SqlBroker, instance_id: str, kind: str, n: int) -> None:
    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED, (instance_id, info.status, info.error)
    history = broker.instance_events(instance_id)
    position = {(e.kind, e.step_name): i for i, e in reversed(list(enumerate(history)))}
    counted = [(e.kind, e.step_name) for e in history]
    assert counted.count(("queued", "d")) == 1, counted
    assert counted.count(("claimed", "d")) == 1, counted
    assert counted.count(("succeeded", "b")) == counted.count(("succeeded", "c")) == 1, counted
    assert sum(1 for k, _ in counted if k.startswith("instance_")) == 1, counted
    queued_d = position[("queued", "d")]
    b_done, c_done = position[("succeeded", "b")], position[("succeeded", "c")]
    if kind == "and":
        assert queued_d > max(b_done, c_done), f"D queued before both B and C succeeded: {counted}"
        assert info.result == 2 * n + (n + 1), info.result
    else:
        assert queued_d > min(b_done, c_done), f"D queued before B or C succeeded: {counted}"
        first = "b" if b_done < c_done else "c"
        assert info.result == (2 * n if first == "b" else n + 1), (info.result, first, counted)
