"""In-process runs keep their state in the run: step states, lifecycle hooks, per run.

Regressions: ``Workflow.run`` used to keep step states on the shared Step
objects (so one run's states leaked into the next, branches not taken stayed
PENDING and steps downstream of a failure were never CANCELLED), and tracked
``before_all`` on the shared Workflow (so concurrent runs, or a run beside a
worker, shared or ended each other's lifecycle).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fuseline import Computed, Depends, Status, Step, StepAssignment, Workflow, WorkflowRun
from fuseline.broker import InstanceInfo, MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import PoolEngine, ProcessEngine
from fuseline.engines.assignment import run_assignment
from fuseline.workflow import StepLifecycle


def broker_states(info: InstanceInfo) -> dict[str, Status]:
    return {step.name: step.state for step in info.steps}


class Value(Step):
    def __init__(self, value: Any, **kwargs: Any) -> None:
        self.value = value
        super().__init__(**kwargs)

    def run_step(self) -> Any:
        return self.value


def make_review(barrier: threading.Barrier | None = None) -> tuple[Workflow, dict[str, Step]]:
    """review -> approve (when score > 5) | reject (otherwise)."""

    class Review(Step):
        def run_step(self, score: int) -> str:
            if barrier is not None:
                barrier.wait()
            return "approve" if score > 5 else "reject"

    review = Review()
    approve, reject = Value("approved", name="approve"), Value("rejected", name="reject")
    review - "approve" >> approve
    review - "reject" >> reject
    workflow = Workflow([approve, reject], workflow_id="review")
    return workflow, {"review": review, "approve": approve, "reject": reject}


def test_step_states_of_one_run_do_not_leak_into_the_next() -> None:
    """Regression: after a run with score=9 then one with score=1, ``approve`` still showed SUCCEEDED."""
    workflow, steps = make_review()

    high = workflow.run_instance({"score": 9})
    low = workflow.run_instance({"score": 1})

    assert high.steps == {"review": "SUCCEEDED", "approve": "SUCCEEDED", "reject": "SKIPPED"}
    assert low.steps == {"review": "SUCCEEDED", "approve": "SKIPPED", "reject": "SUCCEEDED"}
    assert (high.result, low.result) == (["approved", None], [None, "rejected"])
    # the shared Step objects carry no run's state
    assert {name: step.state for name, step in steps.items()} == dict.fromkeys(steps, Status.PENDING)


def test_in_process_runs_record_the_same_step_states_as_a_broker(run_on_broker) -> None:
    """Regression: branches not taken and steps skipped by a condition stayed PENDING in-process."""
    zero = Value(0, name="zero")

    class Guarded(Step):
        def run_step(self, v: int = Depends(zero, condition=bool)) -> int:
            return v

    guarded = Guarded()
    after_guarded = Value("unreached", name="after_guarded")
    guarded >> after_guarded
    workflow_review, _ = make_review()
    workflow = Workflow([after_guarded, *workflow_review.outputs], workflow_id="mixed")

    run = workflow.run_instance({"score": 2})

    assert run.steps == {
        "zero": "SUCCEEDED",
        "guarded": "SKIPPED",
        "after_guarded": "SKIPPED",
        "review": "SUCCEEDED",
        "approve": "SKIPPED",
        "reject": "SUCCEEDED",
    }
    assert run.steps == broker_states(run_on_broker(workflow, {"score": 2}))
    assert (run.status, run.error) == (Status.SUCCEEDED, None)


def test_steps_downstream_of_a_failure_end_cancelled_in_process(run_on_broker) -> None:
    """Regression: steps after a failed step stayed PENDING in-process instead of CANCELLED."""

    class Fail(Step):
        def run_step(self) -> None:
            raise ValueError("bad row")

    fail = Fail()

    class After(Step):
        def run_step(self, v: Any = Depends(fail)) -> str:
            return "ran"

    after = After()
    last = Value("last", name="last")
    after >> last
    workflow = Workflow(last, workflow_id="cancelled")

    run = workflow.run_instance()

    assert run.steps == {"fail": "FAILED", "after": "CANCELLED", "last": "CANCELLED"}
    assert run.steps == broker_states(run_on_broker(workflow))
    assert run.status is Status.FAILED
    assert isinstance(run.exception, ValueError)
    assert run.error is not None and "bad row" in run.error
    with pytest.raises(ValueError, match="bad row"):
        run.result_or_raise()
    with pytest.raises(ValueError, match="bad row"):
        workflow.run()


def test_concurrent_runs_of_one_workflow_keep_their_own_step_states() -> None:
    # both runs wait for each other inside ``review``, so they are in flight together
    workflow, _ = make_review(threading.Barrier(2, timeout=5))
    runs: dict[int, WorkflowRun] = {}

    def run(score: int) -> None:
        runs[score] = workflow.run_instance({"score": score})

    threads = [threading.Thread(target=run, args=(score,)) for score in (9, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert runs[9].steps == {"review": "SUCCEEDED", "approve": "SUCCEEDED", "reject": "SKIPPED"}
    assert runs[1].steps == {"review": "SUCCEEDED", "approve": "SKIPPED", "reject": "SUCCEEDED"}
    assert (runs[9].result, runs[1].result) == (["approved", None], [None, "rejected"])


class Hooked(Step):
    """Logs its lifecycle; run_step waits at ``barrier`` so that two runs overlap."""

    def __init__(self, log: list[str], barrier: threading.Barrier | None = None, **kwargs: Any) -> None:
        self.log = log
        self.barrier = barrier
        self.lock = threading.Lock()
        super().__init__(**kwargs)

    def before_all(self, shared: dict[Step, Any]) -> None:
        with self.lock:
            self.log.append("before_all")

    def run_step(self, x: int) -> int:
        with self.lock:
            self.log.append("run")
        if self.barrier is not None:
            self.barrier.wait()
        return x

    def after_all(self, shared: dict[Step, Any]) -> None:
        with self.lock:
            self.log.append("after_all")


def test_concurrent_runs_of_one_workflow_each_pair_their_own_before_all_and_after_all() -> None:
    """Regression: the runs shared one ``before_all`` and the first to end called ``after_all``
    while the other still ran."""
    log: list[str] = []
    workflow = Workflow(Hooked(log, threading.Barrier(2, timeout=5)), workflow_id="hooked")
    results: dict[int, Any] = {}

    def run(x: int) -> None:
        results[x] = workflow.run({"x": x})

    threads = [threading.Thread(target=run, args=(x,)) for x in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == {1: 1, 2: 2}
    assert sorted(log) == ["after_all", "after_all", "before_all", "before_all", "run", "run"]
    # both runs were inside run_step before either ended
    assert log.index("after_all") > max(i for i, entry in enumerate(log) if entry == "run")


def test_an_in_process_run_does_not_end_the_lifecycle_of_a_worker_in_the_same_process() -> None:
    """Regression: ``Workflow.run`` closed the workflow's shared lifecycle, calling ``after_all``
    of a worker's steps mid-work (and making the worker call ``before_all`` again)."""
    log: list[str] = []
    workflow = Workflow(Hooked(log), workflow_id="shared-lifecycle")
    broker = MemoryBroker()
    engine = ProcessEngine(LocalBrokerClient(broker), [workflow])
    try:
        workflow.dispatch(broker, {"x": 1})
        assert engine.work() == 1
        assert log == ["before_all", "run"]

        assert workflow.run({"x": 2}) == 2
        assert log[2:] == ["before_all", "run", "after_all"]  # the run's own pair

        workflow.dispatch(broker, {"x": 3})
        assert engine.work() == 1
        assert log[5:] == ["run"]  # the worker's before_all still holds
    finally:
        engine.close()
    assert log[6:] == ["after_all"]


def assignment_for(workflow: Workflow, inputs: dict[str, Any]) -> StepAssignment:
    broker = MemoryBroker()
    workflow.dispatch(broker, inputs)
    worker_id = broker.register_worker([workflow.to_schema()])
    assignment = broker.get_step(worker_id)
    assert assignment is not None
    return assignment


def test_run_assignment_uses_the_lifecycle_it_is_given() -> None:
    log: list[str] = []
    workflow = Workflow(Hooked(log), workflow_id="given-lifecycle")
    lifecycle = StepLifecycle()

    for x in (1, 2):
        execution = run_assignment(workflow, assignment_for(workflow, {"x": x}), lifecycle)
        assert (execution.report.state, execution.report.result) == (Status.SUCCEEDED, x)
    assert log == ["before_all", "run", "run"]

    workflow.close()  # the workflow's own lifecycle prepared nothing
    assert log.count("after_all") == 0
    lifecycle.close()
    assert log.count("after_all") == 1
    lifecycle.close()
    assert log.count("after_all") == 1


def test_run_assignment_without_a_lifecycle_uses_the_workflows_own() -> None:
    log: list[str] = []
    workflow = Workflow(Hooked(log), workflow_id="own-lifecycle")

    run_assignment(workflow, assignment_for(workflow, {"x": 1}))
    run_assignment(workflow, assignment_for(workflow, {"x": 2}))
    workflow.close()

    assert log == ["before_all", "run", "run", "after_all"]


def test_a_failed_before_all_is_tried_again_and_gets_no_after_all() -> None:
    calls: list[str] = []

    class Fragile(Step):
        def before_all(self, shared: dict[Step, Any]) -> None:
            calls.append("before_all")
            if calls.count("before_all") == 1:
                raise ConnectionError("pool not ready")

        def run_step(self) -> str:
            return "ok"

        def after_all(self, shared: dict[Step, Any]) -> None:
            calls.append("after_all")

    step = Fragile()
    workflow = Workflow(step)
    with pytest.raises(ConnectionError):
        workflow._execute_step(step, {}, {})
    assert workflow._execute_step(step, {}, {}) == "ok"
    workflow.close()

    assert calls == ["before_all", "before_all", "after_all"]


def test_pool_engine_reports_each_run_on_its_own() -> None:
    source = Value(3, name="source")

    class Double(Step):
        def run_step(self, v: Computed[int] = Depends(source)) -> int:
            return 2 * v

    workflow = Workflow(Double(), workflow_id="double")
    engine = PoolEngine(workers=2)

    first, second = engine.run(workflow, {}), engine.run(workflow, {})

    expected = WorkflowRun(
        status=Status.SUCCEEDED,
        result=6,
        error=None,
        steps={"source": Status.SUCCEEDED, "double": Status.SUCCEEDED},
    )
    assert first == second == expected
    assert first is not second
