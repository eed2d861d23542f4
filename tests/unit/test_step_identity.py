"""FunctionStep identity and per-workflow step names.

Regressions:
- the FunctionStep registry was a WeakKeyDictionary whose value (the step)
  held its key (the function), so no lambda or closure used as a step was
  ever freed;
- ``Workflow.__init__`` wrote its generated (de-duplicated) name onto a
  step without a chosen name, so a step shared by two workflows carried
  the first workflow's name into the second one's messages.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from fuseline import Computed, Depends, FunctionStep, Step, Workflow
from fuseline.errors import MissingInput, StepTimeout
from fuseline.policies import StepTimeoutPolicy


def make_closure(offset: int) -> Callable[[int], int]:
    def shifted(x: int) -> int:
        return x + offset

    return shifted


def build_and_run(fn: Callable[..., Any]) -> Any:
    return Workflow(fn).run({"x": 1})


def test_a_closure_used_as_a_step_is_freed_once_nothing_holds_it() -> None:
    fn = make_closure(41)
    freed = weakref.ref(fn)
    assert build_and_run(fn) == 42
    FunctionStep.for_function(fn)

    del fn
    gc.collect()

    assert freed() is None


def test_a_lambda_used_as_a_workflow_output_is_freed_with_the_workflow() -> None:
    workflow = Workflow(lambda x: x * 2)
    freed = weakref.ref(workflow.outputs[0].fn)  # type: ignore[attr-defined]
    assert workflow.run({"x": 4}) == 8

    del workflow
    gc.collect()

    assert freed() is None


def test_every_mention_of_a_function_means_one_step_while_it_is_held() -> None:
    def load() -> int:
        return 1

    class UseA(Step):
        def run_step(self, v: Computed[int] = Depends(load)) -> int:
            return v

    class UseB(Step):
        def run_step(self, v: Computed[int] = Depends(load)) -> int:
            return v + 1

    use_a, use_b = UseA(), UseB()
    gc.collect()

    step = FunctionStep.for_function(load)
    assert use_a.predecessors == use_b.predecessors == [step]
    assert list(Workflow([use_a, use_b]).steps) == ["load", "use_a", "use_b"]


def test_for_function_builds_one_step_when_threads_race() -> None:
    def shared() -> int:
        return 1

    start = threading.Barrier(8, timeout=5)
    steps: list[FunctionStep] = []
    lock = threading.Lock()

    def resolve() -> None:
        start.wait()
        step = FunctionStep.for_function(shared)
        with lock:
            steps.append(step)

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(steps) == 8
    assert all(step is steps[0] for step in steps)


def fetch(url: str) -> str:
    return url


class Fetch(Step):
    def run_step(self) -> str:
        return "class"


def test_a_workflow_does_not_write_its_generated_names_onto_shared_steps() -> None:
    step = FunctionStep.for_function(fetch)
    workflow = Workflow([Fetch(), fetch])

    assert workflow.name_of(step) == "fetch_2"
    assert step.name is None
    assert step.label == "fetch"


def test_messages_name_a_shared_step_as_the_running_workflow_does() -> None:
    """Regression: the first workflow named the function step 'fetch_2' and wrote that onto it,
    so the second workflow, where it is 'fetch', reported a missing input of 'fetch_2'."""
    first = Workflow([Fetch(), fetch])
    second = Workflow(fetch)
    assert list(second.steps) == ["fetch"]

    with pytest.raises(MissingInput) as caught:
        second.run({})
    assert caught.value.step_name == "fetch"
    assert "step 'fetch' needs the workflow input 'url'" in str(caught.value)

    with pytest.raises(MissingInput) as caught:
        first.run({})
    assert caught.value.step_name == "fetch_2"


def test_a_timeout_message_uses_the_name_in_the_running_workflow() -> None:
    release = threading.Event()

    class Slow(Step):
        def run_step(self) -> None:
            release.wait(5)

    first, second = Slow(), Slow(policies=[StepTimeoutPolicy(0.02)])
    first >> second
    workflow = Workflow(second)
    try:
        with pytest.raises(StepTimeout, match=r"step 'slow_2' ran longer than 0\.02 s"):
            workflow._execute_step(second, {first: None}, {})
    finally:
        release.set()
    assert (first.name, second.name) == (None, None)
