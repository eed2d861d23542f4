"""Reporting step outcomes: who may report, replays, and what a result may be."""

from __future__ import annotations

import json
import math
import uuid

import pytest

from fuseline import Status, StepReport
from fuseline.errors import (
    BrokerError,
    LeaseLost,
    ReportConflict,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
)

from . import workflows as wf
from .support import claim, register, report, states, succeed, trail


def test_an_accepted_report_finishes_the_step_and_the_instance(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 21})
    assignment = claim(broker, worker)

    succeed(broker, worker, assignment, 42)

    info = broker.get_instance(instance_id)
    step = info.step("double")
    assert (step.state, step.result, step.attempt, step.error) == (Status.SUCCEEDED, 42, 1, None)
    assert step.finished_at is not None
    assert (info.status, info.result, info.error) == (Status.SUCCEEDED, 42, None)
    assert info.finished_at is not None
    assert info.created_at <= info.finished_at


def test_the_seed_positional_report_without_attempt_matches_the_attempt_the_worker_holds(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    broker.report_step(worker, StepReport(assignment.workflow_id, instance_id, "double", Status.SUCCEEDED, 2))

    assert broker.get_instance(instance_id).result == 2


def test_a_report_with_a_wrong_attempt_number_is_rejected_and_changes_nothing(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    for stale in (0, 2):
        with pytest.raises(LeaseLost):
            broker.report_step(worker, report(assignment, Status.SUCCEEDED, 99, attempt=stale))

    step = broker.get_instance(instance_id).step("double")
    assert (step.state, step.result, step.attempt) == (Status.RUNNING, None, 1)
    succeed(broker, worker, assignment, 2)
    assert broker.get_instance(instance_id).result == 2


def test_a_report_from_another_worker_raises_lease_lost_and_changes_nothing(broker):
    holder, intruder = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, holder)

    with pytest.raises(LeaseLost):
        succeed(broker, intruder, assignment, 99)

    step = broker.get_instance(instance_id).step("double")
    assert (step.state, step.worker_id, step.result) == (Status.RUNNING, holder, None)
    succeed(broker, holder, assignment, 2)
    assert broker.get_instance(instance_id).result == 2


def test_a_report_for_a_step_that_was_never_claimed_raises_lease_lost(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})

    with pytest.raises(LeaseLost):
        broker.report_step(worker, StepReport("contract-sequence", instance_id, "second", "SUCCEEDED", 1))

    assert states(broker.get_instance(instance_id)) == {"first": Status.QUEUED, "second": Status.PENDING}


def test_exact_replay_of_an_accepted_report_is_a_no_op(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    succeed(broker, worker, assignment, {"value": 2, "tags": ["a"]})
    before, history = broker.get_instance(instance_id), trail(broker, instance_id)

    succeed(broker, worker, assignment, {"value": 2, "tags": ["a"]})

    assert broker.get_instance(instance_id) == before
    assert trail(broker, instance_id) == history
    assert claim(broker, worker).step_name == "second"
    assert broker.get_step(worker) is None


def test_replay_of_a_failure_report_is_a_no_op(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    broker.report_step(worker, report(assignment, Status.FAILED, error="ValueError: bad"))
    before = broker.get_instance(instance_id)

    broker.report_step(worker, report(assignment, Status.FAILED, error="ValueError: bad"))

    assert broker.get_instance(instance_id) == before


@pytest.mark.parametrize(
    ("state", "result"),
    [(Status.SUCCEEDED, {"value": 3}), (Status.FAILED, None), (Status.SKIPPED, None)],
    ids=["other-result", "failed", "skipped"],
)
def test_a_different_replay_raises_report_conflict(broker, state, result):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    succeed(broker, worker, assignment, {"value": 2})
    before = broker.get_instance(instance_id)

    with pytest.raises(ReportConflict):
        broker.report_step(worker, report(assignment, state, result, error="late"))

    assert broker.get_instance(instance_id) == before


def test_a_report_for_an_unknown_instance_raises_unknown_instance(broker):
    worker = register(broker, wf.SINGLE)

    with pytest.raises(UnknownInstance):
        broker.report_step(
            worker, StepReport("contract-single", str(uuid.uuid4()), "double", Status.SUCCEEDED, 1, 1)
        )


def test_a_report_for_an_unknown_step_raises_unknown_step(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, worker)

    with pytest.raises(UnknownStep):
        broker.report_step(
            worker, StepReport("contract-single", instance_id, "no_such_step", Status.SUCCEEDED, 1, 1)
        )

    assert broker.get_instance(instance_id).step("double").state is Status.RUNNING


def test_a_report_from_an_unregistered_worker_is_rejected_and_changes_nothing(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    before = broker.get_instance(instance_id)

    for stranger in ("no-such-worker", str(uuid.uuid4())):
        with pytest.raises((UnknownWorker, LeaseLost)):
            succeed(broker, stranger, assignment, 2)

    assert broker.get_instance(instance_id) == before


@pytest.mark.parametrize("state", ["RUNNING", "QUEUED", "PENDING", "CANCELLED", "DONE"])
def test_a_worker_may_only_report_succeeded_failed_or_skipped(broker, state):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    with pytest.raises(BrokerError):
        broker.report_step(worker, report(assignment, state, None))

    assert broker.get_instance(instance_id).step("double").state is Status.RUNNING


def test_a_failed_report_records_its_error_and_fails_the_instance_naming_the_step(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    broker.report_step(worker, report(assignment, Status.FAILED, error="KeyError: 'missing'"))

    info = broker.get_instance(instance_id)
    assert info.step("first").state is Status.FAILED
    assert info.step("first").error == "KeyError: 'missing'"
    assert info.step("second").state is Status.CANCELLED
    assert info.status is Status.FAILED
    assert "first" in info.error
    assert "KeyError: 'missing'" in info.error


def test_a_failed_report_without_error_text_still_records_an_error(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    broker.report_step(worker, report(claim(broker, worker), Status.FAILED))

    error = broker.get_instance(instance_id).step("double").error
    assert isinstance(error, str)
    assert error


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (object(), "object"), (math.nan, "float"), ({"k": [math.inf]}, "dict")],
    ids=["set", "object", "nan", "nested-infinity"],
)
def test_a_result_that_is_not_json_fails_the_step_naming_the_step_and_the_type(broker, value, type_name):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})

    succeed(broker, worker, claim(broker, worker), value)

    info = broker.get_instance(instance_id)
    step = info.step("first")
    assert step.state is Status.FAILED
    assert step.result is None
    assert "first" in step.error
    assert type_name in step.error
    assert info.step("second").state is Status.CANCELLED
    assert info.status is Status.FAILED


def test_a_result_larger_than_max_result_bytes_fails_the_step_naming_the_limit(make_broker):
    broker = make_broker(max_result_bytes=100)
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    succeed(broker, worker, claim(broker, worker), "a" * 99)  # 101 bytes of JSON

    info = broker.get_instance(instance_id)
    step = info.step("double")
    assert step.state is Status.FAILED
    assert step.result is None
    assert "100" in step.error
    assert "double" in step.error
    assert info.status is Status.FAILED


def test_a_result_of_exactly_max_result_bytes_is_accepted(make_broker):
    broker = make_broker(max_result_bytes=100)
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    exactly = "a" * 98
    assert len(json.dumps(exactly).encode()) == 100

    succeed(broker, worker, claim(broker, worker), exactly)

    info = broker.get_instance(instance_id)
    assert info.step("double").state is Status.SUCCEEDED
    assert info.result == exactly


@pytest.mark.parametrize(("count", "accepted"), [(49, True), (50, False)])
def test_the_result_limit_counts_utf8_bytes_not_characters(make_broker, count, accepted):
    broker = make_broker(max_result_bytes=100)
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    value = "é" * count  # two bytes each, plus two quotes: 100 or 102 bytes

    succeed(broker, worker, claim(broker, worker), value)

    step = broker.get_instance(instance_id).step("double")
    assert step.state is (Status.SUCCEEDED if accepted else Status.FAILED)
    assert step.result == (value if accepted else None)


ROUND_TRIP_VALUES = {
    "key-order": {"zeta": 1, "alpha": {"b": 2, "a": 1}, "mid": [{"y": 1, "x": 2}]},
    "unicode": "héllo wörld ✓ 日本語 🚀 Ωμέγα",
    "quotes": "single ' double \" backslash \\ newline \n tab \t",
    "sql": "'; DROP TABLE x; --",
    "sql-in-keys": {"'; DROP TABLE x; --": '"); DELETE FROM y; --'},
    "mixed": [1, 2.5, -7, True, False, None, "", [], {}],
    "big-int": 2**53 + 1,
    "float": 0.1,
    "none": None,
    "empty-dict": {},
}


def _json(value):
    """Order-sensitive comparison: two values are equal here only with the same key order."""
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("value", list(ROUND_TRIP_VALUES.values()), ids=list(ROUND_TRIP_VALUES))
def test_results_and_inputs_round_trip_unchanged(broker, value):
    worker = register(broker, wf.ECHO)
    inputs = {"value": value, "zz": 1, "aa": 2}
    instance_id = wf.ECHO.dispatch(broker, inputs)

    first = claim(broker, worker)
    assert _json(first.payload["workflow_inputs"]) == _json(inputs)
    succeed(broker, worker, first, value)
    second = claim(broker, worker)
    assert _json(second.payload["results"]) == _json({"echo": value})
    succeed(broker, worker, second, value)

    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED
    assert _json(info.inputs) == _json(inputs)
    assert _json(info.step("echo").result) == _json(value)
    assert _json(info.result) == _json(value)
