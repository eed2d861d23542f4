"""Identity and order (issue 11): dispatch options, idempotency keys, priorities.

Options are checked before anything is written. A key names at most one
instance of a workflow: the same key with equal inputs (after the JSON
round trip) returns that instance, other inputs are a KeyConflict. Claims
take the highest priority first, then queue order; every step of an
instance has its priority.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fuseline import Status
from fuseline.broker import Dispatch
from fuseline.errors import InvalidDispatch, KeyConflict

from . import workflows as wf
from .support import claim, register, succeed, trail

AWARE = datetime.now(timezone.utc) + timedelta(minutes=5)

BAD_OPTIONS = {
    "negative-delay": {"delay": -1.0},
    "naive-at": {"at": datetime.now() + timedelta(minutes=5)},  # naive on purpose
    "delay-and-at": {"delay": 5.0, "at": AWARE},
    "key-over-200-characters": {"key": "k" * 201},
    "fractional-priority": {"priority": 1.5},
    "text-priority": {"priority": "1"},
}


@pytest.mark.parametrize("options", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_a_bad_dispatch_option_is_refused_and_nothing_is_written(broker, options):
    with pytest.raises(InvalidDispatch):
        wf.SINGLE.dispatch(broker, {"x": 1}, **options)

    assert broker.list_instances() == []


@pytest.mark.parametrize("options", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_one_bad_item_of_dispatch_many_refuses_the_whole_call(broker, options):
    with pytest.raises(InvalidDispatch):
        broker.dispatch_many(wf.SINGLE.to_schema(), [{"x": 1}, Dispatch({"x": 2}, **options)])

    assert broker.list_instances() == []


def test_dispatching_a_key_again_with_equal_inputs_returns_the_same_instance_and_writes_nothing(broker):
    first = wf.SINGLE.dispatch(broker, {"x": 1, "tags": ("a", "b"), "meta": {"p": 1, "q": 2}}, key="order-7")
    history = trail(broker, first)

    again = wf.SINGLE.dispatch(broker, {"meta": {"q": 2, "p": 1}, "tags": ["a", "b"], "x": 1}, key="order-7")

    assert again == first
    assert [i.instance_id for i in broker.list_instances()] == [first]
    assert trail(broker, first) == history
    assert broker.get_instance(first).key == "order-7"


def test_dispatching_a_key_again_with_other_inputs_raises_key_conflict_naming_the_instance(broker):
    first = wf.SINGLE.dispatch(broker, {"x": 1}, key="order-7")

    with pytest.raises(KeyConflict) as raised:
        wf.SINGLE.dispatch(broker, {"x": 2}, key="order-7")

    error = raised.value
    assert (error.workflow_id, error.key, error.existing_id) == ("contract-single", "order-7", first)
    assert first in str(error)
    assert [i.instance_id for i in broker.list_instances()] == [first]


def test_a_key_belongs_to_one_workflow(broker):
    single = wf.SINGLE.dispatch(broker, {"x": 1}, key="shared")
    sequence = wf.SEQUENCE.dispatch(broker, {"x": 1}, key="shared")

    assert single != sequence
    assert len(broker.list_instances()) == 2


def test_a_key_still_names_its_instance_after_the_instance_finished(broker):
    worker = register(broker, wf.SINGLE)
    first = wf.SINGLE.dispatch(broker, {"x": 1}, key="once")
    succeed(broker, worker, claim(broker, worker), 2)

    assert wf.SINGLE.dispatch(broker, {"x": 1}, key="once") == first
    assert broker.get_step(worker) is None


def test_items_of_one_dispatch_many_with_the_same_key_and_inputs_are_one_instance(broker):
    ids = broker.dispatch_many(
        wf.SINGLE.to_schema(), [Dispatch({"x": 1}, key="k"), {"x": 5}, Dispatch({"x": 1}, key="k")]
    )

    assert ids[0] == ids[2] != ids[1]
    assert len(broker.list_instances()) == 2


def test_items_of_one_dispatch_many_with_the_same_key_and_other_inputs_write_nothing(broker):
    with pytest.raises(KeyConflict):
        broker.dispatch_many(
            wf.SINGLE.to_schema(), [{"x": 5}, Dispatch({"x": 1}, key="k"), Dispatch({"x": 2}, key="k")]
        )

    assert broker.list_instances() == []


def test_an_instance_shows_its_priority_and_no_key_by_default(broker):
    plain = broker.get_instance(wf.SINGLE.dispatch(broker, {"x": 1}))
    urgent = broker.get_instance(wf.SINGLE.dispatch(broker, {"x": 1}, priority=9))

    assert (plain.key, plain.priority) == (None, 0)
    assert urgent.priority == 9


def test_claims_take_the_highest_priority_first(broker):
    worker = register(broker, wf.SINGLE)
    low = wf.SINGLE.dispatch(broker, {"x": 1}, priority=-5)
    default = wf.SINGLE.dispatch(broker, {"x": 1})
    high = wf.SINGLE.dispatch(broker, {"x": 1}, priority=5)

    assert [claim(broker, worker).instance_id for _ in range(3)] == [high, default, low]


def test_within_one_priority_claims_follow_queue_order(broker):
    worker = register(broker, wf.SINGLE)
    ids = [wf.SINGLE.dispatch(broker, {"x": n}, priority=3) for n in range(4)]

    assert [claim(broker, worker).instance_id for _ in range(4)] == ids


def test_priority_orders_claims_across_the_workflows_a_worker_serves(broker):
    worker = register(broker, wf.SINGLE, wf.SEQUENCE)
    wf.SINGLE.dispatch(broker, {"x": 1})
    urgent = wf.SEQUENCE.dispatch(broker, {"x": 1}, priority=1)

    assert claim(broker, worker).instance_id == urgent


def test_successors_inherit_the_priority_of_their_instance(broker):
    worker = register(broker, wf.SINGLE, wf.SEQUENCE)
    urgent = wf.SEQUENCE.dispatch(broker, {"x": 1}, priority=5)
    wf.SINGLE.dispatch(broker, {"x": 1})  # queued before urgent's second step
    succeed(broker, worker, claim(broker, worker), 2)

    second = claim(broker, worker)

    assert (second.instance_id, second.step_name) == (urgent, "second")
    assert broker.get_instance(urgent).step("second").state is Status.RUNNING
