"""``Workflow.run``: in-process runs on the thread pool."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fuseline import Computed, Depends, Step, Workflow
from fuseline.engines import PoolEngine


class Const(Step):
    def __init__(self, value: Any, **kwargs: Any) -> None:
        self.value = value
        super().__init__(**kwargs)

    def run_step(self) -> Any:
        return self.value


def test_run_returns_the_output_step_result() -> None:
    class Square(Step):
        def run_step(self, x: int) -> int:
            return x * x

    assert Workflow(Square()).run({"x": 9}) == 81


def test_run_returns_a_list_in_output_order_for_several_outputs() -> None:
    a, b, c = Const("a", name="a"), Const("b", name="b"), Const("c", name="c")
    assert Workflow([c, a, b]).run() == ["c", "a", "b"]


def test_independent_branches_run_concurrently() -> None:
    barrier = threading.Barrier(2, timeout=5)
    root = Const(1, name="root")

    class Branch(Step):
        def __init__(self, tag: str) -> None:
            self.tag = tag
            super().__init__(name=tag)

        def run_step(self, x: Computed[int] = Depends(root)) -> str:
            barrier.wait()  # raises BrokenBarrierError unless the other branch is running too
            return f"{self.tag}{x}"

    left, right = Branch("left"), Branch("right")

    class Join(Step):
        def run_step(self, a: Computed[str] = Depends(left), b: Computed[str] = Depends(right)) -> str:
            return a + b

    assert Workflow(Join()).run() == "left1right1"


def test_a_pool_of_one_worker_runs_steps_one_at_a_time() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    class Tracked(Step):
        def run_step(self) -> int:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            threading.Event().wait(0.01)
            with lock:
                running -= 1
            return 1

    steps = [Tracked(name=f"t{n}") for n in range(4)]
    assert Workflow(steps).run(engine=PoolEngine(workers=1)) == [1, 1, 1, 1]
    assert peak == 1


def test_run_reraises_the_original_exception_of_a_failing_step() -> None:
    raised: list[Exception] = []

    class QuotaExceeded(Exception):
        pass

    class CallApi(Step):
        def run_step(self) -> None:
            exc = QuotaExceeded("429 from upstream")
            raised.append(exc)
            raise exc

    with pytest.raises(QuotaExceeded) as caught:
        Workflow(CallApi()).run()
    assert caught.value is raised[0]


def test_steps_downstream_of_a_failure_do_not_run() -> None:
    ran: list[str] = []

    class Fail(Step):
        def run_step(self) -> None:
            raise ValueError("bad row")

    fail = Fail()

    class After(Step):
        def run_step(self, v: Any = Depends(fail)) -> None:
            ran.append("after")

    with pytest.raises(ValueError, match="bad row"):
        Workflow(After()).run()
    assert ran == []


def test_non_json_python_objects_pass_between_steps_in_process() -> None:
    class Connection:
        pass

    conn = Connection()

    class Open(Step):
        def run_step(self) -> tuple[Connection, set[int], complex]:
            return conn, {1, 2}, 1 + 2j

    opened = Open()

    class Use(Step):
        def run_step(self, handle: Computed[tuple] = Depends(opened), factory: Any = None) -> Any:
            c, numbers, z = handle
            return c, numbers | {3}, z * 2, factory()

    received, numbers, doubled, made = Workflow(Use()).run({"factory": lambda: "built"})
    assert received is conn
    assert numbers == {1, 2, 3}
    assert doubled == 2 + 4j
    assert made == "built"


def test_run_without_inputs_uses_defaults() -> None:
    class Greet(Step):
        def run_step(self, who: str = "world") -> str:
            return f"hello {who}"

    workflow = Workflow(Greet())
    assert workflow.run() == "hello world"
    assert workflow.run(None) == "hello world"


def test_consecutive_runs_of_one_workflow_are_independent() -> None:
    class Echo(Step):
        def run_step(self, word: str) -> str:
            return word

    echo = Echo()

    class Shout(Step):
        def run_step(self, w: Computed[str] = Depends(echo)) -> str:
            return w.upper() + "!"

    workflow = Workflow(Shout())
    assert [workflow.run({"word": w}) for w in ("a", "b", "c")] == ["A!", "B!", "C!"]


def test_the_execution_engine_given_to_the_workflow_is_used() -> None:
    used: list[int] = []

    class CountingPool(PoolEngine):
        def run(self, workflow: Workflow, inputs: dict[str, Any]) -> Any:
            used.append(self.workers)
            return super().run(workflow, inputs)

    workflow = Workflow(Const(5, name="five"), execution_engine=CountingPool(workers=2))
    assert workflow.run() == 5
    assert used == [2]


def test_pool_engine_needs_at_least_one_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PoolEngine(workers=0)
