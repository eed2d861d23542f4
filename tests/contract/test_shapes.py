"""Shapes (issue 12): Map fan-out, SubWorkflow children and WaitFor signals, on every broker.

Every step a worker runs goes through the real engine code (``run_assignment``);
the broker completes Map, SubWorkflow and WaitFor steps itself.
"""

from __future__ import annotations

import time

import pytest

from fuseline import Status
from fuseline.broker.base import Reason
from fuseline.errors import InvalidTransition, SignalConflict, UnknownInstance

from . import shapes
from .support import UNKNOWN_IDS, claim, register, states, succeed
from .workflows import CALLS


@pytest.fixture(autouse=True)
def _reset_shapes() -> None:
    shapes.reset()


# -- Map ----------------------------------------------------------------------------------
def test_a_map_runs_one_item_per_element_and_hands_the_results_on_in_item_order(broker):
    worker = register(broker, shapes.MAPPED)
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 5})

    shapes.run_all(broker, worker, [shapes.MAPPED])

    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED, info.error
    assert info.result == {"values": [0, 1, 4, 9, 16], "sum": 30}
    assert [s.name for s in info.steps if s.name.startswith("squares[")] == [
        f"squares[{i}]" for i in range(5)
    ]
    assert info.step("squares").result == [0, 1, 4, 9, 16]
    assert info.steps_done == len(info.steps) == 3 + 5
    assert all(CALLS[("square", i)] == 1 for i in range(5))


def test_the_items_of_a_map_are_claimable_by_different_workers(broker):
    first, second = register(broker, shapes.MAPPED), register(broker, shapes.MAPPED)
    shapes.MAPPED.dispatch(broker, {"n": 2})
    shapes.run_all(broker, first, [shapes.MAPPED], limit=1)  # rows: fans out

    a, b = claim(broker, first), claim(broker, second)

    assert {a.step_name, b.step_name} == {"squares[0]", "squares[1]"}
    assert {a.payload["item"], b.payload["item"]} == {0, 1}


def test_a_map_over_an_empty_list_gives_an_empty_list(broker):
    worker = register(broker, shapes.MAPPED)
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 0})

    shapes.run_all(broker, worker, [shapes.MAPPED])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, {"values": [], "sum": 0})


def test_one_failed_item_fails_the_map_with_its_index_and_cancels_the_items_not_started(broker):
    worker = register(broker, shapes.MAPPED)
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 20})
    shapes.run_all(broker, worker, [shapes.MAPPED], limit=1 + 14)  # rows, then items 0..13

    info = broker.get_instance(instance_id)
    assert info.status is Status.FAILED
    assert (
        "item 13 failed" in info.step("squares").error and "thirteen is unlucky" in info.step("squares").error
    )
    assert {info.step(f"squares[{i}]").state for i in range(14, 20)} == {Status.CANCELLED}
    assert info.step("total").state is Status.CANCELLED
    assert broker.get_step(worker) is None  # nothing of it is left to claim


@pytest.mark.parametrize(
    ("rows", "problem"), [("not a list", "must be a list, not str"), (list(range(11)), "at most 10 items")]
)
def test_a_result_a_map_cannot_fan_out_over_fails_the_upstream_step(broker, rows, problem):
    from fuseline import FunctionStep, Map, Workflow

    source = FunctionStep(lambda: rows, name="source")
    flow = Workflow(
        outputs=[Map(FunctionStep(shapes._square), over=source, max_items=10, name="each")],
        workflow_id=f"contract-bad-map-{type(rows).__name__}",
    )
    worker = register(broker, flow)
    instance_id = flow.dispatch(broker, {})

    shapes.run_all(broker, worker, [flow])

    info = broker.get_instance(instance_id)
    assert info.status is Status.FAILED
    assert info.step("source").state is Status.FAILED and problem in info.step("source").error
    assert not [s for s in info.steps if s.name.startswith("each[")]


def test_maps_may_feed_maps(broker):
    worker = register(broker, shapes.MAP_OF_MAP)
    instance_id = shapes.MAP_OF_MAP.dispatch(broker, {"n": 3})

    shapes.run_all(broker, worker, [shapes.MAP_OF_MAP])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [1, 3, 5])


def test_items_keep_the_retry_policy_of_the_mapped_step(broker):
    worker = register(broker, shapes.RETRIED_ITEMS)
    instance_id = shapes.RETRIED_ITEMS.dispatch(broker, {"n": 3})

    deadline = time.monotonic() + 10
    while broker.get_instance(instance_id).status is Status.RUNNING and time.monotonic() < deadline:
        shapes.run_all(broker, worker, [shapes.RETRIED_ITEMS])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [0, 1, 2])
    assert [info.step(f"flaky[{i}]").retries for i in range(3)] == [1, 1, 1]


def test_items_count_under_the_concurrency_limit_of_the_mapped_step(broker):
    first, second = register(broker, shapes.LIMITED_ITEMS), register(broker, shapes.LIMITED_ITEMS)
    instance_id = shapes.LIMITED_ITEMS.dispatch(broker, {"n": 3})
    shapes.run_all(broker, first, [shapes.LIMITED_ITEMS], limit=1)  # rows: fans out

    held = claim(broker, first)
    assert broker.get_step(second) is None  # the limit's one slot is taken by an item
    explained = {e.step: e.reason for e in broker.explain_instance(instance_id)}
    assert explained["limited"] == Reason.WAITING_FOR_ITEMS
    succeed(broker, first, held, held.payload["item"])
    shapes.run_all(broker, second, [shapes.LIMITED_ITEMS])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, [0, 1, 2])


def test_retrying_an_instance_whose_map_failed_fans_out_afresh(broker):
    worker = register(broker, shapes.MAPPED)
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 14})
    shapes.run_all(broker, worker, [shapes.MAPPED])
    assert broker.get_instance(instance_id).status is Status.FAILED

    broker.retry_instance(instance_id)
    shapes.run_all(broker, worker, [shapes.MAPPED])

    info = broker.get_instance(instance_id)
    assert info.status is Status.FAILED  # item 13 fails again, and only it ran twice among the failing
    assert CALLS[("square", 13)] == 2
    assert "item 13 failed" in info.step("squares").error


# -- WaitFor and signals ----------------------------------------------------------------------
def test_a_signal_completes_the_step_waiting_for_it_with_its_data(broker):
    worker = register(broker, shapes.APPROVAL)
    instance_id = shapes.APPROVAL.dispatch(broker, {"x": 7})
    shapes.run_all(broker, worker, [shapes.APPROVAL])
    assert states(broker.get_instance(instance_id))["approve"] is Status.QUEUED
    explained = {e.step: e for e in broker.explain_instance(instance_id)}
    assert (
        explained["approve"].reason == Reason.WAITING_FOR_SIGNAL
        and "'approved'" in explained["approve"].detail
    )

    broker.signal(instance_id, "approved", {"by": "ana"})
    shapes.run_all(broker, worker, [shapes.APPROVAL])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, {"decision": {"by": "ana"}, "x": 7})


def test_a_signal_sent_before_the_step_is_reached_is_kept(broker):
    worker = register(broker, shapes.APPROVAL)
    instance_id = shapes.APPROVAL.dispatch(broker, {"x": 1})

    broker.signal(instance_id, "approved", "yes")
    shapes.run_all(broker, worker, [shapes.APPROVAL])

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, {"decision": "yes", "x": 1})


def test_a_second_signal_of_the_same_name_is_refused_and_changes_nothing(broker):
    worker = register(broker, shapes.APPROVAL)
    instance_id = shapes.APPROVAL.dispatch(broker, {"x": 1})
    broker.signal(instance_id, "approved", "first")

    with pytest.raises(SignalConflict, match="already received signal 'approved'"):
        broker.signal(instance_id, "approved", "second")
    shapes.run_all(broker, worker, [shapes.APPROVAL])

    assert broker.get_instance(instance_id).result == {"decision": "first", "x": 1}


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS)
def test_a_signal_to_an_unknown_instance_is_refused(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.signal(instance_id, "approved", None)


def test_a_signal_to_a_finished_instance_is_refused(broker):
    worker = register(broker, shapes.APPROVAL)
    instance_id = shapes.APPROVAL.dispatch(broker, {"x": 1})
    broker.signal(instance_id, "approved", 1)
    shapes.run_all(broker, worker, [shapes.APPROVAL])

    with pytest.raises(InvalidTransition, match="SUCCEEDED; signals reach only RUNNING instances"):
        broker.signal(instance_id, "other", 2)


def test_a_wait_past_its_timeout_fails_the_step_naming_the_signal(broker):
    worker = register(broker, shapes.TIMED_APPROVAL)
    instance_id = shapes.TIMED_APPROVAL.dispatch(broker, {})

    deadline = time.monotonic() + 10
    while broker.get_instance(instance_id).status is Status.RUNNING and time.monotonic() < deadline:
        assert broker.get_step(worker) is None  # claims drive the timers; nothing is claimable
        time.sleep(0.05)

    info = broker.get_instance(instance_id)
    assert info.status is Status.FAILED
    assert info.step("approve").error == "no signal 'approved' within 0.3 s"


# -- SubWorkflow ---------------------------------------------------------------------------
def test_a_subworkflow_step_ends_with_its_childs_result_and_both_are_linked(broker):
    worker = register(broker, shapes.PARENT, shapes.CHILD)
    parent_id = shapes.PARENT.dispatch(broker, {"n": 4, "mode": "fast"})

    shapes.run_all(broker, worker, [shapes.PARENT])

    parent = broker.get_instance(parent_id)
    assert (parent.status, parent.result) == (Status.SUCCEEDED, "fast:5")
    (child_id,) = parent.children
    assert parent.step("call").child_instance_id == child_id
    child = broker.get_instance(child_id)
    assert (child.status, child.inputs) == (Status.SUCCEEDED, {"x": 5, "mode": "fast"})
    assert (child.parent_instance_id, child.parent_step) == (parent_id, "call")


def test_a_child_that_fails_fails_the_subworkflow_step_naming_the_child(broker):
    worker = register(broker, shapes.PARENT, shapes.CHILD)
    parent_id = shapes.PARENT.dispatch(broker, {"n": -5, "mode": "fast"})

    shapes.run_all(broker, worker, [shapes.PARENT])

    parent = broker.get_instance(parent_id)
    (child_id,) = parent.children
    assert parent.status is Status.FAILED
    assert parent.step("call").error.startswith(f"child instance {child_id} FAILED")


def test_retrying_a_parent_whose_child_failed_starts_a_new_child(broker):
    worker = register(broker, shapes.PARENT, shapes.CHILD)
    parent_id = shapes.PARENT.dispatch(broker, {"n": -5, "mode": "fast"})
    shapes.run_all(broker, worker, [shapes.PARENT])
    (first,) = broker.get_instance(parent_id).children

    broker.retry_instance(parent_id)

    (second,) = broker.get_instance(parent_id).children  # the step names its newest child
    assert second != first
    assert broker.get_instance(second).parent_instance_id == parent_id
    assert broker.get_instance(first).status is Status.FAILED
    shapes.run_all(broker, worker, [shapes.PARENT])
    assert broker.get_instance(parent_id).step("call").error.startswith(f"child instance {second} FAILED")


def test_a_child_not_served_by_any_worker_is_accepted_and_waits(broker):
    worker = register(broker, shapes.PARENT)  # the parent's definition only
    parent_id = shapes.PARENT.dispatch(broker, {"n": 1, "mode": "m"})
    assert shapes.run_all(broker, worker, [shapes.PARENT]) == 1  # start; the child's step is not its

    (child_id,) = broker.get_instance(parent_id).children
    assert broker.get_instance(child_id).step("work").state is Status.QUEUED
    explained = {e.step: e for e in broker.explain_instance(parent_id)}
    assert explained["call"].reason == Reason.WAITING_FOR_CHILD and child_id in explained["call"].detail


def test_cancelling_the_parent_cancels_its_child(broker):
    worker = register(broker, shapes.PARENT, shapes.CHILD)
    parent_id = shapes.PARENT.dispatch(broker, {"n": 1, "mode": "m"})
    shapes.run_all(broker, worker, [shapes.PARENT], limit=1)
    (child_id,) = broker.get_instance(parent_id).children

    broker.cancel_instance(parent_id)

    assert broker.get_instance(child_id).status is Status.CANCELLED
    assert broker.get_step(worker) is None


@pytest.mark.parametrize("prefetch", [1, 4])
def test_a_worker_engine_drains_a_map_alone_or_in_batches(broker, make_engine, prefetch):
    instance_id = shapes.MAPPED.dispatch(broker, {"n": 13})  # item 13 would fail

    make_engine(broker, shapes.MAPPED, prefetch=prefetch).work()

    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED, info.error
    assert info.result == {"values": [i * i for i in range(13)], "sum": sum(i * i for i in range(13))}
    succeeded = [
        e for e in broker.instance_events(instance_id) if e.kind == "succeeded" and e.step_name == "squares"
    ]
    assert len(succeeded) == 1
