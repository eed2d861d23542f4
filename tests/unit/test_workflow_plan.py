"""``WorkflowPlan``: the join, branch, skip and cancel rules, on hand-written schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from fuseline import Status, WorkflowSchema
from fuseline.broker.dag import Progress, StepView, WorkflowPlan
from fuseline.errors import WorkflowDefinitionError

Edge = tuple[str, str, "str | None"]


def make_plan(
    order: Sequence[str],
    edges: Sequence[Edge],
    *,
    consumes: dict[str, dict[str, list[str]]] | None = None,
    or_groups: Sequence[tuple[str, list[str]]] = (),
    outputs: Sequence[str] | None = None,
) -> WorkflowPlan:
    """A plan from step names, (source, target, action) edges and Depends declarations."""
    consumes = consumes or {}
    schema = WorkflowSchema(
        workflow_id="plan",
        version="1",
        steps=tuple({"name": n, "dependencies": consumes.get(n, {})} for n in order),
        edges=tuple({"source": s, "target": t, "action": a} for s, t, a in edges),
        or_groups=tuple({"step": s, "param": "value", "members": m} for s, m in or_groups),
        conditions=(),
        outputs=tuple(outputs or order[-1:]),
    )
    return WorkflowPlan(schema)


def view(plan: WorkflowPlan, **states: Any) -> dict[str, StepView]:
    """Every step PENDING unless given: ``a="SUCCEEDED"`` or ``a=("SUCCEEDED", action, finished)``."""
    result = {}
    for name in plan.order:
        spec = states.get(name, "PENDING")
        if isinstance(spec, tuple):
            state, action, finished = spec
        else:
            state, action, finished = spec, None, 0
        result[name] = StepView(Status(state), action, finished)
    return result


def decided(progress: Progress) -> dict[str, Any]:
    return {
        "queued": progress.queued,
        "skipped": progress.skipped,
        "cancelled": progress.cancelled,
    }


NOTHING: dict[str, Any] = {"queued": {}, "skipped": [], "cancelled": []}


# -- roots and AND joins ---------------------------------------------------------------------


def test_roots_are_queued_at_once_and_nothing_else() -> None:
    plan = make_plan(["a", "b", "c"], [("a", "c", None), ("b", "c", None)])
    v = view(plan)

    progress = plan.settle(v, plan.order)

    assert plan.roots == ["a", "b"]
    assert decided(progress) == {"queued": {"a": [], "b": []}, "skipped": [], "cancelled": []}
    assert v["c"].state is Status.PENDING


def test_an_and_join_waits_for_every_predecessor() -> None:
    plan = make_plan(
        ["a", "b", "c"],
        [("a", "c", None), ("b", "c", None)],
        consumes={"c": {"x": ["a"], "y": ["b"]}},
    )

    waiting = plan.settle(view(plan, a="SUCCEEDED", b="RUNNING"), ["c"])
    ready = plan.settle(view(plan, a="SUCCEEDED", b="SUCCEEDED"), ["c"])

    assert decided(waiting) == NOTHING
    assert decided(ready) == {"queued": {"c": ["a", "b"]}, "skipped": [], "cancelled": []}


def test_only_consumed_predecessors_are_passed_as_inputs() -> None:
    plan = make_plan(
        ["a", "b", "c"],
        [("a", "c", None), ("b", "c", None)],  # b >> c without a Depends
        consumes={"c": {"x": ["a"]}},
    )
    progress = plan.settle(view(plan, a="SUCCEEDED", b="SUCCEEDED"), ["c"])
    assert progress.queued == {"c": ["a"]}


def test_a_successor_is_queued_exactly_once() -> None:
    plan = make_plan(["a", "b"], [("a", "b", None)])
    v = view(plan, a="SUCCEEDED")

    first = plan.settle(v, ["b"])
    second = plan.settle(v, ["b", "b"])

    assert first.queued == {"b": []}
    assert v["b"].state is Status.QUEUED
    assert decided(second) == NOTHING


# -- OR groups -----------------------------------------------------------------------------


def or_plan() -> WorkflowPlan:
    return make_plan(
        ["a", "b", "j"],
        [("a", "j", None), ("b", "j", None)],
        consumes={"j": {"value": ["a", "b"]}},
        or_groups=[("j", ["a", "b"])],
    )


def test_or_join_is_queued_when_one_member_succeeded_and_the_other_still_runs() -> None:
    plan = or_plan()
    progress = plan.settle(view(plan, a="RUNNING", b="SUCCEEDED"), ["j"])
    assert progress.queued == {"j": ["b"]}


def test_or_join_takes_the_member_that_succeeded_first() -> None:
    plan = or_plan()
    v = view(plan, a=("SUCCEEDED", None, 7), b=("SUCCEEDED", None, 3))
    assert plan.settle(v, ["j"]).queued == {"j": ["b"]}

    v = view(plan, a=("SUCCEEDED", None, 3), b=("SUCCEEDED", None, 7))
    assert plan.settle(v, ["j"]).queued == {"j": ["a"]}


def test_or_join_waits_while_no_member_succeeded_and_one_is_unfinished() -> None:
    plan = or_plan()
    assert decided(plan.settle(view(plan, a="FAILED", b="RUNNING"), ["j"])) == NOTHING


def test_or_join_with_a_failed_member_and_a_succeeded_member_is_queued() -> None:
    plan = or_plan()
    assert plan.settle(view(plan, a="FAILED", b="SUCCEEDED"), ["j"]).queued == {"j": ["b"]}


def test_or_join_whose_members_all_failed_is_cancelled() -> None:
    plan = or_plan()
    progress = plan.settle(view(plan, a="FAILED", b="CANCELLED"), ["j"])
    assert decided(progress) == {"queued": {}, "skipped": [], "cancelled": ["j"]}


def test_or_join_whose_members_were_all_skipped_is_skipped() -> None:
    plan = or_plan()
    progress = plan.settle(view(plan, a="SKIPPED", b="SKIPPED"), ["j"])
    assert decided(progress) == {"queued": {}, "skipped": ["j"], "cancelled": []}


def test_or_group_member_without_an_edge_is_refused() -> None:
    schema = WorkflowSchema(
        workflow_id="bad",
        version="1",
        steps=({"name": "a"}, {"name": "b"}, {"name": "j"}),
        edges=({"source": "a", "target": "j", "action": None},),
        or_groups=({"step": "j", "param": "v", "members": ["a", "b"]},),
        conditions=(),
        outputs=("j",),
    )
    with pytest.raises(WorkflowDefinitionError, match=r"names \['b'\] without an edge"):
        WorkflowPlan(schema)


# -- cancel and skip -----------------------------------------------------------------------


def test_a_failed_step_cancels_everything_downstream() -> None:
    plan = make_plan(["a", "b", "c", "d"], [("a", "b", None), ("b", "c", None), ("a", "d", None)])
    v = view(plan, a="FAILED")

    progress = plan.settle(v, plan.successors("a"))

    assert decided(progress) == {"queued": {}, "skipped": [], "cancelled": ["b", "d", "c"]}
    assert plan.outcome(v) is Status.FAILED


def test_a_failed_dependency_cancels_without_waiting_for_the_others() -> None:
    plan = make_plan(["a", "b", "c"], [("a", "c", None), ("b", "c", None)])
    progress = plan.settle(view(plan, a="FAILED", b="RUNNING"), ["c"])
    assert progress.cancelled == ["c"]


def test_skips_propagate_to_steps_whose_dependencies_were_all_skipped() -> None:
    plan = make_plan(["a", "b", "c"], [("a", "b", None), ("b", "c", None)])
    v = view(plan, a="SKIPPED")

    progress = plan.settle(v, ["b"])

    assert decided(progress) == {"queued": {}, "skipped": ["b", "c"], "cancelled": []}
    assert plan.outcome(v) is Status.SUCCEEDED


def test_a_skipped_dependency_next_to_a_succeeded_one_gives_none() -> None:
    plan = make_plan(
        ["a", "b", "c"],
        [("a", "c", None), ("b", "c", None)],
        consumes={"c": {"x": ["a"], "y": ["b"]}},
    )
    # c is queued; only b's result is passed, so c's parameter for a is None
    assert plan.settle(view(plan, a="SKIPPED", b="SUCCEEDED"), ["c"]).queued == {"c": ["b"]}


def test_a_failed_slot_wins_over_a_vetoed_one() -> None:
    plan = make_plan(["a", "d", "t"], [("a", "t", None), ("d", "t", "go")])
    progress = plan.settle(view(plan, a="FAILED", d=("SUCCEEDED", None, 1)), ["t"])
    assert progress.cancelled == ["t"]


# -- branching -------------------------------------------------------------------------------


def branch_plan() -> WorkflowPlan:
    return make_plan(
        ["decide", "yes", "no", "fallback"],
        [("decide", "yes", "approve"), ("decide", "no", "reject"), ("decide", "fallback", None)],
        outputs=["yes", "no", "fallback"],
    )


@pytest.mark.parametrize(
    ("result", "action"),
    [("approve", "approve"), ("reject", "reject"), ("maybe", None), (["approve"], None), (None, None)],
)
def test_the_chosen_action_is_the_result_when_it_names_an_action(result: Any, action: str | None) -> None:
    assert branch_plan().chosen_action("decide", result) == action


def test_a_step_without_action_edges_chooses_no_action() -> None:
    plan = make_plan(["a", "b"], [("a", "b", None)])
    assert plan.chosen_action("a", "approve") is None


@pytest.mark.parametrize(
    ("action", "queued", "skipped"),
    [
        ("approve", ["yes"], ["fallback", "no"]),
        ("reject", ["no"], ["fallback", "yes"]),
        (None, ["fallback"], ["no", "yes"]),
    ],
)
def test_a_branch_queues_the_edges_it_names_and_skips_the_others(
    action: str | None, queued: list[str], skipped: list[str]
) -> None:
    plan = branch_plan()
    v = view(plan, decide=("SUCCEEDED", action, 1))

    progress = plan.settle(v, plan.successors("decide"))

    assert sorted(progress.queued) == queued
    assert sorted(progress.skipped) == skipped
    assert progress.cancelled == []


def ship_plan() -> WorkflowPlan:
    """ship depends (default edge) on price and is the "ship" branch of decide."""
    return make_plan(
        ["price", "decide", "ship", "hold"],
        [("price", "ship", None), ("decide", "ship", "ship"), ("decide", "hold", "hold")],
        consumes={"ship": {"total": ["price"]}},
        outputs=["ship", "hold"],
    )


def test_a_branch_target_not_taken_is_skipped_though_its_other_dependency_succeeded() -> None:
    plan = ship_plan()
    v = view(plan, price=("SUCCEEDED", None, 1), decide=("SUCCEEDED", "hold", 2))

    progress = plan.settle(v, ["ship", "hold"])

    assert progress.skipped == ["ship"]
    assert progress.queued == {"hold": []}
    assert v["ship"].state is Status.SKIPPED


def test_a_branch_target_waits_for_the_branching_step_even_when_its_other_dependency_succeeded() -> None:
    plan = ship_plan()
    progress = plan.settle(view(plan, price="SUCCEEDED", decide="RUNNING"), ["ship"])
    assert decided(progress) == NOTHING


def test_a_branch_target_taken_gets_the_result_of_its_other_dependency() -> None:
    plan = ship_plan()
    v = view(plan, price=("SUCCEEDED", None, 1), decide=("SUCCEEDED", "ship", 2))
    assert plan.settle(v, ["ship", "hold"]).queued == {"ship": ["price"]}
    assert v["hold"].state is Status.SKIPPED


@pytest.mark.parametrize(("action", "state"), [("ship", "QUEUED"), (None, "QUEUED"), ("hold", "SKIPPED")])
def test_a_step_with_a_default_and_an_action_edge_from_one_branching_step(
    action: str | None, state: str
) -> None:
    """ship = Depends(decide) plus decide - "ship" >> ship: a result naming another action skips it."""
    plan = make_plan(
        ["decide", "ship", "hold"],
        [("decide", "ship", None), ("decide", "ship", "ship"), ("decide", "hold", "hold")],
        consumes={"ship": {"choice": ["decide"]}},
        outputs=["ship"],
    )
    v = view(plan, decide=("SUCCEEDED", action, 1))

    plan.settle(v, ["ship"])

    assert v["ship"].state is Status(state)


# -- outcome and validation ----------------------------------------------------------------


def test_outcome_is_none_until_every_step_is_final() -> None:
    plan = make_plan(["a", "b"], [("a", "b", None)])
    assert plan.outcome(view(plan, a="SUCCEEDED", b="QUEUED")) is None
    assert plan.outcome(view(plan, a="SUCCEEDED", b="SUCCEEDED")) is Status.SUCCEEDED
    assert plan.outcome(view(plan, a="SUCCEEDED", b="SKIPPED")) is Status.SUCCEEDED
    assert plan.outcome(view(plan, a="FAILED", b="CANCELLED")) is Status.FAILED


def test_steps_out_of_dependency_order_are_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match="'b' must come before 'a'"):
        make_plan(["a", "b"], [("b", "a", None)])


def test_plan_reads_attempt_limits_and_successors_from_the_schema() -> None:
    schema = WorkflowSchema(
        workflow_id="w",
        version="2",
        steps=({"name": "a", "max_attempts": 5}, {"name": "b"}),
        edges=({"source": "a", "target": "b", "action": None},),
        or_groups=(),
        conditions=(),
        outputs=("b",),
    )
    plan = WorkflowPlan(schema)
    assert (plan.workflow_id, plan.version, plan.hash) == ("w", "2", schema.hash)
    assert plan.nodes["a"].max_attempts == 5
    assert plan.nodes["b"].max_attempts == 3
    assert plan.successors("a") == ("b",)
    assert plan.outputs == ("b",)
