"""How an instance moves on: sequences, AND and OR joins, branches, conditions, skips, fail-fast."""

from __future__ import annotations

import pytest

from fuseline import Status

from . import workflows as wf
from .support import claim, register, report, states, succeed, trail


def test_the_second_step_of_a_sequence_is_queued_only_after_the_first_succeeded(broker):
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})

    first = claim(broker, worker)
    assert first.step_name == "first"
    assert broker.get_step(worker) is None
    assert states(broker.get_instance(instance_id))["second"] is Status.PENDING

    succeed(broker, worker, first, 2)
    second = claim(broker, worker)
    assert second.step_name == "second"
    assert second.payload["results"] == {"first": 2}
    succeed(broker, worker, second, 20)

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 20)


def test_an_and_join_waits_for_every_predecessor(broker):
    worker = register(broker, wf.DIAMOND)
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    left, right = claim(broker, worker), claim(broker, worker)
    assert {left.step_name, right.step_name} == {"left", "right"}

    succeed(broker, worker, left, 2)
    assert broker.get_step(worker) is None
    assert broker.get_instance(instance_id).step("join").state is Status.PENDING

    succeed(broker, worker, right, 3)
    join = claim(broker, worker)
    assert join.step_name == "join"
    assert join.payload["results"] == {"left": 2, "right": 3}
    assert broker.get_step(worker) is None


def test_an_and_join_is_queued_exactly_once(broker):
    worker = register(broker, wf.DIAMOND)
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    for assignment in [claim(broker, worker), claim(broker, worker)]:
        succeed(broker, worker, assignment, 5)

    succeed(broker, worker, claim(broker, worker), [5, 5])

    assert broker.get_step(worker) is None
    assert trail(broker, instance_id).count(("queued", "join")) == 1
    assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_an_or_join_takes_the_value_of_the_first_member_that_succeeded(broker):
    worker = register(broker, wf.OR_JOIN)
    instance_id = wf.OR_JOIN.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    fast, slow = claim(broker, worker), claim(broker, worker)
    assert (fast.step_name, slow.step_name) == ("fast", "slow")

    succeed(broker, worker, slow, "slow:1")  # the second-declared member finishes first
    assert broker.get_instance(instance_id).step("first_of").state is Status.QUEUED
    succeed(broker, worker, fast, "fast:1")  # while the join is still queued

    join = claim(broker, worker)
    assert join.step_name == "first_of"
    assert join.payload["results"] == {"slow": "slow:1"}
    assert broker.get_step(worker) is None
    assert trail(broker, instance_id).count(("queued", "first_of")) == 1

    succeed(broker, worker, join, "got slow:1")
    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, "got slow:1")


def test_an_or_group_decided_after_both_members_succeeded_takes_the_first_to_succeed(broker):
    worker = register(broker, wf.OR_AND)
    instance_id = wf.OR_AND.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    held = {a.step_name: a for a in (claim(broker, worker) for _ in range(3))}
    assert set(held) == {"early", "late", "gate"}

    succeed(broker, worker, held["late"], "late:1")
    succeed(broker, worker, held["early"], "early:1")
    assert broker.get_instance(instance_id).step("pick").state is Status.PENDING  # waits for gate
    succeed(broker, worker, held["gate"], 1)

    pick = claim(broker, worker)
    assert pick.step_name == "pick"
    assert pick.payload["results"] == {"late": "late:1", "gate": 1}


def test_an_or_join_still_runs_when_a_member_fails_after_the_other_succeeded(broker):
    worker = register(broker, wf.OR_JOIN)
    instance_id = wf.OR_JOIN.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    fast, slow = claim(broker, worker), claim(broker, worker)

    succeed(broker, worker, fast, "fast:1")
    broker.report_step(worker, report(slow, Status.FAILED, error="RuntimeError: slow broke"))
    join = claim(broker, worker)
    assert join.payload["results"] == {"fast": "fast:1"}
    succeed(broker, worker, join, "got fast:1")

    info = broker.get_instance(instance_id)
    assert info.step("first_of").state is Status.SUCCEEDED
    assert info.status is Status.FAILED
    assert "slow" in info.error


def test_an_or_join_waits_for_its_other_member_when_one_fails_first(broker):
    worker = register(broker, wf.OR_JOIN)
    instance_id = wf.OR_JOIN.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    fast, slow = claim(broker, worker), claim(broker, worker)

    broker.report_step(worker, report(fast, Status.FAILED, error="RuntimeError: fast broke"))
    assert broker.get_instance(instance_id).step("first_of").state is Status.PENDING
    assert broker.get_instance(instance_id).status is Status.RUNNING

    succeed(broker, worker, slow, "slow:1")
    join = claim(broker, worker)
    assert join.payload["results"] == {"slow": "slow:1"}


def test_an_or_join_whose_members_all_failed_is_cancelled(broker):
    worker = register(broker, wf.OR_JOIN)
    instance_id = wf.OR_JOIN.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    for assignment in [claim(broker, worker), claim(broker, worker)]:
        broker.report_step(worker, report(assignment, Status.FAILED, error="RuntimeError: broke"))

    info = broker.get_instance(instance_id)
    assert info.step("first_of").state is Status.CANCELLED
    assert info.status is Status.FAILED


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("approve", {"approve": Status.QUEUED, "reject": Status.SKIPPED, "audit": Status.SKIPPED}),
        ("reject", {"approve": Status.SKIPPED, "reject": Status.QUEUED, "audit": Status.SKIPPED}),
        ("neither", {"approve": Status.SKIPPED, "reject": Status.SKIPPED, "audit": Status.QUEUED}),
    ],
)
def test_a_branch_queues_the_edges_its_result_names_and_skips_the_others(broker, choice, expected):
    worker = register(broker, wf.BRANCH)
    instance_id = wf.BRANCH.dispatch(broker, {"choice": choice})

    succeed(broker, worker, claim(broker, worker), choice)

    info = broker.get_instance(instance_id)
    assert {name: info.step(name).state for name in expected} == expected
    (chosen,) = [name for name, state in expected.items() if state is Status.QUEUED]
    assert claim(broker, worker).step_name == chosen
    assert broker.get_step(worker) is None


def test_a_branch_result_that_is_not_a_string_follows_the_default_edges(broker):
    worker = register(broker, wf.BRANCH)
    instance_id = wf.BRANCH.dispatch(broker, {"choice": "x"})

    succeed(broker, worker, claim(broker, worker), ["approve"])

    assert claim(broker, worker).step_name == "audit"
    assert broker.get_instance(instance_id).step("approve").state is Status.SKIPPED


def test_an_instance_whose_outputs_were_skipped_by_a_branch_succeeds_with_none_for_them(broker):
    worker = register(broker, wf.BRANCH)
    instance_id = wf.BRANCH.dispatch(broker, {"choice": "approve"})
    succeed(broker, worker, claim(broker, worker), "approve")

    succeed(broker, worker, claim(broker, worker), "approved")

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, ["approved", None, None])


def test_a_skipped_step_skips_a_successor_that_depends_only_on_it(broker):
    worker = register(broker, wf.CONDITIONAL)
    instance_id = wf.CONDITIONAL.dispatch(broker, {"x": 2})
    succeed(broker, worker, claim(broker, worker), 2)
    big = claim(broker, worker)
    assert big.step_name == "big"

    broker.report_step(worker, report(big, Status.SKIPPED))

    info = broker.get_instance(instance_id)
    assert info.step("big").state is Status.SKIPPED
    assert info.step("after_big").state is Status.SKIPPED
    assert info.step("after_big").attempt == 0
    combine = claim(broker, worker)
    assert combine.step_name == "combine"
    assert combine.payload["results"] == {"measure": 2}
    assert broker.get_step(worker) is None


def test_a_failed_step_cancels_downstream_while_an_independent_branch_completes(broker):
    worker = register(broker, wf.FAIL_FAST)
    instance_id = wf.FAIL_FAST.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    boom, independent = claim(broker, worker), claim(broker, worker)
    assert (boom.step_name, independent.step_name) == ("boom", "independent")

    broker.report_step(worker, report(boom, Status.FAILED, error="ValueError: boom on 1"))

    info = broker.get_instance(instance_id)
    assert info.step("after_boom").state is Status.CANCELLED
    assert info.step("after_after").state is Status.CANCELLED
    assert info.status is Status.RUNNING  # the independent branch is still running

    succeed(broker, worker, independent, 2)
    info = broker.get_instance(instance_id)
    assert info.step("independent").state is Status.SUCCEEDED
    assert info.status is Status.FAILED
    assert "boom" in info.error
    assert broker.get_step(worker) is None


def test_an_instance_is_finalized_exactly_once(broker):
    worker = register(broker, wf.FAIL_FAST)
    instance_id = wf.FAIL_FAST.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    boom, independent = claim(broker, worker), claim(broker, worker)
    broker.report_step(worker, report(boom, Status.FAILED, error="ValueError: boom"))
    succeed(broker, worker, independent, 2)
    succeed(broker, worker, independent, 2)  # an exact replay after the instance finished

    kinds = [kind for kind, _ in trail(broker, instance_id)]

    assert [k for k in kinds if k.startswith("instance_")] == ["instance_failed"]
    assert kinds[-1] == "instance_failed"
