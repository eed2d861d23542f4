"""Which steps a broker may record in one statement (``WorkflowPlan.fast_reports``).

A fast report must never be offered where another step's state matters: a
join, a branch, or a step that may not be the last to finish.
"""

from __future__ import annotations

from fuseline import Computed, Depends, Step, Workflow
from fuseline.broker.dag import FastReport, WorkflowPlan


class Source(Step):
    def run_step(self) -> int:
        return 1


class Use(Step):
    def __init__(self, upstream: Step, **kwargs: object) -> None:
        self.upstream = upstream
        super().__init__(**kwargs)  # type: ignore[arg-type]
        upstream >> self

    def run_step(self) -> int:
        return 2


def plan_of(*outputs: Step) -> WorkflowPlan:
    return WorkflowPlan(Workflow(list(outputs)).to_schema())


def test_a_chain_queues_each_successor_and_its_last_step_finishes_the_instance() -> None:
    a = Source(name="a")
    b = Use(a, name="b")
    c = Use(b, name="c")
    fast = plan_of(c).fast_reports
    assert fast == {
        "a": FastReport(queue=("b",)),
        "b": FastReport(queue=("c",)),
        "c": FastReport(finalizes=True),
    }


def test_a_single_step_finishes_its_instance() -> None:
    assert plan_of(Source(name="only")).fast_reports == {"only": FastReport(finalizes=True)}


def test_the_branches_of_a_diamond_take_the_general_path_because_they_feed_a_join() -> None:
    a = Source(name="a")
    b, c = Use(a, name="b"), Use(a, name="c")
    d = Use(b, name="d")
    c >> d
    fast = plan_of(d).fast_reports
    assert fast["a"] == FastReport(queue=("b", "c"))
    assert "b" not in fast and "c" not in fast
    assert fast["d"] == FastReport(finalizes=True)


def test_a_sink_that_may_not_be_the_last_to_finish_has_no_fast_report() -> None:
    a = Source(name="a")
    b, c = Use(a, name="b"), Use(a, name="c")
    fast = plan_of(b, c).fast_reports
    assert "b" not in fast and "c" not in fast


def test_a_branching_step_has_no_fast_report() -> None:
    decide = Source(name="decide")

    class Target(Step):
        def run_step(self) -> int:
            return 3

    yes, no = Target(name="yes"), Target(name="no")
    decide - "yes" >> yes
    decide - "no" >> no
    assert "decide" not in plan_of(yes, no).fast_reports


def test_a_step_after_an_or_join_cannot_finish_the_instance_alone() -> None:
    a, b = Source(name="a"), Source(name="b")

    class Either(Step):
        def run_step(self, value: Computed[int] = Depends([a, b])) -> int:
            return value

    either = Either(name="either")
    fast = plan_of(either).fast_reports
    assert "either" not in fast  # a or b may still be running when it succeeds
    assert "a" not in fast and "b" not in fast  # either has one slot, but it is a group
