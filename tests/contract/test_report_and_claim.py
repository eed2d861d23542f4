"""``report_and_claim``: a report and the next claim together, as workers send them."""

from __future__ import annotations

import pytest

from fuseline import Status, StepReport
from fuseline.errors import LeaseLost

from . import workflows as wf
from .support import report


def success(assignment, result, *, attempt=None) -> StepReport:
    attempt = assignment.attempt if attempt is None else attempt
    return report(assignment, Status.SUCCEEDED, result, attempt=attempt, version=assignment.version)


def test_report_and_claim_accepts_the_report_and_hands_out_the_next_step(broker):
    schema = wf.SEQUENCE.to_schema()
    first_instance = wf.SEQUENCE.dispatch(broker, {"x": 1})
    worker = broker.register_worker([schema])
    first = broker.get_step(worker)
    assert (first.instance_id, first.step_name) == (first_instance, "first")

    following = broker.report_and_claim(worker, success(first, 2))

    assert following is not None
    assert (following.instance_id, following.step_name, following.attempt) == (first_instance, "second", 1)
    assert following.payload["results"] == {"first": 2}
    info = broker.get_instance(first_instance)
    assert info.step("first").state is Status.SUCCEEDED
    assert info.step("second").state is Status.RUNNING


def test_report_and_claim_finishing_an_instance_claims_from_the_next_one(broker):
    schema = wf.SINGLE.to_schema()
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in (1, 2)]
    worker = broker.register_worker([schema])
    first = broker.get_step(worker)

    following = broker.report_and_claim(worker, success(first, 2))

    assert broker.get_instance(ids[0]).status is Status.SUCCEEDED
    assert broker.get_instance(ids[0]).result == 2
    assert following is not None and following.instance_id == ids[1]


def test_report_and_claim_returns_none_when_nothing_else_is_queued(broker):
    instance_id = wf.SINGLE.dispatch(broker, {"x": 3})
    worker = broker.register_worker([wf.SINGLE.to_schema()])
    only = broker.get_step(worker)

    assert broker.report_and_claim(worker, success(only, 6)) is None
    assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_a_refused_report_and_claim_raises_and_claims_nothing(broker):
    schema = wf.SINGLE.to_schema()
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in (1, 2)]
    worker = broker.register_worker([schema])
    first = broker.get_step(worker)

    with pytest.raises(LeaseLost):
        broker.report_and_claim(worker, success(first, 2, attempt=first.attempt + 1))

    info = broker.get_instance(ids[1])
    assert info.step("double").state is Status.QUEUED, "the refused report must not claim the next step"
    assert broker.get_instance(ids[0]).step("double").state is Status.RUNNING
