"""Scheduling policies refuse bad arguments with a WorkflowDefinitionError that names them."""

from __future__ import annotations

import pytest

from fuseline import Step, Workflow
from fuseline.errors import WorkflowDefinitionError
from fuseline.policies import ConcurrencyLimit, RateLimit
from fuseline.workflow.scheduling import RATE_WINDOW_MAX


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None])
def test_a_concurrency_limit_needs_a_whole_number_of_at_least_one(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"ConcurrencyLimit\(max\) must be a whole number"):
        ConcurrencyLimit(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf"), True, "60"])
def test_a_rate_limit_window_is_a_positive_number_of_seconds(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"RateLimit\(per\) must be a number of seconds"):
        RateLimit(1, per=bad)  # type: ignore[arg-type]


def test_a_rate_limit_window_is_at_most_a_day() -> None:
    assert RateLimit(5, per=RATE_WINDOW_MAX).per == RATE_WINDOW_MAX
    with pytest.raises(WorkflowDefinitionError, match="at most 86400 seconds"):
        RateLimit(5, per=RATE_WINDOW_MAX + 1)


@pytest.mark.parametrize("bad", ["", "1x", "a-b", 3])
def test_a_limit_key_names_a_workflow_input(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="a limit key must name a workflow input"):
        ConcurrencyLimit(2, key=bad)  # type: ignore[arg-type]


class Charge(Step):
    def run_step(self, amount: int) -> int:
        return amount


def test_a_limit_key_that_is_no_input_of_the_workflow_is_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match="customer"):
        Workflow(outputs=[Charge(policies=[RateLimit(1, per=1.0, key="customer")])])
