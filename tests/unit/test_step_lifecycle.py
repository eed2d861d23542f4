"""The step lifecycle: before_all, setup, run_step, teardown, after_all."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

from fuseline import AsyncStep, Computed, Depends, Status, Step, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine


class Recorded(Step):
    """Logs every lifecycle call; setup returns a handle that run_step echoes back."""

    def __init__(self, log: list[Any], **kwargs: Any) -> None:
        self.log = log
        super().__init__(**kwargs)

    def before_all(self, shared: dict[Step, Any]) -> None:
        self.log.append("before_all")

    def setup(self, shared: dict[Step, Any]) -> Any:
        self.log.append("setup")
        return f"handle-{self.log.count('setup')}"

    def run_step(self, x: int, setup_res: Any = None) -> dict[str, Any]:
        self.log.append(("run", x, setup_res))
        return {"x": x, "handle": setup_res}

    def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
        self.log.append(("teardown", setup_res))
        return result

    def after_all(self, shared: dict[Step, Any]) -> None:
        self.log.append("after_all")


def test_workflow_run_calls_the_hooks_in_lifecycle_order() -> None:
    log: list[Any] = []
    workflow = Workflow(Recorded(log))

    result = workflow.run({"x": 3})

    assert result == {"x": 3, "handle": "handle-1"}
    assert log == ["before_all", "setup", ("run", 3, "handle-1"), ("teardown", "handle-1"), "after_all"]


def test_setup_return_value_is_passed_to_the_setup_res_parameter() -> None:
    sentinel = object()
    seen: list[Any] = []

    class UsesSetup(Step):
        def setup(self, shared: dict[Step, Any]) -> Any:
            return sentinel

        def run_step(self, setup_res: Any) -> str:
            seen.append(setup_res)
            return "ok"

    step = UsesSetup()
    assert Workflow(step).run() == "ok"
    assert seen == [sentinel]
    # setup_res is not a workflow input
    assert Workflow(UsesSetup()).to_schema().steps[0]["inputs"] == []


def test_setup_runs_before_every_run_of_a_step() -> None:
    log: list[Any] = []
    step = Recorded(log)
    workflow = Workflow(step)

    for x in (1, 2, 3):
        workflow._execute_step(step, {}, {"x": x})

    assert [entry for entry in log if isinstance(entry, tuple) and entry[0] == "run"] == [
        ("run", 1, "handle-1"),
        ("run", 2, "handle-2"),
        ("run", 3, "handle-3"),
    ]
    assert log.count("before_all") == 1
    assert log.count("after_all") == 0
    workflow.close()
    assert log.count("after_all") == 1
    workflow.close()
    assert log.count("after_all") == 1, "a second close must not call after_all again"


def test_teardown_can_transform_the_result_seen_downstream() -> None:
    class Fetch(Step):
        def run_step(self, n: int) -> list[int]:
            return list(range(n))

        def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
            return {"items": result, "count": len(result)}

    fetch = Fetch()

    class Count(Step):
        def run_step(self, fetched: Computed[dict] = Depends(fetch)) -> int:
            return fetched["count"]

    assert Workflow([fetch, Count()]).run({"n": 4}) == [{"items": [0, 1, 2, 3], "count": 4}, 4]


def test_teardown_receives_shared_setup_res_and_result() -> None:
    calls: list[tuple[Any, ...]] = []

    class Source(Step):
        def run_step(self) -> int:
            return 7

    source = Source()

    class Sink(Step):
        def setup(self, shared: dict[Step, Any]) -> str:
            return "conn"

        def run_step(self, value: Computed[int] = Depends(source)) -> int:
            return value * 2

        def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
            calls.append((dict(shared), setup_res, result))
            return result + 1

    assert Workflow(Sink()).run() == 15
    assert calls == [({source: 7}, "conn", 14)]


def test_before_all_runs_once_per_process_across_instances_and_work_calls_of_one_engine() -> None:
    log: list[Any] = []
    workflow = Workflow(Recorded(log), workflow_id="lifecycle")
    broker = MemoryBroker()
    engine = ProcessEngine(LocalBrokerClient(broker), [workflow])

    first = [workflow.dispatch(broker, {"x": n}) for n in (1, 2, 3)]
    assert engine.work() == 3
    second = [workflow.dispatch(broker, {"x": n}) for n in (4, 5)]
    assert engine.work() == 2

    assert [broker.get_instance(i).status for i in first + second] == [Status.SUCCEEDED] * 5
    assert log.count("before_all") == 1
    assert log.count("setup") == 5
    assert log.count("after_all") == 0
    engine.close()
    assert log.count("after_all") == 1


def test_each_workflow_run_pairs_one_before_all_with_one_after_all() -> None:
    log: list[Any] = []
    workflow = Workflow(Recorded(log))

    workflow.run({"x": 1})
    workflow.run({"x": 2})

    hooks = [entry for entry in log if entry in ("before_all", "after_all")]
    assert hooks == ["before_all", "after_all", "before_all", "after_all"]


def test_after_all_runs_at_the_end_of_a_failed_run() -> None:
    log: list[Any] = []
    recorded = Recorded(log)

    class Boom(Step):
        def run_step(self, upstream: Computed[dict] = Depends(recorded)) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Workflow(Boom()).run({"x": 1})
    assert log[0] == "before_all"
    assert log[-1] == "after_all"


def test_a_step_skipped_by_its_condition_runs_no_hooks() -> None:
    log: list[Any] = []

    class Zero(Step):
        def run_step(self) -> int:
            return 0

    zero = Zero()

    class Guarded(Recorded):
        def run_step(self, x: int = Depends(zero, condition=bool), setup_res: Any = None) -> Any:
            log.append("run")

    workflow = Workflow(Guarded(log))
    assert workflow.run() is None
    assert log == []


def test_async_step_awaits_async_setup_and_teardown() -> None:
    log: list[Any] = []

    class Download(AsyncStep):
        async def setup(self, shared: dict[Step, Any]) -> str:
            log.append("setup")
            return "session"

        async def run_step(self, url: str, setup_res: Any = None) -> str:
            log.append(("run", url, setup_res))
            return url.upper()

        async def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
            log.append(("teardown", setup_res, result))
            return f"<{result}>"

    assert Workflow(Download()).run({"url": "a.b"}) == "<A.B>"
    assert log == ["setup", ("run", "a.b", "session"), ("teardown", "session", "A.B")]


class AsyncHooked(AsyncStep):
    """``before_all`` and ``after_all`` are ``async def``: they must be awaited, not dropped."""

    def __init__(self, log: list[Any], **kwargs: Any) -> None:
        self.log = log
        super().__init__(**kwargs)

    async def before_all(self, shared: dict[Step, Any]) -> None:
        await asyncio.sleep(0)
        self.log.append("before_all")

    async def run_step(self, x: int) -> int:
        self.log.append(("run", x))
        return x

    async def after_all(self, shared: dict[Step, Any]) -> None:
        await asyncio.sleep(0)
        self.log.append("after_all")


def test_async_before_all_and_after_all_are_awaited_in_workflow_run() -> None:
    """Regression: async lifecycle hooks were called but never awaited (a RuntimeWarning only)."""
    log: list[Any] = []

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        assert Workflow(AsyncHooked(log)).run({"x": 7}) == 7
        gc.collect()

    assert log == ["before_all", ("run", 7), "after_all"]


def test_async_before_all_and_after_all_are_awaited_by_a_worker() -> None:
    log: list[Any] = []
    workflow = Workflow(AsyncHooked(log), workflow_id="async-hooks")
    broker = MemoryBroker()
    engine = ProcessEngine(LocalBrokerClient(broker), [workflow])
    try:
        for x in (1, 2):
            workflow.dispatch(broker, {"x": x})
        assert engine.work() == 2
    finally:
        engine.close()

    assert log == ["before_all", ("run", 1), ("run", 2), "after_all"]


def test_async_lifecycle_hooks_of_a_plain_step_are_awaited_by_execute_step() -> None:
    log: list[Any] = []

    class PlainWithAsyncHooks(Step):
        async def before_all(self, shared: dict[Step, Any]) -> None:
            log.append("before_all")

        def run_step(self) -> str:
            log.append("run")
            return "ok"

        async def after_all(self, shared: dict[Step, Any]) -> None:
            log.append("after_all")

    step = PlainWithAsyncHooks()
    workflow = Workflow(step)
    assert workflow._execute_step(step, {}, {}) == "ok"
    workflow.close()

    assert log == ["before_all", "run", "after_all"]
