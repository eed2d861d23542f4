"""Repairs (issue 13): retry from a step, skip a step, set a step's output, on every broker.

Each is planned from the stored states (``plan_repair`` is the dry run and
changes nothing), recorded as a ``repaired`` event naming the action, the
operator and the steps touched, and fenced: a worker still holding an old
attempt is refused when it reports.
"""

from __future__ import annotations

import pytest

from fuseline import Status
from fuseline.broker.repairs import RepairAction
from fuseline.errors import InvalidTransition, LeaseLost, ResultNotSerializable, ResultTooLarge, UnknownStep

from . import workflows as wf
from .shapes import run_all
from .support import claim, register, report, states, trail


def _ran(broker, flow, inputs):
    worker = register(broker, flow)
    instance_id = flow.dispatch(broker, inputs)
    run_all(broker, worker, [flow])
    return worker, instance_id


def _repaired(broker, instance_id):
    return [e.detail for e in broker.instance_events(instance_id) if e.kind == "repaired"]


# -- retry --from --------------------------------------------------------------------------
def test_retry_from_a_step_reruns_it_and_what_follows_on_a_succeeded_instance(broker):
    wf.SWITCH.failing = False
    worker, instance_id = _ran(broker, wf.SWITCHED, {"x": 3})
    assert broker.get_instance(instance_id).result == 7

    info = broker.retry_instance(instance_id, from_step="switched", operator="ana")
    assert info.status is Status.RUNNING
    assert states(info) == {"prepare": Status.SUCCEEDED, "switched": Status.QUEUED, "finish": Status.PENDING}
    run_all(broker, worker, [wf.SWITCHED])

    done = broker.get_instance(instance_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, 7)
    assert (wf.CALLS["prepare"], wf.CALLS["switched"], wf.CALLS["finish"]) == (1, 2, 2)
    assert _repaired(broker, instance_id) == ["retry --from 'switched' by ana: switched, finish"]


def test_a_dry_run_names_every_change_and_changes_nothing(broker):
    _, instance_id = _ran(broker, wf.FAIL_FAST, {"x": 1})
    before, history = broker.get_instance(instance_id), trail(broker, instance_id)

    plan = broker.plan_repair(instance_id, RepairAction.RETRY_FROM, "boom", operator="ana")

    assert plan.status_before is Status.FAILED and plan.status_after is Status.RUNNING
    assert [(c.step, c.before, c.after) for c in plan.changes] == [
        ("boom", Status.FAILED, Status.QUEUED),
        ("after_boom", Status.CANCELLED, Status.PENDING),
        ("after_after", Status.CANCELLED, Status.PENDING),
    ]
    assert broker.get_instance(instance_id) == before
    assert trail(broker, instance_id) == history


def test_retry_from_refuses_a_running_instance_and_an_unknown_step(broker):
    register(broker, wf.SWITCHED)
    running = wf.SWITCHED.dispatch(broker, {"x": 1})
    with pytest.raises(InvalidTransition, match="RUNNING; retry --from applies to finished instances"):
        broker.retry_instance(running, from_step="switched")

    _, finished = _ran(broker, wf.SWITCHED, {"x": 2})
    with pytest.raises(UnknownStep):
        broker.retry_instance(finished, from_step="no_such_step")
    assert broker.get_instance(finished).status is Status.FAILED


def test_a_late_report_of_the_attempt_before_a_retry_from_is_refused(broker):
    worker = register(broker, wf.SWITCHED)
    instance_id = wf.SWITCHED.dispatch(broker, {"x": 1})
    old = claim(broker, worker)  # prepare, attempt 1
    broker.cancel_instance(instance_id)
    broker.retry_instance(instance_id, from_step="prepare")

    with pytest.raises(LeaseLost):
        broker.report_step(worker, report(old, Status.SUCCEEDED, 99))
    new = claim(broker, worker)
    assert (new.step_name, new.attempt) == ("prepare", old.attempt + 1)


# -- skip ---------------------------------------------------------------------------------------
def test_skipping_a_failed_step_reopens_the_instance_and_the_skip_propagates(broker):
    worker, instance_id = _ran(broker, wf.FAIL_FAST, {"x": 5})
    assert states(broker.get_instance(instance_id)) == wf.FAIL_FAST_STATES

    info = broker.skip_step(instance_id, "boom", operator="ana")
    run_all(broker, worker, [wf.FAIL_FAST])

    done = broker.get_instance(instance_id)
    assert done.status is Status.SUCCEEDED and done.result == [None, 6]
    assert states(done)["after_boom"] is Status.SKIPPED and states(done)["after_after"] is Status.SKIPPED
    assert states(info)["boom"] is Status.SKIPPED
    assert _repaired(broker, instance_id) == ["skip 'boom' by ana: boom, after_boom, after_after"]
    assert wf.CALLS["after_boom"] == 0


def test_skipping_a_running_step_fences_its_worker(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    held = claim(broker, worker)

    broker.skip_step(instance_id, "first")
    with pytest.raises(LeaseLost):
        broker.report_step(worker, report(held, Status.SUCCEEDED, 2))

    done = broker.get_instance(instance_id)  # the skip propagated to second, the only successor
    assert (done.status, states(done)) == (
        Status.SUCCEEDED,
        {"first": Status.SKIPPED, "second": Status.SKIPPED},
    )
    assert broker.get_step(worker) is None


def test_a_step_already_done_or_a_succeeded_instance_is_not_skipped(broker):
    _, failed = _ran(broker, wf.FAIL_FAST, {"x": 1})
    with pytest.raises(InvalidTransition, match=r"'root' of instance .* is SUCCEEDED"):
        broker.skip_step(failed, "root")
    wf.SWITCH.failing = False
    _, succeeded = _ran(broker, wf.SWITCHED, {"x": 1})
    with pytest.raises(InvalidTransition, match="SUCCEEDED; use retry --from"):
        broker.skip_step(succeeded, "finish")
    assert _repaired(broker, failed) == [] and _repaired(broker, succeeded) == []


# -- set-output ----------------------------------------------------------------------------------
def test_setting_the_output_of_a_failed_step_feeds_its_successors(broker):
    worker, instance_id = _ran(broker, wf.FAIL_FAST, {"x": 5})

    broker.set_step_output(instance_id, "boom", 40, operator="ana")
    run_all(broker, worker, [wf.FAIL_FAST])

    done = broker.get_instance(instance_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, [40, 6])
    assert done.step("boom").result == 40
    assert _repaired(broker, instance_id) == ["set-output 'boom' by ana: boom, after_boom, after_after"]


def test_setting_the_output_of_a_running_step_refuses_its_workers_late_report(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    held = claim(broker, worker)

    broker.set_step_output(instance_id, "first", 5)
    with pytest.raises(LeaseLost):
        broker.report_step(worker, report(held, Status.SUCCEEDED, 2))

    nxt = claim(broker, worker)
    assert (nxt.step_name, nxt.payload["results"]) == ("second", {"first": 5})
    assert broker.get_instance(instance_id).step("first").result == 5


def test_an_output_that_is_not_json_or_too_large_is_refused_and_changes_nothing(make_broker):
    broker = make_broker(max_result_bytes=64)
    _, instance_id = _ran(broker, wf.FAIL_FAST, {"x": 5})
    before = broker.get_instance(instance_id)

    with pytest.raises(ResultNotSerializable):
        broker.set_step_output(instance_id, "boom", object())
    with pytest.raises(ResultTooLarge):
        broker.set_step_output(instance_id, "boom", "x" * 100)
    assert broker.get_instance(instance_id) == before


# -- Map items and maps ------------------------------------------------------------------------------
def test_an_item_of_a_running_map_can_be_given_its_output(broker):
    from . import shapes

    worker = register(broker, shapes.MAPPED)
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 3})
    run_all(broker, worker, [shapes.MAPPED], limit=1)  # rows: fans out

    broker.set_step_output(instance_id, "squares[1]", 100)
    run_all(broker, worker, [shapes.MAPPED])

    done = broker.get_instance(instance_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, {"values": [0, 100, 4], "sum": 104})


def test_retry_from_a_map_fans_out_afresh(broker):
    from . import shapes

    worker, instance_id = _ran(broker, shapes.MAPPED, {"n": 3})
    broker.retry_instance(instance_id, from_step="squares")
    run_all(broker, worker, [shapes.MAPPED])

    done = broker.get_instance(instance_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, {"values": [0, 1, 4], "sum": 5})
    assert [s.name for s in done.steps if s.name.startswith("squares[")] == [
        "squares[0]",
        "squares[1]",
        "squares[2]",
    ]
    assert wf.CALLS[("square", 1)] == 2
    # The first items' successes stay in the history, though their rows went with the fan-out.
    lines = [(e.kind, e.step_name) for e in broker.instance_events(instance_id)]
    assert [lines.count(("succeeded", f"squares[{i}]")) for i in range(3)] == [2, 2, 2]
    assert lines.count(("succeeded", "squares")) == 2
