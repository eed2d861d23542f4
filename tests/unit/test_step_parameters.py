"""How run_step parameters are filled: inputs by name, defaults, Depends/Computed, step kinds."""

from __future__ import annotations

import asyncio

import pytest

from fuseline import (
    AsyncStep,
    Computed,
    Depends,
    FunctionStep,
    Status,
    Step,
    Workflow,
    workflow_from_functions,
)
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine
from fuseline.errors import MissingInput


class Add(Step):
    def run_step(self, x: int, y: int = 10) -> int:
        return x + y


def test_parameters_are_filled_from_the_inputs_by_name() -> None:
    assert Workflow(Add()).run({"y": 2, "x": 40}) == 42


def test_the_default_is_used_when_an_input_is_missing() -> None:
    assert Workflow(Add()).run({"x": 5}) == 15


def test_inputs_that_no_step_reads_are_ignored() -> None:
    assert Workflow(Add()).run({"x": 1, "y": 1, "unused": "whatever"}) == 2


def test_a_missing_required_input_fails_the_step_with_missing_input() -> None:
    with pytest.raises(MissingInput) as caught:
        Workflow(Add()).run({"y": 1})

    assert caught.value.step_name == "add"
    assert caught.value.input_name == "x"
    assert "'add'" in str(caught.value)
    assert "'x'" in str(caught.value)


def test_a_missing_input_marks_the_step_failed_in_execute_step() -> None:
    step = Add()
    workflow = Workflow(step)
    with pytest.raises(MissingInput):
        workflow._execute_step(step, {}, {})
    assert step.state is Status.FAILED


def test_a_missing_input_on_a_broker_fails_the_step_and_the_worker_lives_on() -> None:
    workflow = Workflow(Add(), workflow_id="add")
    broker = MemoryBroker()
    engine = ProcessEngine(LocalBrokerClient(broker), [workflow])
    bad = workflow.dispatch(broker, {})
    good = workflow.dispatch(broker, {"x": 1})

    assert engine.work() == 2

    failed = broker.get_instance(bad)
    assert failed.status is Status.FAILED
    assert failed.step("add").error.startswith("MissingInput: step 'add' needs the workflow input 'x'")
    assert broker.get_instance(good).result == 11


def test_depends_on_a_class_attribute_step_passes_its_result() -> None:
    class Fetch(Step):
        def run_step(self, url: str) -> str:
            return f"<html>{url}</html>"

    class Summarise(Step):
        source = Fetch()

        def run_step(self, page: Computed[str] = Depends(source)) -> int:
            return len(page)

    summarise = Summarise()
    workflow = Workflow(summarise)

    assert list(workflow.steps) == ["fetch", "summarise"]
    assert workflow.steps["fetch"] is Summarise.source
    assert workflow.run({"url": "abc"}) == len("<html>abc</html>")


def test_instances_of_one_class_share_their_class_attribute_dependency() -> None:
    runs: list[str] = []

    class Load(Step):
        def run_step(self) -> int:
            runs.append("load")
            return 3

    class Times(Step):
        load = Load()

        def __init__(self, factor: int) -> None:
            self.factor = factor
            super().__init__()

        def run_step(self, n: Computed[int] = Depends(load)) -> int:
            return n * self.factor

    workflow = Workflow([Times(2), Times(5)])

    assert list(workflow.steps) == ["load", "times", "times_2"]
    assert workflow.run() == [6, 15]
    assert runs == ["load"]


def test_depends_on_a_plain_function_makes_it_a_step() -> None:
    def fetch_text(url: str) -> str:
        return f"text of {url}"

    class WordCount(Step):
        def run_step(self, text: Computed[str] = Depends(fetch_text)) -> int:
            return len(text.split())

    workflow = Workflow(WordCount())

    assert list(workflow.steps) == ["fetch_text", "word_count"]
    fetch_step = workflow.steps["fetch_text"]
    assert isinstance(fetch_step, FunctionStep)
    assert fetch_step is FunctionStep.for_function(fetch_text)
    assert workflow.run({"url": "x y"}) == 4


def test_workflow_from_functions_links_functions_by_depends() -> None:
    def load(n: int) -> list[int]:
        return list(range(1, n + 1))

    def square(values: Computed[list[int]] = Depends(load)) -> list[int]:
        return [v * v for v in values]

    def total(squares: Computed[list[int]] = Depends(square), offset: int = 0) -> int:
        return sum(squares) + offset

    workflow = workflow_from_functions(total, workflow_id="squares")

    assert workflow.workflow_id == "squares"
    assert list(workflow.steps) == ["load", "square", "total"]
    assert workflow.run({"n": 3}) == 14
    assert workflow.run({"n": 3, "offset": 100}) == 114


def test_function_step_with_an_explicit_name() -> None:
    def double(x: int) -> int:
        return 2 * x

    doubled = FunctionStep(double, name="times_two")

    def describe(value: Computed[int] = Depends(doubled)) -> str:
        return f"value={value}"

    workflow = workflow_from_functions(describe)

    assert list(workflow.steps) == ["times_two", "describe"]
    assert workflow.steps["times_two"].kind == "function"
    assert workflow.run({"x": 21}) == "value=42"


def test_function_step_refuses_a_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        FunctionStep(42)  # type: ignore[arg-type]


def test_async_step_runs_its_coroutine() -> None:
    class Sleepy(AsyncStep):
        async def run_step(self, x: int) -> int:
            await asyncio.sleep(0.001)
            return x * 3

    step = Sleepy()
    assert step.kind == "async"
    assert Workflow(step).run({"x": 4}) == 12


def test_async_step_subclass_must_define_an_async_run_step() -> None:
    with pytest.raises(TypeError, match="async def"):

        class NotAsync(AsyncStep):
            def run_step(self) -> int:  # type: ignore[override]
                return 1


def test_async_function_step_and_sync_steps_mix() -> None:
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    def double(value: Computed[int] = Depends(fetch)) -> int:
        return value * 2

    workflow = workflow_from_functions(double)

    assert workflow.steps["fetch"].kind == "async_function"
    assert workflow.run({"x": 1}) == 4


def test_workflow_run_works_from_inside_a_running_event_loop() -> None:
    class Fetch(AsyncStep):
        async def run_step(self, x: int) -> int:
            await asyncio.sleep(0.001)
            return x + 1

    fetch = Fetch()

    class Double(Step):
        def run_step(self, value: Computed[int] = Depends(fetch)) -> int:
            return value * 2

    workflow = Workflow(Double())

    async def main() -> tuple[int, int]:
        in_loop = workflow.run({"x": 1})
        await asyncio.sleep(0)
        return in_loop, workflow.run({"x": 10})

    assert asyncio.run(main()) == (4, 22)


def test_an_async_output_step_runs_from_inside_a_running_event_loop() -> None:
    class Only(AsyncStep):
        async def run_step(self, word: str) -> str:
            await asyncio.sleep(0)
            return word[::-1]

    async def main() -> str:
        return Workflow(Only()).run({"word": "loop"})

    assert asyncio.run(main()) == "pool"
