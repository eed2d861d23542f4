"""Edges between steps: >>, OR joins, conditions and branching actions."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from fuseline import Computed, Condition, Depends, Step, Workflow
from fuseline.broker import InstanceInfo


def step_states(info: InstanceInfo) -> dict[str, str]:
    return {step.name: str(step.state) for step in info.steps}


class Value(Step):
    """Returns a fixed value (and logs that it ran)."""

    def __init__(self, value: Any, log: list[str] | None = None, **kwargs: Any) -> None:
        self.value = value
        self.log = log if log is not None else []
        super().__init__(**kwargs)

    def run_step(self) -> Any:
        self.log.append(self.name or "?")
        return self.value


# -- >> ------------------------------------------------------------------------------------


def test_rshift_orders_steps_without_passing_data() -> None:
    log: list[str] = []
    a, b, c = (Value(n, log, name=f"s{n}") for n in (1, 2, 3))
    assert (a >> b >> c) is c

    assert Workflow(c).run() == 3
    assert log == ["s1", "s2", "s3"]


def test_rshift_to_a_list_fans_out_and_a_list_rshift_joins() -> None:
    log: list[str] = []
    a, b, c, d = (Value(n, log, name=n) for n in "abcd")

    assert (a >> [b, c]) == [b, c]
    assert ([b, c] >> d) is d

    workflow = Workflow(d)
    assert {name: sorted(s.name for s in step.predecessors) for name, step in workflow.steps.items()} == {
        "a": [],
        "b": ["a"],
        "c": ["a"],
        "d": ["b", "c"],
    }
    assert workflow.run() == "d"
    assert log[0] == "a"
    assert sorted(log[1:3]) == ["b", "c"]
    assert log[3] == "d"


def test_a_step_cannot_depend_on_itself() -> None:
    a = Value(1)
    with pytest.raises(ValueError, match="itself"):
        a >> a


def test_rshift_refuses_something_that_is_not_a_step() -> None:
    with pytest.raises(TypeError, match="cannot connect"):
        Value(1) >> 42  # type: ignore[operator]


# -- OR joins -------------------------------------------------------------------------------


def test_or_join_runs_as_soon_as_the_first_member_succeeds_with_its_value() -> None:
    merged = threading.Event()

    class Slow(Step):
        def run_step(self) -> str:
            # finishes only after the join ran: proves the join did not wait for it
            assert merged.wait(5), "the OR join waited for every member"
            return "slow"

    class Fast(Step):
        def run_step(self) -> str:
            return "fast"

    slow, fast = Slow(), Fast()
    seen: list[str] = []

    class Merge(Step):
        def run_step(self, first: Computed[str] = Depends([slow, fast])) -> str:
            seen.append(first)
            merged.set()
            return f"merged {first}"

    workflow = Workflow(Merge())
    assert workflow.to_schema().or_groups == (
        {"step": "merge", "param": "first", "members": ["slow", "fast"]},
    )
    assert workflow.run() == "merged fast"
    assert seen == ["fast"]


def test_or_join_takes_the_first_member_that_succeeded(run_on_broker) -> None:
    class Early(Step):
        def run_step(self) -> str:
            return "early"

    early = Early()

    class Late(Step):
        def run_step(self, after: Any = Depends(early)) -> str:
            return "late"

    late = Late()

    class Merge(Step):
        def run_step(self, value: Computed[str] = Depends([late, early])) -> str:
            return value

    info = run_on_broker(Workflow(Merge(), workflow_id="or-first"))

    assert info.result == "early"
    assert step_states(info) == {"early": "SUCCEEDED", "late": "SUCCEEDED", "merge": "SUCCEEDED"}


def test_or_join_after_a_branch_takes_the_branch_that_ran(run_on_broker) -> None:
    class Route(Step):
        def run_step(self, kind: str) -> str:
            return kind

    class Left(Step):
        def run_step(self) -> str:
            return "went left"

    class Right(Step):
        def run_step(self) -> str:
            return "went right"

    route, left, right = Route(), Left(), Right()
    route - "left" >> left
    route - "right" >> right

    class Merge(Step):
        def run_step(self, where: Computed[str] = Depends([left, right])) -> str:
            return where.upper()

    workflow = Workflow(Merge(), workflow_id="or-branch")

    assert workflow.run({"kind": "right"}) == "WENT RIGHT"
    assert workflow.run({"kind": "left"}) == "WENT LEFT"
    info = run_on_broker(workflow, {"kind": "right"})
    assert step_states(info) == {
        "route": "SUCCEEDED",
        "left": "SKIPPED",
        "right": "SUCCEEDED",
        "merge": "SUCCEEDED",
    }
    assert info.result == "WENT RIGHT"


def test_or_join_whose_members_are_all_skipped_is_skipped(run_on_broker) -> None:
    zero = Value(0, name="zero")

    class A(Step):
        def run_step(self, v: int = Depends(zero, condition=bool)) -> str:
            return "a"

    class B(Step):
        def run_step(self, v: int = Depends(zero, condition=bool)) -> str:
            return "b"

    a, b = A(), B()

    class Merge(Step):
        def run_step(self, v: str = Depends([a, b])) -> str:
            return v

    info = run_on_broker(Workflow(Merge(), workflow_id="or-skipped"))

    assert info.status == "SUCCEEDED"
    assert info.result is None
    assert step_states(info) == {"zero": "SUCCEEDED", "a": "SKIPPED", "b": "SKIPPED", "merge": "SKIPPED"}


def test_or_join_survives_a_failed_member_when_another_succeeded(run_on_broker) -> None:
    class Broken(Step):
        def run_step(self) -> str:
            raise RuntimeError("mirror down")

    class Mirror(Step):
        def run_step(self) -> str:
            return "mirror ok"

    broken, mirror = Broken(), Mirror()

    class Merge(Step):
        def run_step(self, v: str = Depends([broken, mirror])) -> str:
            return v

    info = run_on_broker(Workflow(Merge(), workflow_id="or-failed"))

    assert step_states(info) == {"broken": "FAILED", "mirror": "SUCCEEDED", "merge": "SUCCEEDED"}
    assert info.step("merge").result == "mirror ok"
    # a failed step still fails the instance (DESIGN section 2)
    assert info.status == "FAILED"


# -- conditions -----------------------------------------------------------------------------


def make_conditional(value: int, condition: Any) -> tuple[Workflow, Step]:
    source = Value(value, name="source")
    ran: list[int] = []

    class Guarded(Step):
        def run_step(self, v: Computed[int] = Depends(source, condition=condition)) -> str:
            ran.append(v)
            return f"ran with {v}"

    guarded = Guarded()
    return Workflow(guarded), guarded


def test_a_true_condition_runs_the_step_with_the_value() -> None:
    workflow, _ = make_conditional(5, lambda v: v > 3)
    assert workflow.run() == "ran with 5"


def test_a_false_condition_skips_the_step(run_on_broker) -> None:
    workflow, _ = make_conditional(1, lambda v: v > 3)

    assert workflow.run() is None
    assert workflow.run_instance().steps == {"source": "SUCCEEDED", "guarded": "SKIPPED"}
    info = run_on_broker(workflow)
    assert step_states(info) == {"source": "SUCCEEDED", "guarded": "SKIPPED"}
    assert info.status == "SUCCEEDED"


def test_skip_propagates_to_steps_that_only_depend_on_skipped_steps(run_on_broker) -> None:
    zero = Value(0, name="zero")

    class Guarded(Step):
        def run_step(self, v: int = Depends(zero, condition=bool)) -> int:
            return v

    guarded = Guarded()
    after = Value("after", name="after")
    guarded >> after

    info = run_on_broker(Workflow(after, workflow_id="skip-propagates"))

    assert step_states(info) == {"zero": "SUCCEEDED", "guarded": "SKIPPED", "after": "SKIPPED"}
    assert after.log == []


def test_a_depends_on_a_skipped_step_receives_none_when_another_dependency_succeeded() -> None:
    zero = Value(0, name="zero")
    other = Value("other", name="other")

    class Guarded(Step):
        def run_step(self, v: int = Depends(zero, condition=bool)) -> int:
            return v

    guarded = Guarded()
    received: list[Any] = []

    class Join(Step):
        def run_step(self, g: Any = Depends(guarded), o: Any = Depends(other)) -> str:
            received.append((g, o))
            return "joined"

    assert Workflow(Join()).run() == "joined"
    assert received == [(None, "other")]


POSITIVE = Condition(lambda v: v > 0, "positive")
EVEN = Condition(lambda v: v % 2 == 0, "even")


@pytest.mark.parametrize(
    ("condition", "value", "runs"),
    [
        (POSITIVE & EVEN, 4, True),
        (POSITIVE & EVEN, 3, False),
        (POSITIVE & EVEN, -2, False),
        (POSITIVE | EVEN, 3, True),
        (POSITIVE | EVEN, -2, True),
        (POSITIVE | EVEN, -3, False),
        (~POSITIVE, -1, True),
        (~POSITIVE, 1, False),
        (~(POSITIVE & EVEN) | (lambda v: v == 4), 4, True),
    ],
)
def test_combined_conditions_decide_whether_the_step_runs(
    condition: Condition, value: int, runs: bool
) -> None:
    workflow, _ = make_conditional(value, condition)

    run = workflow.run_instance()

    assert run.result == (f"ran with {value}" if runs else None)
    assert run.steps["guarded"] == ("SUCCEEDED" if runs else "SKIPPED")


def test_combined_conditions_describe_themselves_in_the_schema() -> None:
    workflow, _ = make_conditional(1, (POSITIVE & ~EVEN) | POSITIVE)
    assert workflow.to_schema().conditions == (
        {"step": "guarded", "param": "v", "description": "((positive) and (not (even))) or (positive)"},
    )


def test_a_condition_must_wrap_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        Condition(42)  # type: ignore[arg-type]


# -- branching ------------------------------------------------------------------------------


def make_approval() -> tuple[Workflow, list[str]]:
    log: list[str] = []

    class Review(Step):
        def run_step(self, amount: int) -> str:
            log.append("review")
            return "approve" if amount < 100 else "reject"

    review = Review()
    approve = Value("paid", log, name="approve")
    reject = Value("refused", log, name="reject")
    review - "approve" >> approve
    review - "reject" >> reject
    return Workflow([approve, reject], workflow_id="approval"), log


def test_a_branch_runs_only_the_target_named_by_the_result(run_on_broker) -> None:
    workflow, log = make_approval()

    assert workflow.run({"amount": 10}) == ["paid", None]
    assert log == ["review", "approve"]

    info = run_on_broker(workflow, {"amount": 500})
    assert info.result == [None, "refused"]
    assert step_states(info) == {"review": "SUCCEEDED", "approve": "SKIPPED", "reject": "SUCCEEDED"}


def test_branch_edges_are_in_the_schema_with_their_action() -> None:
    workflow, _ = make_approval()
    assert workflow.to_schema().edges == (
        {"source": "review", "target": "approve", "action": "approve"},
        {"source": "review", "target": "reject", "action": "reject"},
    )


def test_a_result_naming_no_action_follows_the_default_edges(run_on_broker) -> None:
    class Classify(Step):
        def run_step(self, text: str) -> str:
            return text

    classify = Classify()
    urgent = Value("paged", name="urgent")
    normal = Value("queued", name="normal")
    classify - "urgent" >> urgent
    classify >> normal

    workflow = Workflow([urgent, normal], workflow_id="default-edge")

    info = run_on_broker(workflow, {"text": "something else"})
    assert step_states(info) == {"classify": "SUCCEEDED", "urgent": "SKIPPED", "normal": "SUCCEEDED"}
    info = run_on_broker(workflow, {"text": "urgent"})
    assert step_states(info) == {"classify": "SUCCEEDED", "urgent": "SUCCEEDED", "normal": "SKIPPED"}


def test_a_branch_target_with_another_succeeded_dependency_is_still_skipped(run_on_broker) -> None:
    class Price(Step):
        def run_step(self) -> int:
            time.sleep(0.01)
            return 120

    price = Price()

    class Decide(Step):
        def run_step(self, flag: str) -> str:
            return flag

    decide = Decide()

    class Ship(Step):
        def run_step(self, total: Computed[int] = Depends(price)) -> str:
            return f"charged {total}"

    ship = Ship()
    hold = Value("held", name="hold")
    decide - "ship" >> ship
    decide - "hold" >> hold
    workflow = Workflow([ship, hold], workflow_id="ship-or-hold")

    info = run_on_broker(workflow, {"flag": "hold"})
    assert step_states(info) == {
        "price": "SUCCEEDED",
        "decide": "SUCCEEDED",
        "ship": "SKIPPED",
        "hold": "SUCCEEDED",
    }
    assert info.result == [None, "held"]

    info = run_on_broker(workflow, {"flag": "ship"})
    assert info.result == ["charged 120", None]


def test_branch_action_must_be_a_non_empty_string() -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        Value(1) - ""  # type: ignore[operator]
