"""Dispatching instances, registering workers, claiming steps."""

from __future__ import annotations

import math

import pytest

from fuseline import Status
from fuseline.errors import InvalidInputs, SchemaConflict, UnknownInstance, UnknownWorker

from . import workflows as wf
from .support import UNKNOWN_IDS, claim, register, states, succeed


def test_dispatch_queues_the_root_steps_and_leaves_the_others_pending(broker):
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})

    info = broker.get_instance(instance_id)
    assert info.status is Status.RUNNING
    assert info.workflow_id == "contract-diamond"
    assert info.version == "1"
    assert info.inputs == {"x": 1}
    assert info.result is None
    assert info.finished_at is None
    assert states(info) == {
        "start": Status.QUEUED,
        "left": Status.PENDING,
        "right": Status.PENDING,
        "join": Status.PENDING,
    }
    assert all(step.attempt == 0 for step in info.steps)


def test_claim_moves_a_queued_step_to_running_under_a_lease(make_broker):
    broker = make_broker(lease_seconds=30.0)
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 4})

    assignment = claim(broker, worker)

    assert assignment.workflow_id == "contract-single"
    assert assignment.version == "1"
    assert assignment.instance_id == instance_id
    assert assignment.step_name == "double"
    assert assignment.attempt == 1
    assert assignment.payload == {"workflow_inputs": {"x": 4}, "results": {}}
    assert abs((assignment.expires_at - assignment.assigned_at).total_seconds() - 30.0) < 1.0
    step = broker.get_instance(instance_id).step("double")
    assert step.state is Status.RUNNING
    assert step.attempt == 1
    assert step.worker_id == worker
    assert step.started_at is not None


def test_a_claimed_step_is_not_handed_to_another_worker(broker):
    first, second = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1})

    claim(broker, first)

    assert broker.get_step(second) is None
    assert broker.get_step(first) is None


def test_get_step_returns_none_when_nothing_is_queued(broker):
    worker = register(broker, wf.SINGLE)

    assert broker.get_step(worker) is None


@pytest.mark.parametrize("worker_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_get_step_with_an_unregistered_worker_id_raises_unknown_worker(broker, worker_id):
    wf.SINGLE.dispatch(broker, {"x": 1})

    with pytest.raises(UnknownWorker):
        broker.get_step(worker_id)
    assert states(broker.list_instances()[0]) == {"double": Status.QUEUED}


def test_a_worker_only_gets_steps_of_the_workflows_it_registered(broker):
    sequence_worker = register(broker, wf.SEQUENCE)
    single_worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    assert broker.get_step(sequence_worker) is None
    assert claim(broker, single_worker).instance_id == instance_id


def test_a_worker_only_gets_steps_of_the_version_it_registered(broker):
    worker_v1 = register(broker, wf.CONFLICT_ORIGINAL)
    worker_v2 = register(broker, wf.CONFLICT_NEXT_VERSION)
    instance_id = wf.CONFLICT_NEXT_VERSION.dispatch(broker, {})

    assert broker.get_step(worker_v1) is None
    assignment = claim(broker, worker_v2)
    assert (assignment.instance_id, assignment.version) == (instance_id, "2")


def test_steps_are_claimed_oldest_instance_first(broker):
    worker = register(broker, wf.SINGLE)
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(3)]

    claimed = [claim(broker, worker).instance_id for _ in ids]

    assert claimed == ids
    assert broker.get_step(worker) is None


def test_payload_carries_workflow_inputs_and_results_of_exactly_the_consumed_predecessors(broker):
    worker = register(broker, wf.PAYLOAD)
    wf.PAYLOAD.dispatch(broker, {"x": 3, "y": "why"})
    payloads = {}

    # a -> b (consumed), a >> c (ordering only), b -> d (consumed), c >> d (ordering only)
    for _ in range(4):
        assignment = claim(broker, worker)
        payloads[assignment.step_name] = assignment.payload
        value = {"a": 3, "b": 4, "c": "why", "d": 8}[assignment.step_name]
        succeed(broker, worker, assignment, value)

    inputs = {"x": 3, "y": "why"}
    assert payloads == {
        "a": {"workflow_inputs": inputs, "results": {}},
        "b": {"workflow_inputs": inputs, "results": {"a": 3}},
        "c": {"workflow_inputs": inputs, "results": {}},
        "d": {"workflow_inputs": inputs, "results": {"b": 4}},
    }


def test_registering_the_same_schema_twice_is_fine(broker):
    first = register(broker, wf.SINGLE)
    second = register(broker, wf.SINGLE, wf.SEQUENCE)

    assert first != second
    assert {w.worker_id for w in broker.list_workers()} == {first, second}


def test_registering_a_changed_schema_under_the_same_version_raises_schema_conflict(broker):
    register(broker, wf.CONFLICT_ORIGINAL)

    with pytest.raises(SchemaConflict) as raised:
        register(broker, wf.SINGLE, wf.CONFLICT_CHANGED)

    assert "contract-conflict" in str(raised.value)
    assert len(broker.list_workers()) == 1


def test_dispatching_a_changed_schema_under_the_same_version_raises_schema_conflict(broker):
    wf.CONFLICT_ORIGINAL.dispatch(broker, {})

    with pytest.raises(SchemaConflict) as raised:
        wf.CONFLICT_CHANGED.dispatch(broker, {})

    assert "contract-conflict" in str(raised.value)
    assert len(broker.list_instances()) == 1


def test_a_changed_workflow_under_a_new_version_is_accepted(broker):
    register(broker, wf.CONFLICT_ORIGINAL)
    register(broker, wf.CONFLICT_NEXT_VERSION)

    instance_id = wf.CONFLICT_NEXT_VERSION.dispatch(broker, {})

    assert broker.get_instance(instance_id).version == "2"


@pytest.mark.parametrize(
    "inputs",
    [[1, 2], "x=1", 7, {1: "int key"}, {"s": {1, 2}}, {"n": math.nan}, {"o": object()}],
    ids=["list", "str", "int", "int-key", "set-value", "nan-value", "object-value"],
)
def test_inputs_that_are_not_a_json_object_raise_invalid_inputs(broker, inputs):
    with pytest.raises(InvalidInputs):
        broker.dispatch_workflow(wf.SINGLE.to_schema(), inputs)

    assert broker.list_instances() == []


def test_dispatch_without_inputs_stores_an_empty_object(broker):
    instance_id = broker.dispatch_workflow(wf.CONFLICT_ORIGINAL.to_schema())

    assert broker.get_instance(instance_id).inputs == {}


def test_dispatch_many_creates_one_instance_per_inputs_mapping(broker):
    ids = broker.dispatch_many(wf.SINGLE.to_schema(), [{"x": 1}, {"x": 2}, {"x": 3}])

    assert len(set(ids)) == 3
    assert [broker.get_instance(i).inputs for i in ids] == [{"x": 1}, {"x": 2}, {"x": 3}]
    assert all(broker.get_instance(i).status is Status.RUNNING for i in ids)


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_get_instance_of_an_unknown_id_raises_unknown_instance(broker, instance_id):
    wf.SINGLE.dispatch(broker, {"x": 1})

    with pytest.raises(UnknownInstance):
        broker.get_instance(instance_id)


def test_register_workflows_stores_definitions_and_refuses_a_changed_one(broker):
    broker.register_workflows([wf.CONFLICT_ORIGINAL.to_schema()])
    broker.register_workflows([wf.CONFLICT_ORIGINAL.to_schema(), wf.SINGLE.to_schema()])

    with pytest.raises(SchemaConflict) as raised:
        broker.register_workflows([wf.CONFLICT_CHANGED.to_schema()])
    assert "contract-conflict" in str(raised.value)
    with pytest.raises(SchemaConflict):
        wf.CONFLICT_CHANGED.dispatch(broker, {})
    assert broker.list_workers() == []
