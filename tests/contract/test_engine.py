"""Workers (``Worker``, first named ``ProcessEngine``) on each broker: the worker guide's scenarios,
end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest

from fuseline import Status, StepAssignment, StepReport, Workflow
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker
from fuseline.workflow import WorkflowSchema

from . import workflows as wf
from .support import InjectingClient, register, states, trail


def test_a_single_step_goes_from_queued_through_running_to_succeeded(broker, make_engine):
    instance_id = wf.SINGLE.dispatch(broker, {"x": 21})
    assert states(broker.get_instance(instance_id)) == {"double": Status.QUEUED}

    ran = make_engine(broker, wf.SINGLE).work()

    assert ran == 1
    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 42)
    assert (info.step("double").state, info.step("double").attempt) == (Status.SUCCEEDED, 1)
    assert trail(broker, instance_id) == [
        ("dispatched", None),
        ("queued", "double"),
        ("claimed", "double"),
        ("succeeded", "double"),
        ("instance_succeeded", None),
    ]
    assert wf.CALLS["double"] == 1


def test_a_sequence_runs_its_second_step_after_the_first(broker, make_engine):
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})

    assert make_engine(broker, wf.SEQUENCE).work() == 2

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 20)
    history = trail(broker, instance_id)
    assert history.index(("succeeded", "first")) < history.index(("claimed", "second"))
    assert info.step("first").finished_at <= info.step("second").started_at


def test_a_branch_runs_only_the_chosen_successor(broker, make_engine):
    instance_id = wf.BRANCH.dispatch(broker, {"choice": "reject"})

    assert make_engine(broker, wf.BRANCH).work() == 2

    info = broker.get_instance(instance_id)
    assert states(info) == {
        "decide": Status.SUCCEEDED,
        "approve": Status.SKIPPED,
        "reject": Status.SUCCEEDED,
        "audit": Status.SKIPPED,
    }
    assert (info.status, info.result) == (Status.SUCCEEDED, [None, "rejected", None])
    assert (wf.CALLS["approve"], wf.CALLS["reject"], wf.CALLS["audit"]) == (0, 1, 0)


def test_a_worker_leaves_retries_to_the_broker_which_queues_the_step_again_until_it_succeeds(
    broker, make_engine
):
    instance_id = wf.FLAKY.dispatch(broker, {"x": 3})

    assert make_engine(broker, wf.FLAKY).work() == 3  # one claim per execution

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, "ok 3")
    assert wf.CALLS["flaky"] == 3
    assert (info.step("flaky").attempt, info.step("flaky").retries) == (3, 2)
    assert [kind for kind, _ in trail(broker, instance_id)].count("retry_scheduled") == 2


def test_an_exhausted_retry_policy_fails_the_step_and_cancels_its_successors(broker, make_engine):
    instance_id = wf.EXHAUSTED.dispatch(broker, {"x": 7})

    assert make_engine(broker, wf.EXHAUSTED).work() == 2

    info = broker.get_instance(instance_id)
    step = info.step("always_fails")
    assert (step.state, step.attempt, step.retries) == (Status.FAILED, 2, 1)
    assert "RuntimeError" in step.error
    assert "permanent failure 7" in step.error
    assert info.step("after_failure").state is Status.CANCELLED
    assert info.status is Status.FAILED
    assert "always_fails" in info.error
    assert wf.CALLS["always_fails"] == 2
    assert wf.CALLS["after_failure"] == 0


def test_the_worker_skips_assignments_it_does_not_know_and_carries_on(broker):
    instance_id = wf.SINGLE.dispatch(broker, {"x": 2})
    now = datetime.now(timezone.utc)
    unknown = [
        StepAssignment("contract-single", instance_id, "no_such_step", {}, now, now, 1, "1"),
        StepAssignment("no-such-workflow", instance_id, "double", {}, now, now, 1, "1"),
    ]
    client = InjectingClient(LocalBrokerClient(broker), unknown)
    engine = Worker(client, [wf.SINGLE])
    try:
        ran = engine.work()
    finally:
        engine.close()

    assert ran == 1
    assert [a.step_name for a in client.handed_out] == ["no_such_step", "double", "double"]
    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 4)


class RegistersMore(LocalBrokerClient):
    """A real client that registers workflows besides the worker's own: the broker then hands
    the worker steps its code does not know (a stale deployment, a hand-made registration)."""

    def __init__(self, broker, *extra: Workflow) -> None:
        super().__init__(broker)
        self.extra = [flow.to_schema() for flow in extra]

    def register_worker(self, schemas: Sequence[WorkflowSchema]) -> str:
        return super().register_worker([*schemas, *self.extra])


@pytest.mark.parametrize("prefetch", [1, 3])
def test_a_step_the_worker_does_not_know_is_given_back_at_once(broker, make_engine, prefetch):
    """Not run, not reported, and not held either: heartbeats would renew it forever."""
    unknown = wf.SEQUENCE.dispatch(broker, {"x": 1})
    known = wf.SINGLE.dispatch(broker, {"x": 2})
    worker = Worker(RegistersMore(broker, wf.SEQUENCE), [wf.SINGLE], prefetch=prefetch)
    try:
        assert worker.work() == 1
        assert broker.keep_alive(worker.worker_id) == []
    finally:
        worker.close()

    assert broker.get_instance(known).result == 4
    given_back = broker.get_instance(unknown).step("first")
    assert (given_back.state, given_back.worker_id) == (Status.QUEUED, None)
    assert ("released", "first") in trail(broker, unknown)
    assert wf.CALLS["first"] == 0
    assert make_engine(broker, wf.SEQUENCE).work() == 2
    assert broker.get_instance(unknown).result == 20


def test_work_on_an_empty_queue_returns_zero(broker, make_engine):
    engine = make_engine(broker, wf.SINGLE)

    assert engine.work() == 0
    assert engine.work() == 0


def test_a_step_returning_a_value_that_is_not_json_fails_and_the_worker_lives_on(broker, make_engine):
    bad = wf.NOT_JSON.dispatch(broker, {"kind": "set"})
    good = wf.SINGLE.dispatch(broker, {"x": 5})

    assert make_engine(broker, wf.NOT_JSON, wf.SINGLE).work() == 2

    failed = broker.get_instance(bad)
    assert failed.status is Status.FAILED
    assert "unserialisable" in failed.step("unserialisable").error
    assert "set" in failed.step("unserialisable").error
    assert broker.get_instance(good).result == 10


def test_two_workers_sharing_a_broker_run_every_step_exactly_once(broker, make_engine):
    instances = {x: wf.FAN_OUT.dispatch(broker, {"x": x}) for x in range(5)}
    engines = [make_engine(broker, wf.FAN_OUT) for _ in range(2)]
    ran: list[int] = []

    threads = [threading.Thread(target=lambda e=e: ran.append(e.work())) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    steps_per_instance = wf.FAN_OUT_WIDTH + 2
    assert sum(ran) == len(instances) * steps_per_instance
    for x, instance_id in instances.items():
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, f"gathered {x}")
        assert all(step.attempt == 1 for step in info.steps)
    expected = {("spread", x): 1 for x in instances}
    expected |= {(f"leaf_{i}", x): 1 for i in range(wf.FAN_OUT_WIDTH) for x in instances}
    expected |= {("gather", x): 1 for x in instances}
    assert wf.CALLS.snapshot() == expected


def test_blocking_workers_run_until_stopped(broker, make_engine):
    engines = [make_engine(broker, wf.SEQUENCE) for _ in range(2)]
    threads = [
        threading.Thread(target=e.work, kwargs={"block": True, "poll_interval": 0.02}) for e in engines
    ]
    for thread in threads:
        thread.start()
    try:
        ids = [wf.SEQUENCE.dispatch(broker, {"x": x}) for x in range(3)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(broker.get_instance(i).status is Status.SUCCEEDED for i in ids):
                break
            time.sleep(0.02)
    finally:
        for engine in engines:
            engine.stop()
        for thread in threads:
            thread.join(timeout=10)

    assert not any(thread.is_alive() for thread in threads)
    assert [broker.get_instance(i).result for i in ids] == [10, 20, 30]
    assert (wf.CALLS["first"], wf.CALLS["second"]) == (3, 3)


def test_another_worker_resumes_an_instance_after_the_first_one_stops(broker):
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    first = Worker(LocalBrokerClient(broker), [wf.SEQUENCE])
    assert first.work(max_steps=1) == 1
    first.close()
    second = Worker(LocalBrokerClient(broker), [wf.SEQUENCE])
    try:
        assert second.work() == 1
    finally:
        second.close()

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 20)
    assert info.step("first").worker_id == first.worker_id
    assert info.step("second").worker_id == second.worker_id
    assert (wf.CALLS["first"], wf.CALLS["second"]) == (1, 1)
    workers = {w.worker_id: w for w in broker.list_workers()}
    assert workers[first.worker_id].alive is False


def test_an_and_join_runs_once(broker, make_engine):
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})

    assert make_engine(broker, wf.DIAMOND).work() == 4

    assert broker.get_instance(instance_id).result == [2, 3]
    assert wf.CALLS.snapshot() == {"start": 1, "left": 1, "right": 1, "join": 1}


def test_an_or_join_after_both_members_succeeded_runs_once(broker, make_engine):
    instance_id = wf.OR_JOIN.dispatch(broker, {"x": 1})

    assert make_engine(broker, wf.OR_JOIN).work() == 4

    info = broker.get_instance(instance_id)
    assert info.step("fast").state is info.step("slow").state is Status.SUCCEEDED
    assert (info.status, info.result) == (Status.SUCCEEDED, "got fast:1")
    assert wf.CALLS.snapshot() == {"origin": 1, "fast": 1, "slow": 1, "first_of": 1}


def test_a_false_condition_skips_the_step_and_its_dependents(broker, make_engine):
    instance_id = wf.CONDITIONAL.dispatch(broker, {"x": 2})

    make_engine(broker, wf.CONDITIONAL).work()

    info = broker.get_instance(instance_id)
    assert states(info) == {
        "measure": Status.SUCCEEDED,
        "big": Status.SKIPPED,
        "after_big": Status.SKIPPED,
        "combine": Status.SUCCEEDED,
    }
    # an output that was SKIPPED is None; a Depends on a SKIPPED step receives None
    assert (info.status, info.result) == (Status.SUCCEEDED, [None, [None, 2]])
    assert (wf.CALLS["big"], wf.CALLS["after_big"], wf.CALLS["combine"]) == (0, 0, 1)


def test_a_true_condition_runs_the_step(broker, make_engine):
    instance_id = wf.CONDITIONAL.dispatch(broker, {"x": 5})

    assert make_engine(broker, wf.CONDITIONAL).work() == 4

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [501, [500, 5]])


def test_a_failing_step_cancels_downstream_but_the_independent_branch_completes(broker, make_engine):
    instance_id = wf.FAIL_FAST.dispatch(broker, {"x": 1})

    make_engine(broker, wf.FAIL_FAST).work()

    info = broker.get_instance(instance_id)
    assert states(info) == wf.FAIL_FAST_STATES
    assert info.step("independent").result == 2
    assert "ValueError: boom on 1" in info.step("boom").error
    assert info.status is Status.FAILED
    assert "boom" in info.error
    assert (wf.CALLS["after_boom"], wf.CALLS["after_after"]) == (0, 0)


def test_a_retried_instance_runs_its_failed_step_again_and_succeeds(broker, make_engine):
    instance_id = wf.SWITCHED.dispatch(broker, {"x": 4})
    engine = make_engine(broker, wf.SWITCHED)
    engine.work()
    assert broker.get_instance(instance_id).status is Status.FAILED

    wf.SWITCH.failing = False
    broker.retry_instance(instance_id)
    engine.work()

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 9)
    assert wf.CALLS.snapshot() == {"prepare": 1, "switched": 2, "finish": 1}


def test_the_engine_heartbeats_keep_a_long_step_leased(make_broker, make_engine):
    # A lease of 1 s: a worker is listed dead after 2 s without a beat, which a loaded machine's
    # stalls stay under (with 0.3 s it was 0.6 s, and a stall of 1 s under load reached it).
    broker = make_broker(lease_seconds=1.0)
    instance_id = wf.SLEEPY.dispatch(broker, {"seconds": 2.2})
    engine = make_engine(broker, wf.SLEEPY)
    ran: list[int] = []
    worker = threading.Thread(target=lambda: ran.append(engine.work()))
    worker.start()
    deadline = time.monotonic() + 5
    while broker.get_instance(instance_id).step("sleepy").state is not Status.RUNNING:
        assert time.monotonic() < deadline, "the engine never claimed the step"
        time.sleep(0.01)
    rival = register(broker, wf.SLEEPY)  # now: registered earlier, it could be dead by the first beat

    stolen: list[StepAssignment] = []
    while worker.is_alive():  # a rival keeps asking while the step runs for over two leases
        broker.keep_alive(rival)  # (a worker that stops beating is listed dead)
        assignment = broker.get_step(rival)
        if assignment is not None:
            stolen.append(assignment)
        time.sleep(0.05)
    worker.join()

    assert stolen == []
    assert ran == [1]
    info = broker.get_instance(instance_id)
    assert (info.status, info.result, info.step("sleepy").attempt) == (Status.SUCCEEDED, "rested", 1)
    assert wf.CALLS["sleepy"] == 1


def test_async_steps_run_through_the_engine(broker, make_engine):
    instance_id = wf.ASYNC.dispatch(broker, {"x": 4})

    assert make_engine(broker, wf.ASYNC).work() == 1

    assert broker.get_instance(instance_id).result == 12


def test_function_steps_run_through_the_engine(broker, make_engine):
    from_functions = wf.FUNCTIONS.dispatch(broker, {"x": 1})
    named = wf.FUNCTION_STEPS.dispatch(broker, {"x": 2})

    assert make_engine(broker, wf.FUNCTIONS, wf.FUNCTION_STEPS).work() == 5

    assert broker.get_instance(from_functions).result == "sink 6"
    assert broker.get_instance(named).result == [14, "label 14"]
    assert wf.CALLS.snapshot() == {"fn_source": 1, "fn_sink": 1, "make_number": 1, "async_label": 1}


def test_results_round_trip_through_a_worker(broker, make_engine):
    value = {"zeta": "'; DROP TABLE x; --", "alpha": ["héllo ✓ 🚀", 'quote " and \\'], "n": None}
    instance_id = wf.ECHO.dispatch(broker, {"value": value})

    make_engine(broker, wf.ECHO).work()

    info = broker.get_instance(instance_id)
    assert info.result == value
    assert list(info.result) == ["zeta", "alpha", "n"]


def test_the_seed_custom_worker_loop_runs_a_workflow(broker):
    workflow = wf.CONDITIONAL
    step_lookup = workflow.steps
    instance_id = workflow.dispatch(broker, {"x": 2})

    # the loop of "Writing a custom worker" in the worker guide, as written
    client = LocalBrokerClient(broker)
    worker_id = client.register_worker([workflow.to_schema()])
    while True:
        assignment = client.get_step(worker_id)
        if assignment is None:
            break
        step = step_lookup[assignment.step_name]
        shared = {step_lookup[name]: val for name, val in assignment.payload.get("results", {}).items()}
        workflow.params.update(assignment.payload.get("workflow_inputs", {}))
        result = workflow._execute_step(step, shared)
        client.report_step(
            worker_id,
            StepReport(
                workflow_id=assignment.workflow_id,
                instance_id=assignment.instance_id,
                step_name=assignment.step_name,
                state=step.state,
                result=result,
            ),
        )

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [None, [None, 2]])
    assert info.step("big").state is Status.SKIPPED
