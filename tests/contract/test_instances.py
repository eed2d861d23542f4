"""Instances as users see them: listing, history, workers, cancel and retry."""

from __future__ import annotations

from itertools import pairwise

import pytest

from fuseline import Status
from fuseline.errors import InvalidTransition, LeaseLost, UnknownInstance

from . import workflows as wf
from .support import UNKNOWN_IDS, claim, register, report, states, succeed, trail


def _finish_single(broker, worker, instance_id):
    assignment = claim(broker, worker)
    assert assignment.instance_id == instance_id
    succeed(broker, worker, assignment, 2 * assignment.payload["workflow_inputs"]["x"])


def test_list_instances_is_newest_first_with_limit_and_offset(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(5)]

    assert [i.instance_id for i in broker.list_instances()] == ids[::-1]
    assert [i.instance_id for i in broker.list_instances(limit=2)] == [ids[4], ids[3]]
    assert [i.instance_id for i in broker.list_instances(limit=2, offset=2)] == [ids[2], ids[1]]
    assert [i.instance_id for i in broker.list_instances(offset=4)] == [ids[0]]
    assert broker.list_instances(offset=5) == []


def test_instances_dispatched_together_are_listed_newest_first(broker):
    ids = broker.dispatch_many(wf.SINGLE.to_schema(), [{"x": n} for n in range(6)])

    assert [i.instance_id for i in broker.list_instances()] == ids[::-1]
    assert [i.inputs["x"] for i in broker.list_instances(limit=3, offset=1)] == [4, 3, 2]


def test_list_instances_filters_by_workflow(broker):
    singles = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(2)]
    sequence = wf.SEQUENCE.dispatch(broker, {"x": 1})
    singles.append(wf.SINGLE.dispatch(broker, {"x": 9}))

    found = broker.list_instances(workflow_id="contract-single")

    assert [i.instance_id for i in found] == singles[::-1]
    assert [i.instance_id for i in broker.list_instances(workflow_id="contract-sequence")] == [sequence]
    assert broker.list_instances(workflow_id="no-such-workflow") == []


def test_list_instances_filters_by_status(broker):
    worker = register(broker, wf.SINGLE)
    done = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(2)]
    for instance_id in done:
        _finish_single(broker, worker, instance_id)
    running = wf.SINGLE.dispatch(broker, {"x": 5})

    assert [i.instance_id for i in broker.list_instances(status=Status.SUCCEEDED)] == done[::-1]
    assert [i.instance_id for i in broker.list_instances(status="SUCCEEDED")] == done[::-1]
    assert [i.instance_id for i in broker.list_instances(status="RUNNING")] == [running]
    assert broker.list_instances(status=Status.FAILED) == []
    assert [
        i.instance_id
        for i in broker.list_instances(status="SUCCEEDED", workflow_id="contract-single", limit=1)
    ] == [done[1]]


def test_list_instances_returns_the_same_records_as_get_instance(broker):
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})

    (listed,) = broker.list_instances()

    assert listed == broker.get_instance(instance_id)


def test_instance_events_list_the_history_in_order(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 2)
    succeed(broker, worker, claim(broker, worker), 20)

    events = broker.instance_events(instance_id)

    assert [(e.kind, e.step_name) for e in events] == [
        ("dispatched", None),
        ("queued", "first"),
        ("claimed", "first"),
        ("succeeded", "first"),
        ("queued", "second"),
        ("claimed", "second"),
        ("succeeded", "second"),
        ("instance_succeeded", None),
    ]
    assert all(a.at <= b.at for a, b in pairwise(events))
    claimed = [e for e in events if e.kind == "claimed"]
    assert [(e.attempt, e.worker_id) for e in claimed] == [(1, worker), (1, worker)]


def test_instance_events_record_failures_with_their_error(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    broker.report_step(worker, report(claim(broker, worker), Status.FAILED, error="OSError: disk full"))

    events = broker.instance_events(instance_id)

    failed = [e for e in events if e.kind == "failed"]
    assert [(e.step_name, "OSError: disk full" in (e.detail or "")) for e in failed] == [("double", True)]
    assert events[-1].kind == "instance_failed"


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_instance_events_of_an_unknown_instance_raise_unknown_instance(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.instance_events(instance_id)


def test_has_running_instances_tells_whether_work_remains(broker):
    assert broker.has_running_instances() is False
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    assert broker.has_running_instances() is True
    assert broker.has_running_instances([("contract-single", "1")]) is True
    assert broker.has_running_instances([("contract-sequence", "1"), ("contract-single", "2")]) is False
    _finish_single(broker, worker, instance_id)
    assert broker.has_running_instances() is False
    assert broker.has_running_instances([("contract-single", "1")]) is False


def test_list_workers_shows_registered_workers_alive_newest_first(broker):
    first = broker.register_worker([wf.SINGLE.to_schema()], host="host-a", pid=101)
    second = broker.register_worker([wf.SEQUENCE.to_schema()], host="host-b", pid=202)

    workers = broker.list_workers()

    assert [(w.worker_id, w.host, w.pid, w.alive, w.stopped_at) for w in workers] == [
        (second, "host-b", 202, True, None),
        (first, "host-a", 101, True, None),
    ]
    assert any("contract-single" in name for name in workers[1].workflows)
    assert not any("contract-single" in name for name in workers[0].workflows)


def test_list_workers_shows_a_deregistered_worker_as_stopped(broker):
    leaving, staying = register(broker, wf.SINGLE), register(broker, wf.SINGLE)

    broker.deregister_worker(leaving)

    workers = {w.worker_id: w for w in broker.list_workers()}
    assert workers[leaving].alive is False
    assert workers[leaving].stopped_at is not None
    assert workers[staying].alive is True
    assert workers[staying].stopped_at is None


def test_list_workers_shows_the_steps_a_worker_holds(broker):
    busy, idle = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, busy)

    workers = {w.worker_id: w for w in broker.list_workers()}

    assert len(workers[busy].current_steps) == 1
    assert instance_id in workers[busy].current_steps[0]
    assert "double" in workers[busy].current_steps[0]
    assert workers[idle].current_steps == []


def test_cancel_instance_cancels_running_queued_and_pending_steps(broker):
    worker = register(broker, wf.DIAMOND)
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    running = claim(broker, worker)  # "left" RUNNING, "right" QUEUED, "join" PENDING
    assert states(broker.get_instance(instance_id))["right"] is Status.QUEUED

    info = broker.cancel_instance(instance_id)

    assert info.status is Status.CANCELLED
    assert info.finished_at is not None
    assert states(info) == {
        "start": Status.SUCCEEDED,
        "left": Status.CANCELLED,
        "right": Status.CANCELLED,
        "join": Status.CANCELLED,
    }
    assert broker.get_instance(instance_id) == info
    assert broker.get_step(worker) is None
    with pytest.raises(LeaseLost):
        succeed(broker, worker, running, 2)
    assert broker.get_instance(instance_id) == info
    assert broker.keep_alive(worker) == []
    kinds = [kind for kind, _ in trail(broker, instance_id)]
    assert kinds[-1] == "instance_cancelled"


def test_cancelling_a_finished_instance_raises_invalid_transition(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    _finish_single(broker, worker, instance_id)

    with pytest.raises(InvalidTransition):
        broker.cancel_instance(instance_id)

    assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_cancelling_a_cancelled_instance_raises_invalid_transition(broker):
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    broker.cancel_instance(instance_id)

    with pytest.raises(InvalidTransition):
        broker.cancel_instance(instance_id)


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_cancelling_an_unknown_instance_raises_unknown_instance(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.cancel_instance(instance_id)


def test_retry_instance_runs_failed_and_cancelled_steps_again(broker):
    worker = register(broker, wf.SWITCHED)
    instance_id = wf.SWITCHED.dispatch(broker, {"x": 4})
    succeed(broker, worker, claim(broker, worker), 4)
    failed = claim(broker, worker)
    broker.report_step(worker, report(failed, Status.FAILED, error="RuntimeError: off"))
    assert states(broker.get_instance(instance_id)) == {
        "prepare": Status.SUCCEEDED,
        "switched": Status.FAILED,
        "finish": Status.CANCELLED,
    }

    info = broker.retry_instance(instance_id)

    assert (info.status, info.error, info.finished_at) == (Status.RUNNING, None, None)
    assert states(info) == {
        "prepare": Status.SUCCEEDED,
        "switched": Status.QUEUED,
        "finish": Status.PENDING,
    }
    switched = claim(broker, worker)
    assert switched.step_name == "switched"
    assert switched.attempt > failed.attempt  # attempts only grow, so old reports stay fenced off
    assert switched.payload["results"] == {"prepare": 4}
    with pytest.raises(LeaseLost):
        succeed(broker, worker, failed, 8)
    succeed(broker, worker, switched, 8)
    succeed(broker, worker, claim(broker, worker), 9)
    info = broker.get_instance(instance_id)
    assert (info.status, info.result, info.error) == (Status.SUCCEEDED, 9, None)
    assert info.step("switched").error is None
    assert ("retried", None) in trail(broker, instance_id)


def test_retry_of_a_cancelled_instance_runs_it_to_the_end(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    broker.cancel_instance(instance_id)

    broker.retry_instance(instance_id)
    succeed(broker, worker, claim(broker, worker), 2)
    succeed(broker, worker, claim(broker, worker), 20)

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 20)


def test_retry_of_a_running_instance_raises_invalid_transition(broker):
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    with pytest.raises(InvalidTransition):
        broker.retry_instance(instance_id)

    assert states(broker.get_instance(instance_id)) == {"double": Status.QUEUED}


def test_retry_of_a_succeeded_instance_raises_invalid_transition(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    _finish_single(broker, worker, instance_id)

    with pytest.raises(InvalidTransition):
        broker.retry_instance(instance_id)

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 2)


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_retrying_an_unknown_instance_raises_unknown_instance(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.retry_instance(instance_id)


def test_an_instance_with_several_outputs_has_a_list_result(broker):
    worker = register(broker, wf.CONDITIONAL)
    instance_id = wf.CONDITIONAL.dispatch(broker, {"x": 5})
    results = {"measure": 5, "big": 500, "after_big": 501, "combine": [500, 5]}
    for _ in results:
        assignment = claim(broker, worker)
        succeed(broker, worker, assignment, results[assignment.step_name])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [501, [500, 5]])
